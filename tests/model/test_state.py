from dataclasses import dataclass, field

import pytest
import torch

from minmo.model.state import StreamState


@dataclass
class _InnerState(StreamState):
    cache: torch.Tensor | None = None
    count: int = 0


@dataclass
class _OuterState(StreamState):
    layers: list[torch.Tensor] = field(default_factory=list)
    inner: _InnerState = field(default_factory=_InnerState)
    nested_list: list[_InnerState] = field(default_factory=list)
    label: str = ""


def test_nested_state_survives_bytes_round_trip():
    state = _OuterState(
        layers=[torch.randn(2, 3), torch.arange(4)],
        inner=_InnerState(torch.ones(1, 2, dtype=torch.bfloat16), 7),
        nested_list=[_InnerState(None, 1), _InnerState(torch.zeros(3), 2)],
        label="x",
    )
    restored = _OuterState.from_bytes(state.to_bytes())
    assert isinstance(restored.inner, _InnerState)
    assert restored.inner.count == 7 and restored.inner.cache.dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(state.layers, restored.layers, strict=True))
    assert restored.nested_list[0].cache is None and torch.equal(restored.nested_list[1].cache, torch.zeros(3))
    assert restored.label == "x"


def test_bytes_of_another_state_class_are_refused():
    with pytest.raises(AssertionError, match="expected _OuterState"):
        _OuterState.from_bytes(_InnerState(torch.ones(1), 1).to_bytes())


def test_map_tensors_applies_to_every_tensor():
    state = _OuterState(layers=[torch.ones(2)], inner=_InnerState(torch.ones(3), 1))
    doubled = state.map_tensors(lambda t: t * 2)
    assert torch.equal(doubled.layers[0], torch.full((2,), 2.0))
    assert torch.equal(doubled.inner.cache, torch.full((3,), 2.0))
    assert torch.equal(state.layers[0], torch.ones(2))
