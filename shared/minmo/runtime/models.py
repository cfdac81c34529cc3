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

EncoderStep = tuple[torch.Tensor, SpeechEncoderState, bool]  # pcm (N,), the stream's state, flush


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

    Batching across sessions: with a batcher (`attach_batcher`), `execute` hands its chunk to it, and the steps of
    concurrent sessions run as one forward (`SpeechEncoder.step_rows`: caches of different lengths padded and
    masked); `execute_batch` does the same for the requests of one Triton `execute`. A flush (once per utterance)
    runs right after the batched step, on the batcher's thread too: the compute of waiting sessions stays on one
    thread instead of spreading over the threads that wait."""

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

    def step_rows(self, requests: list[EncoderStep]) -> list[tuple[torch.Tensor, SpeechEncoderState]]:
        """(pcm (N,), state, flush) of independent streams -> (embeddings (1, T, llm_dim), state) of each: the chunk
        steps as one forward, then each flush on its own stream."""
        stepped = self.encoder.step_rows([pcm for pcm, _, _ in requests], [state for _, state, _ in requests])
        return [
            self._flush(embeddings, stream) if flush else (embeddings, stream)
            for (embeddings, stream), (_, _, flush) in zip(stepped, requests, strict=True)
        ]

    def execute(self, inputs: TensorMap, state: SpeechEncoderState | None) -> tuple[TensorMap, SpeechEncoderState]:
        pcm, stream, flush = request = self._prepare(inputs, state)
        if self.batcher is None:
            embeddings, stream = self.encoder.step(pcm, stream)
            embeddings, stream = self._flush(embeddings, stream) if flush else (embeddings, stream)
        else:
            with self.batcher.session():
                embeddings, stream = self.batcher(request)
        return self._finish(embeddings, stream)

    def execute_batch(self, requests: list[tuple[TensorMap, SpeechEncoderState | None]]) -> list[BatchResult]:
        """`execute` for the requests of independent sequences at once; a bad request gets its error, the others
        their outputs and states."""
        return execute_batch(requests, self._prepare, self.step_rows, self._finish)

    def _prepare(self, inputs: TensorMap, state: SpeechEncoderState | None) -> EncoderStep:
        pcm = require(inputs, "pcm", torch.float32, 1)
        return pcm, self.encoder.init_state() if state is None else state, flag(inputs, "flush")

    def _flush(
        self, embeddings: torch.Tensor, stream: SpeechEncoderState
    ) -> tuple[torch.Tensor, SpeechEncoderState]:
        last, stream = self.encoder.flush(stream)
        return torch.cat([embeddings, last], dim=1), stream

    @staticmethod
    def _finish(embeddings: torch.Tensor, stream: SpeechEncoderState) -> tuple[TensorMap, SpeechEncoderState]:
        return {"embeddings": to_host(embeddings[0])}, stream


BatchResult = tuple[TensorMap, Any] | Exception  # a request's outputs and new state, or why it failed


def execute_batch(
    requests: list[tuple[TensorMap, Any]],
    prepare: Callable[[TensorMap, Any], Any],
    step_rows: Callable[[list[Any]], list[tuple[Any, Any]]],
    finish: Callable[[Any, Any], tuple[TensorMap, Any]],
) -> list[BatchResult]:
    """The requests of one batch: `prepare(inputs, state)` each -> its step request (an `InvalidInput` is that
    request's result), one `step_rows` over the rest -> (output, state) each, then `finish(output, state)` each."""
    results: list[BatchResult | None] = [None] * len(requests)
    prepared = []
    for index, (inputs, state) in enumerate(requests):
        try:
            prepared.append((index, prepare(inputs, state)))
        except InvalidInput as error:
            results[index] = error
    if prepared:
        stepped = step_rows([request for _, request in prepared])
        for (index, _), (output, state) in zip(prepared, stepped, strict=True):
            results[index] = finish(output, state)
    return results
