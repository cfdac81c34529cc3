"""The models the runtime serves, by name, around the PyTorch modules of `minmo.model`.

The same classes run in-process (`LocalRuntime`) and inside Triton's python backend, so a request
means the same thing on both. Every streaming model is stateful per sequence: its caches stay in the
runtime (or Triton instance) that computes them, and a request carries only its new chunk (DESIGN.md §5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from minmo.model.placement import to_host
from minmo.model.speech_encoder import SpeechEncoder, SpeechEncoderState
from minmo.runtime.base import InvalidInput, RuntimeModel, TensorMap
from minmo.runtime.batching import BatchSettings, StepBatcher

EncoderStep = tuple[torch.Tensor, SpeechEncoderState]  # (pcm (N,), state) in; (embeddings (1, T, D), state) out


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
    on from a fresh state for the next one.

    Batching across sessions: with a batcher (`attach_batcher`), `execute` hands its chunk's step to it, and the
    steps of concurrent sessions run as one forward (`SpeechEncoder.step_rows`: caches of different lengths padded
    and masked); `execute_batch` does the same for the requests of one Triton `execute`. A flush (once per
    utterance) runs after the batched step, on the caller's own stream."""

    name = "encoder"
    stateful = True
    batches_execute = True  # with a batcher, `execute` submits its step to it

    def __init__(self, encoder: SpeechEncoder) -> None:
        self.encoder = encoder.eval()
        self.batcher: StepBatcher | None = None

    def attach_batcher(self, settings: BatchSettings, on_batch: Callable[[int], None] | None = None) -> StepBatcher:
        """Run the chunk steps of concurrent sequences as batched forwards from now on."""
        self.batcher = StepBatcher(self.name, self.step_rows, settings, on_batch)
        return self.batcher

    def step_rows(self, requests: list[EncoderStep]) -> list[EncoderStep]:
        """(pcm (N,), state) of independent streams -> (embeddings (1, T, llm_dim), state) of each, one forward."""
        return self.encoder.step_rows([pcm for pcm, _ in requests], [state for _, state in requests])

    def execute(self, inputs: TensorMap, state: SpeechEncoderState | None) -> tuple[TensorMap, SpeechEncoderState]:
        pcm, stream, flush = self._prepare(inputs, state)
        if self.batcher is None:
            embeddings, stream = self.encoder.step(pcm, stream)
        else:
            with self.batcher.session():
                embeddings, stream = self.batcher((pcm, stream))
        return self._finish(embeddings, stream, flush)

    def execute_batch(self, requests: list[tuple[TensorMap, SpeechEncoderState | None]]) -> list[BatchResult]:
        """`execute` for the requests of independent sequences at once; a bad request gets its error, the others
        their outputs and states."""
        return execute_batch(requests, self._prepare, self.step_rows, self._finish)

    def _prepare(
        self, inputs: TensorMap, state: SpeechEncoderState | None
    ) -> tuple[torch.Tensor, SpeechEncoderState, bool]:
        pcm = require(inputs, "pcm", torch.float32, 1)
        return pcm, self.encoder.init_state() if state is None else state, flag(inputs, "flush")

    def _finish(
        self, embeddings: torch.Tensor, stream: SpeechEncoderState, flush: bool
    ) -> tuple[TensorMap, SpeechEncoderState]:
        if flush:
            last, stream = self.encoder.flush(stream)
            embeddings = torch.cat([embeddings, last], dim=1)
        return {"embeddings": to_host(embeddings[0])}, stream


BatchResult = tuple[TensorMap, Any] | Exception  # a request's outputs and new state, or why it failed


def execute_batch(
    requests: list[tuple[TensorMap, Any]],
    prepare: Callable[[TensorMap, Any], tuple],
    step_rows: Callable[[list[tuple[Any, Any]]], list[tuple[Any, Any]]],
    finish: Callable[..., tuple[TensorMap, Any]],
) -> list[BatchResult]:
    """The requests of one batch: `prepare(inputs, state)` each -> (step input, stream, *rest) (an `InvalidInput`
    is that request's result), one `step_rows` over the rest, then `finish(step output, stream, *rest)` each."""
    results: list[BatchResult | None] = [None] * len(requests)
    prepared = []
    for index, (inputs, state) in enumerate(requests):
        try:
            prepared.append((index, prepare(inputs, state)))
        except InvalidInput as error:
            results[index] = error
    if prepared:
        stepped = step_rows([(step_input, stream) for _, (step_input, stream, *_) in prepared])
        for (index, (_, _, *rest)), (output, stream) in zip(prepared, stepped, strict=True):
            try:
                results[index] = finish(output, stream, *rest)
            except Exception as error:  # one stream's failure is that request's result
                results[index] = error
    return results
