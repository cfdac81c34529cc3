"""The models the runtime serves, by name, around the PyTorch modules of `minmo.model`.

The same classes run in-process (`LocalRuntime`) and inside Triton's python backend, so a request
means the same thing on both. Every streaming model is stateful per sequence: its caches stay in the
runtime (or Triton instance) that computes them, and a request carries only its new chunk (DESIGN.md §5).
"""

from __future__ import annotations

import torch

from minmo.model.placement import to_host
from minmo.model.speech_encoder import SpeechEncoder, SpeechEncoderState
from minmo.runtime.base import InvalidInput, RuntimeModel, TensorMap


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
    """Stateful per sequence (one session's audio stream): `pcm` float32 (N,) at 16 kHz, `flush` bool (1,)
    -> `embeddings` float32 (T, llm_dim) at 12.5 Hz. The stream's fbank, encoder and projector caches stay where
    they are computed (bounded by the config's `left_chunks`); a flush ends the utterance, and the sequence goes
    on from a fresh state for the next one."""

    name = "encoder"
    stateful = True

    def __init__(self, encoder: SpeechEncoder) -> None:
        self.encoder = encoder.eval()

    def execute(self, inputs: TensorMap, state: SpeechEncoderState | None) -> tuple[TensorMap, SpeechEncoderState]:
        pcm = require(inputs, "pcm", torch.float32, 1)
        stream = self.encoder.init_state() if state is None else state
        embeddings, stream = self.encoder.step(pcm, stream)
        if flag(inputs, "flush"):
            last, stream = self.encoder.flush(stream)
            embeddings = torch.cat([embeddings, last], dim=1)
        return {"embeddings": to_host(embeddings[0])}, stream
