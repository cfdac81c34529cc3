"""Write the API reference (docs/api.md) from the comments in `protos/minmo/v1/*.proto`.

    python -m minmo.api.docs            # rewrites docs/api.md (also part of `make protos`)

The protos are the contract and every element carries a comment with its units (tests/test_protos.py checks
that), so the reference is generated from them rather than written twice; tests/test_api_docs.py fails when
docs/api.md no longer matches the protos.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

from minmo.api.generate import PROTO_ROOT, REPO_ROOT, descriptor_set

DOC_PATH = REPO_ROOT / "docs" / "api.md"
PUBLIC_FILE = "minmo/v1/conversation.proto"  # the public API comes first; the internal hops after it

# Field numbers in descriptor.proto, for SourceCodeInfo location paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2

FieldType = descriptor_pb2.FieldDescriptorProto
SCALAR_NAMES = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in FieldType.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}

HEADER = """# MinMo gRPC API reference

Generated from the comments in `protos/minmo/v1/*.proto` by `python -m minmo.api.docs` (`make protos`);
do not edit by hand. `minmo.v1.Conversation` is the public API that clients use (`minmo.client.Session`
wraps it); the other services are the internal hops between MinMo's own services.
"""


class _Comments:
    """Leading/trailing comments of one file, by source path, flattened to one paragraph."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self._by_path = {
            tuple(loc.path): " ".join(
                line.strip() for line in (loc.leading_comments + loc.trailing_comments).splitlines() if line.strip()
            )
            for loc in file.source_code_info.location
        }

    def __call__(self, path: tuple[int, ...]) -> str:
        return self._by_path.get(path, "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _type_name(field: descriptor_pb2.FieldDescriptorProto, maps: dict[str, descriptor_pb2.DescriptorProto]) -> str:
    if field.type_name in maps:
        key, value = maps[field.type_name].field
        return f"map<{_type_name(key, maps)}, {_type_name(value, maps)}>"
    name = field.type_name.removeprefix(".minmo.v1.") if field.type_name else SCALAR_NAMES[field.type]
    if field.label == FieldType.LABEL_REPEATED:
        return f"repeated {name}"
    return f"optional {name}" if field.proto3_optional else name


def _enum(lines: list[str], enum, name: str, path: tuple[int, ...], comments: _Comments) -> None:
    lines += [f"### enum {name}", "", comments(path), "", "| value | number | meaning |", "| --- | --- | --- |"]
    for index, value in enumerate(enum.value):
        lines.append(f"| `{value.name}` | {value.number} | {_cell(comments((*path, ENUM_VALUE, index)))} |")
    lines.append("")


def _message(lines: list[str], message, name: str, path: tuple[int, ...], comments: _Comments, maps) -> None:
    if message.options.map_entry:
        return
    lines += [f"### {name}", "", comments(path), ""]
    if message.field:
        lines += ["| field | type | number | meaning |", "| --- | --- | --- | --- |"]
        for index, field in enumerate(message.field):
            oneof = ""
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = f" (oneof `{message.oneof_decl[field.oneof_index].name}`)"
            meaning = _cell(comments((*path, MESSAGE_FIELD, index)))
            lines.append(f"| `{field.name}` | `{_type_name(field, maps)}` | {field.number} | {meaning}{oneof} |")
        lines.append("")
    for index, nested in enumerate(message.nested_type):
        _message(lines, nested, f"{name}.{nested.name}", (*path, MESSAGE_NESTED, index), comments, maps)
    for index, enum in enumerate(message.enum_type):
        _enum(lines, enum, f"{name}.{enum.name}", (*path, MESSAGE_ENUM, index), comments)


def _map_entries(file: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    found = {}

    def visit(message, scope: str) -> None:
        for nested in message.nested_type:
            if nested.options.map_entry:
                found[f"{scope}.{message.name}.{nested.name}"] = nested
            visit(nested, f"{scope}.{message.name}")

    for message in file.message_type:
        visit(message, f".{file.package}")
    return found


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    """The whole reference as Markdown: per file, its services, then its messages and enums."""
    ordered = sorted(files.file, key=lambda file: (file.name != PUBLIC_FILE, file.name))
    lines = [HEADER]
    for file in ordered:
        comments = _Comments(file)
        maps = _map_entries(file)
        lines += [f"## {file.name}", ""]
        for index, service in enumerate(file.service):
            path = (FILE_SERVICE, index)
            lines += [f"### service {service.name}", "", comments(path), ""]
            for method_index, method in enumerate(service.method):
                request = ("stream " if method.client_streaming else "") + method.input_type.removeprefix(".minmo.v1.")
                reply = ("stream " if method.server_streaming else "") + method.output_type.removeprefix(".minmo.v1.")
                lines += [
                    f"- `rpc {method.name}({request}) returns ({reply})`: "
                    + comments((*path, SERVICE_METHOD, method_index)),
                ]
            lines.append("")
        for index, message in enumerate(file.message_type):
            _message(lines, message, message.name, (FILE_MESSAGE, index), comments, maps)
        for index, enum in enumerate(file.enum_type):
            _enum(lines, enum, enum.name, (FILE_ENUM, index), comments)
    return "\n".join(lines).rstrip() + "\n"


def render_from_protos(proto_root: Path = PROTO_ROOT) -> str:
    with tempfile.TemporaryDirectory(prefix="minmo-api-docs-") as directory:
        out = descriptor_set(Path(directory) / "minmo_v1.binpb", proto_root)
        return render(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()))


def main() -> int:
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(render_from_protos())
    print(f"wrote {DOC_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
