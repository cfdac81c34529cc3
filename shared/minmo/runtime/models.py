"""The models the runtime serves, by name, around the PyTorch modules of `minmo.model`.

The same classes run in-process (`LocalRuntime`) and inside Triton's python backend, so a request
means the same thing on both. Streaming states of stateless chunk models travel as a uint8 tensor
named `state` (the `StreamState.to_bytes` encoding; empty at the start of a stream).
"""

from __future__ import annotations

import torch

from minmo.model.placement import to_host
from minmo.model.speech_encoder import SpeechEncoder, SpeechEncoderState
from minmo.model.state import StreamState
from minmo.runtime.base import InvalidInput, RuntimeModel, TensorMap


def state_to_tensor(state: StreamState) -> torch.Tensor:
    return torch.frombuffer(bytearray(state.to_bytes()), dtype=torch.uint8)


def state_from_tensor(state_type: type[StreamState], blob: torch.Tensor, device: torch.device) -> StreamState:
    """The state a `state_to_tensor` blob holds, its tensors on the model's `device`."""
    try:
        state = state_type.from_bytes(blob.numpy().tobytes())
    except Exception as error:  # a corrupt or foreign blob must not take the model down
        raise InvalidInput(f"input 'state' is not a {state_type.__name__}: {error}") from error
    return state if device.type == "cpu" else state.map_tensors(lambda tensor: tensor.to(device))


def require(inputs: TensorMap, name: str, dtype: torch.dtype, dims: int) -> torch.Tensor:
    """The named input, checked for dtype and rank, with a message that says what was wrong."""
    if name not in inputs:
        raise InvalidInput(f"missing input {name!r}")
    tensor = inputs[name]
    if tensor.dtype != dtype or tensor.dim() != dims:
        raise InvalidInput(
            f"input {name!r} must be {dims}-d {dtype}, got {tensor.dim()}-d {tensor.dtype} {tuple(tensor.shape)}"
        )
    return tensor


def flag(inputs: TensorMap, name: str) -> bool:
    tensor = inputs.get(name)
    return bool(tensor is not None and tensor.numel() and tensor.flatten()[0].item())


class EncoderModel(RuntimeModel):
    """Stateless chunk model: `pcm` float32 (N,) at 16 kHz, `state` uint8, `flush` bool (1,)
    -> `embeddings` float32 (T, llm_dim) at 12.5 Hz, `state` uint8 (a fresh one after a flush)."""

    name = "encoder"

    def __init__(self, encoder: SpeechEncoder) -> None:
        self.encoder = encoder.eval()

    def execute(self, inputs: TensorMap, state: None = None) -> tuple[TensorMap, None]:
        pcm = require(inputs, "pcm", torch.float32, 1)
        blob = inputs.get("state")
        stream = (
            self.encoder.placed_state(state_from_tensor(SpeechEncoderState, blob, torch.device("cpu")))
            if blob is not None and blob.numel()
            else self.encoder.init_state()
        )
        embeddings, stream = self.encoder.step(pcm, stream)
        if flag(inputs, "flush"):
            last, stream = self.encoder.flush(stream)
            embeddings = torch.cat([embeddings, last], dim=1)
        return {"embeddings": to_host(embeddings[0]), "state": state_to_tensor(stream)}, None
