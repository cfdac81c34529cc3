"""The minmo.v1 API: committed stubs match the .proto files, tensors round-trip, every element is documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from google.protobuf import descriptor_pb2

from minmo.api import generate
from minmo.api.tensors import SUPPORTED_DTYPES, tensor_from_proto, tensor_to_proto
from minmo.v1 import common_pb2

# Field numbers in descriptor.proto, used to build SourceCodeInfo location paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

PASCAL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")
UPPER_SNAKE_CASE = re.compile(r"^[A-Z][A-Z0-9_]*$")


# ---------------------------------------------------------------------------------------------
# (a) staleness
# ---------------------------------------------------------------------------------------------


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    committed = generate.generated_files(generate.OUTPUT_ROOT)
    assert fresh, "generator produced no files"
    assert committed == fresh, f"stubs are stale: run `make protos` (files differ: {set(committed) ^ set(fresh)})"
    committed_dir = generate.OUTPUT_ROOT / generate.API_PACKAGE
    fresh_dir = tmp_path / generate.API_PACKAGE
    for name in fresh:
        assert (committed_dir / name).read_bytes() == (fresh_dir / name).read_bytes(), (
            f"stubs are stale: run `make protos` ({name} differs)"
        )


def test_every_service_stub_imports() -> None:
    from minmo.v1 import (
        conversation_pb2_grpc,
        encoder_pb2_grpc,
        llm_pb2_grpc,
        vocoder_pb2_grpc,
        voicelm_pb2_grpc,
    )

    assert conversation_pb2_grpc.ConversationServicer.Converse
    assert encoder_pb2_grpc.AudioEncoderServicer.Encode
    assert llm_pb2_grpc.ReasonerServicer.Session
    assert voicelm_pb2_grpc.VoiceDecoderServicer.Synthesize
    assert vocoder_pb2_grpc.VocoderServicer.Vocode


# ---------------------------------------------------------------------------------------------
# (b) tensors
# ---------------------------------------------------------------------------------------------


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(-1000, 1000, shape, dtype=dtype)


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
@pytest.mark.parametrize("shape", [(3, 5), (1, 896), (2, 0, 4), ()])
def test_tensor_round_trip(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    t = _sample(getattr(torch, name), shape)
    msg = tensor_to_proto(t)
    assert msg.dtype == name
    assert tuple(msg.shape) == shape
    back = tensor_from_proto(common_pb2.Tensor.FromString(msg.SerializeToString()))
    assert back.dtype == t.dtype
    assert back.shape == t.shape
    assert torch.equal(back, t)


def test_tensor_bytes_are_little_endian_c_order() -> None:
    t = torch.tensor([[1, 2], [3, 4]], dtype=torch.int16).t()  # non-contiguous view: [[1, 3], [2, 4]]
    msg = tensor_to_proto(t)
    assert msg.data == bytes([1, 0, 3, 0, 2, 0, 4, 0])
    bf = tensor_to_proto(torch.tensor([1.0], dtype=torch.bfloat16))
    assert bf.data == bytes([0x80, 0x3F])  # bfloat16 1.0 = 0x3F80


def test_tensor_from_proto_owns_writable_memory() -> None:
    back = tensor_from_proto(tensor_to_proto(torch.zeros(4)))
    back += 1  # would fail or warn on a read-only buffer
    assert back.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_tensor_wrong_size_rejected() -> None:
    msg = tensor_to_proto(torch.zeros(2, 3))
    msg.data = msg.data[:-4]
    with pytest.raises(ValueError, match=r"20 bytes but shape \[2, 3\] of float32 needs 24 bytes"):
        tensor_from_proto(msg)


def test_tensor_negative_dimension_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        tensor_from_proto(common_pb2.Tensor(dtype="float32", shape=[-1], data=b""))


def test_tensor_unknown_dtype_rejected() -> None:
    with pytest.raises(ValueError, match="unknown tensor dtype 'float64'"):
        tensor_from_proto(common_pb2.Tensor(dtype="float64", shape=[1], data=bytes(8)))
    with pytest.raises(ValueError, match=r"cannot send a tensor of dtype torch\.float64"):
        tensor_to_proto(torch.zeros(1, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# (c) documentation and naming conventions
# ---------------------------------------------------------------------------------------------


def _elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, str, str, tuple[int, ...]]]:
    """(kind, full name, short name, source path) of every message, field, oneof, enum, value, service, method."""

    def enum(e: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]):
        yield "enum", f"{scope}.{e.name}", e.name, path
        for i, v in enumerate(e.value):
            yield "enum value", f"{scope}.{e.name}.{v.name}", v.name, (*path, ENUM_VALUE, i)

    def message(m: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]):
        if m.options.map_entry:  # synthetic entry type of a map<,> field
            return
        name = f"{scope}.{m.name}"
        yield "message", name, m.name, path
        for i, f in enumerate(m.field):
            yield "field", f"{name}.{f.name}", f.name, (*path, MESSAGE_FIELD, i)
        for i, o in enumerate(m.oneof_decl):
            if not o.name.startswith("_"):  # synthetic oneof of a proto3 `optional` field
                yield "oneof", f"{name}.{o.name}", o.name, (*path, MESSAGE_ONEOF, i)
        for i, nested in enumerate(m.nested_type):
            yield from message(nested, name, (*path, MESSAGE_NESTED, i))
        for i, e in enumerate(m.enum_type):
            yield from enum(e, name, (*path, MESSAGE_ENUM, i))

    for i, m in enumerate(file.message_type):
        yield from message(m, file.package, (FILE_MESSAGE, i))
    for i, e in enumerate(file.enum_type):
        yield from enum(e, file.package, (FILE_ENUM, i))
    for i, s in enumerate(file.service):
        yield "service", f"{file.package}.{s.name}", s.name, (FILE_SERVICE, i)
        for j, rpc in enumerate(s.method):
            yield "method", f"{file.package}.{s.name}.{rpc.name}", rpc.name, (FILE_SERVICE, i, SERVICE_METHOD, j)


def _undocumented(files: descriptor_pb2.FileDescriptorSet) -> list[str]:
    missing = []
    for file in files.file:
        comments = {
            tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip()
            for loc in file.source_code_info.location
        }
        for kind, full_name, _, path in _elements(file):
            if not comments.get(path):
                missing.append(f"{file.name}: {kind} {full_name}")
    return missing


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = generate.descriptor_set(tmp_path_factory.mktemp("descriptors") / "minmo_v1.binpb")
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_every_proto_element_has_a_comment(api: descriptor_pb2.FileDescriptorSet) -> None:
    assert {f.name for f in api.file} >= {f"minmo/v1/{n}.proto" for n in ("common", "conversation", "llm")}
    missing = _undocumented(api)
    assert not missing, "undocumented proto elements (add a comment with units):\n" + "\n".join(missing)


def test_comment_check_catches_a_bare_field(tmp_path: Path) -> None:
    (tmp_path / "minmo" / "v1").mkdir(parents=True)
    (tmp_path / "minmo" / "v1" / "bare.proto").write_text(
        'syntax = "proto3";\npackage minmo.v1;\n// Documented.\nmessage Bare {\n  int32 undocumented_ms = 1;\n}\n'
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(
        generate.descriptor_set(tmp_path / "bare.binpb", proto_root=tmp_path).read_bytes()
    )
    assert _undocumented(files) == ["minmo/v1/bare.proto: field minmo.v1.Bare.undocumented_ms"]


def test_naming_and_wire_conventions(api: descriptor_pb2.FileDescriptorSet) -> None:
    problems = []
    for file in api.file:
        assert file.package == "minmo.v1", f"{file.name}: package must be minmo.v1"
        for kind, full_name, name, _ in _elements(file):
            rule = {"field": SNAKE_CASE, "oneof": SNAKE_CASE, "enum value": UPPER_SNAKE_CASE}.get(kind, PASCAL_CASE)
            if not rule.match(name):
                problems.append(f"{kind} {full_name}: bad case")

        def fields(messages, scope):
            for m in messages:
                for f in m.field:
                    yield f"{scope}.{m.name}.{f.name}", f
                yield from fields(m.nested_type, f"{scope}.{m.name}")

        for full_name, f in fields(file.message_type, file.package):
            label_repeated = f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            is_float = f.type in (f.TYPE_FLOAT, f.TYPE_DOUBLE)
            if label_repeated and is_float:
                problems.append(f"{full_name}: tensors travel as Tensor (dtype + shape + bytes), not repeated floats")
            if f.name == "trace_context" and f.type_name != f".{full_name.rsplit('.', 1)[0]}.TraceContextEntry":
                problems.append(f"{full_name}: trace_context must be map<string, string>")
    assert not problems, "\n".join(problems)


def test_turn_scoped_internal_requests_carry_trace_context() -> None:
    from minmo.v1 import encoder_pb2, llm_pb2, vocoder_pb2, voicelm_pb2

    turn_scoped = [
        encoder_pb2.EncodeAudioChunk,
        encoder_pb2.EndOfUtterance,
        llm_pb2.AudioInput,
        llm_pb2.GenerateResponse,
        llm_pb2.CancelGeneration,
        llm_pb2.AppendTurn,
        voicelm_pb2.SynthesizeConfig,
        vocoder_pb2.VocodeConfig,
    ]
    for message in turn_scoped:
        fields = message.DESCRIPTOR.fields_by_name
        assert "turn_id" in fields, f"{message.DESCRIPTOR.full_name} needs turn_id"
        assert "trace_context" in fields, f"{message.DESCRIPTOR.full_name} needs trace_context"
        assert fields["trace_context"].message_type.GetOptions().map_entry
