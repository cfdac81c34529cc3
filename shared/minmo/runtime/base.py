"""Runtime interface: models addressed by name, inputs and outputs as named tensors.

Stateless chunk models (encoder chunk, token2wav chunk) take their streaming caches as an input
tensor and return the new one, so any replica or instance serves any session. Stateful decoders
(LLM, voice-token LM) keep their state where they run, keyed by a sequence (correlation) id that the
caller opens with `start` and closes with `end` — as Triton's sequence batcher does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import torch

TensorMap = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Sequence:
    """Correlates requests to a stateful model: `start` creates the state, `end` drops it."""

    id: str
    start: bool = False
    end: bool = False


class RuntimeModel(ABC):
    """A model as the runtime sees it; `minmo.runtime.models` holds the concrete ones.

    `execute` serves one request with one response; `execute_stream` yields several responses
    (decoupled models), each with the state after it, so a cancelled stream keeps what it produced.
    `state` is None for stateless models and at the start of a sequence.
    """

    name: str
    stateful: bool = False

    @abstractmethod
    def execute(self, inputs: TensorMap, state: Any) -> tuple[TensorMap, Any]: ...

    def execute_stream(self, inputs: TensorMap, state: Any) -> Iterator[tuple[TensorMap, Any]]:
        yield self.execute(inputs, state)


class ModelRuntime(ABC):
    """What services call. Errors in inputs raise `InvalidInput` (services map it to INVALID_ARGUMENT)."""

    @abstractmethod
    async def infer(self, model: str, inputs: TensorMap, sequence: Sequence | None = None) -> TensorMap: ...

    @abstractmethod
    def infer_stream(self, model: str, inputs: TensorMap, sequence: Sequence | None = None) -> AsyncIterator[TensorMap]:
        """Responses of a decoupled model; closing the iterator early cancels the rest."""

    @abstractmethod
    async def end_sequence(self, model: str, sequence_id: str) -> None:
        """Drop a sequence's state (idempotent): the caller's session ended or broke."""

    @abstractmethod
    async def close(self) -> None: ...


class InvalidInput(ValueError):
    """The request's tensors are malformed (wrong name, dtype or shape); the message says which."""


class UnknownSequence(KeyError):
    """A request named a sequence id that was never started here (or already ended)."""
