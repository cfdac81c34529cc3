"""Streaming state: small typed dataclasses of tensors, passed into `step` and returned from it.

A module never keeps per-session state on itself, so one set of weights serves many sessions and a
state can travel: to bytes (Redis, a gRPC message, a Triton tensor) and back. Fields may be tensors,
ints, floats, bools, strings, None, lists/tuples of those, or nested `StreamState` dataclasses.
Serialisation uses `torch.save` and `torch.load(weights_only=True)`, which loads plain containers and
tensors only — a state from the wire can never execute code.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Self

import torch

_NESTED_KEY = "__state__"


@dataclasses.dataclass
class StreamState:
    """Base class of every streaming state; subclasses are `@dataclass`es."""

    def to_bytes(self) -> bytes:
        """Serialise the state (tensors are copied to CPU) to a self-contained byte string."""
        buffer = io.BytesIO()
        torch.save(_to_plain(self), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Rebuild a state of this class from `to_bytes` output."""
        plain = torch.load(io.BytesIO(data), weights_only=True)
        return _from_plain(cls, plain)

    def map_tensors(self, fn) -> Self:
        """A copy with `fn` applied to every tensor (e.g. `.to(device)`, `.clone()`)."""
        return _from_plain(type(self), _map(_to_plain(self), fn))


def _to_plain(value: Any) -> Any:
    if isinstance(value, StreamState):
        fields = {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_NESTED_KEY: type(value).__name__, **fields}
    if isinstance(value, torch.Tensor):
        # A cache is often a view into a larger buffer, and torch.save writes a view's whole storage:
        # a compact copy keeps the bytes to what the state holds (several times smaller for token2wav).
        return value.detach().cpu().clone(memory_format=torch.contiguous_format)
    if isinstance(value, list | tuple):
        return [_to_plain(item) for item in value]
    return value


def _map(value: Any, fn) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: _map(item, fn) for key, item in value.items()}
    if isinstance(value, list):
        return [_map(item, fn) for item in value]
    return value


def _from_plain(cls: type, plain: dict) -> Any:
    assert plain.get(_NESTED_KEY) == cls.__name__, f"state of type {plain.get(_NESTED_KEY)!r}, expected {cls.__name__}"
    hints = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in plain.items():
        if name == _NESTED_KEY:
            continue
        assert name in hints, f"{cls.__name__} has no field {name!r}"
        kwargs[name] = _restore(value, cls)
    return cls(**kwargs)


def _restore(value: Any, owner: type) -> Any:
    if isinstance(value, dict) and _NESTED_KEY in value:
        return _from_plain(_state_class(value[_NESTED_KEY], owner), value)
    if isinstance(value, list):
        return [_restore(item, owner) for item in value]
    return value


def _state_class(name: str, owner: type) -> type:
    """Find a nested state class by name among StreamState subclasses (they have unique names)."""
    pending = [StreamState]
    while pending:
        klass = pending.pop()
        if klass.__name__ == name:
            return klass
        pending.extend(klass.__subclasses__())
    raise ValueError(f"unknown state class {name!r} inside {owner.__name__}")
