"""Generate the Helm chart's values.schema.json from its commented values.yaml.

values.yaml is the one place a chart option is declared: its default fixes the type, the comment right above it
becomes the description, and every mapping is closed (`additionalProperties: false`), so `helm install` rejects
a mistyped key or a wrong type before anything reaches the cluster. A key without a comment is an error here, which
is how "every key has a comment" is kept. Markers at the end of a comment widen a key on purpose:

    [map]          a string-keyed map of scalars (resources, env, labels, annotations, node selectors)
    [object]       any object (affinity)
    [list]         any list (tolerations, image pull secrets)
    [enum: a|b]    one of the listed strings
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
MARKER = re.compile(r"\s*\[(map|object|list|enum:\s*([^\]]+))\]\s*$")
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/\"]+):(?:\s|$)")
SCALARS = ["string", "number", "boolean"]


class ValuesSchemaError(ValueError):
    """values.yaml breaks a rule of the generator (a key without a comment, an unknown marker)."""


@dataclass(frozen=True)
class KeyDoc:
    """The comment above one key: its description and the marker at its end, if any."""

    description: str
    marker: str | None = None
    enum: tuple[str, ...] = ()


def key_comments(text: str) -> dict[tuple[str, ...], KeyDoc]:
    """Map each key path of a block-style YAML document to the comment lines right above it."""
    comments: dict[tuple[str, ...], KeyDoc] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if match is None:
            pending = []
            continue
        indent, key = len(match["indent"]), match["key"].strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*[name for _, name in stack], key)
        stack.append((indent, key))
        if pending:
            comments[path] = _key_doc(" ".join(pending))
        pending = []
    return comments


def _key_doc(comment: str) -> KeyDoc:
    match = MARKER.search(comment)
    if match is None:
        return KeyDoc(comment)
    description = comment[: match.start()].strip()
    if match[2] is not None:
        return KeyDoc(description, "enum", tuple(part.strip() for part in match[2].split("|")))
    return KeyDoc(description, match[1])


def values_schema(values_yaml: str) -> dict[str, Any]:
    """The JSON schema of a chart's values, from the text of its values.yaml."""
    values = yaml.safe_load(values_yaml)
    docs = key_comments(values_yaml)
    schema = _object_schema(values, (), docs)
    # Helm passes `global` to every chart (and a parent chart may fill it): always accept it.
    schema["properties"]["global"] = {"type": "object", "description": "Values shared with subcharts (Helm)."}
    return {"$schema": SCHEMA_DRAFT, "title": "Values of the MinMo Helm chart", **schema}


def _object_schema(values: dict[str, Any], path: tuple[str, ...], docs: dict[tuple[str, ...], KeyDoc]) -> dict:
    properties = {}
    for key, value in values.items():
        key_path = (*path, str(key))
        doc = docs.get(key_path)
        if doc is None or not doc.description:
            raise ValuesSchemaError(f"values.yaml: key {'.'.join(key_path)} has no comment right above it")
        properties[str(key)] = {"description": doc.description, **_value_schema(value, key_path, doc, docs)}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _value_schema(value: Any, path: tuple[str, ...], doc: KeyDoc, docs: dict[tuple[str, ...], KeyDoc]) -> dict:
    where = ".".join(path)
    if doc.marker == "map":
        return {"type": "object", "additionalProperties": {"type": SCALARS}}
    if doc.marker == "object":
        return {"type": "object"}
    if doc.marker == "list":
        return {"type": "array"}
    if doc.marker == "enum":
        if value not in doc.enum:
            raise ValuesSchemaError(f"values.yaml: default of {where} ({value!r}) is not one of {list(doc.enum)}")
        return {"type": "string", "enum": list(doc.enum)}
    if isinstance(value, dict):
        return _object_schema(value, path, docs)
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer", "minimum": 0}
    if isinstance(value, float):
        return {"type": "number", "minimum": 0}
    if isinstance(value, str):
        return {"type": "string"}
    raise ValuesSchemaError(f"values.yaml: {where} has a {type(value).__name__} default; mark it [list] or [object]")


def render_schema(chart_dir: Path) -> str:
    """The values.schema.json text for the chart in `chart_dir`."""
    return json.dumps(values_schema((chart_dir / "values.yaml").read_text()), indent=2) + "\n"


def write_schema(chart_dir: Path) -> Path:
    """Regenerate `chart_dir/values.schema.json`; returns its path."""
    target = chart_dir / "values.schema.json"
    target.write_text(render_schema(chart_dir))
    return target
