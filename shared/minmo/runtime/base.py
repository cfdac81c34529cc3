"""Runtime interface: models addressed by name, inputs and outputs as named tensors.

Every streaming model (encoder, LLM, voice-token LM, token2wav) is stateful: it keeps its caches where it
runs, keyed by a sequence (correlation) id that the caller opens with `start` and closes with `end` — as
Triton's sequence batcher does — so a request carries only its new chunk, never the history (DESIGN.md §5).
The caller's stream is the affinity; when it breaks, the caller replays what it logged on another replica.

A request also says whether it is steady work: a reply's work after its first audio while the reply is ahead of
its listener by `STEADY_LEAD_S` or more (`PlaybackLead`), so it can wait a moment while another session's first
audio (the latency a user feels) is computed on the same CPUs. A reply that falls behind (a loaded machine) is
first-audio work again, so steady work is delayed, never starved. The local runtime orders its work by it; Triton
leaves the order to its scheduler.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

TensorMap = dict[str, torch.Tensor]
STEADY_LEAD_S = 1.0  # a reply stream at least this far ahead of real-time playback may wait for others' first audio


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
    `state` is None for stateless models and at the start of a sequence; the returned state is kept for the
    sequence's next request.
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
    async def infer(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None, steady: bool = False
    ) -> TensorMap:
        """One response; `steady`: the request is steady work (see the module's docstring), not first-audio work."""

    @abstractmethod
    def infer_stream(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None, steady: Callable[[], bool] | None = None
    ) -> AsyncIterator[TensorMap]:
        """Responses of a decoupled model; closing the iterator early cancels the rest. `steady` is asked before each
        response is computed whether that is steady work (None: none is)."""

    @abstractmethod
    async def end_sequence(self, model: str, sequence_id: str) -> None:
        """Drop a sequence's state (idempotent): the caller's session ended or broke."""

    @abstractmethod
    async def close(self) -> None: ...


class InvalidInput(ValueError):
    """The request's tensors are malformed (wrong name, dtype or shape); the message says which."""


class UnknownSequence(KeyError):
    """A request named a sequence id that was never started here (or already ended)."""


class PlaybackLead:
    """How far a reply stream's output is ahead of a listener who plays it in real time from the stream's first
    output: the slack that makes its next step steady work. The caller counts the output (`units`: samples, speech
    tokens, text tokens) and says when the first came out; `seconds_per_unit` is the audio one unit stands for."""

    def __init__(self, seconds_per_unit: float, margin_s: float = STEADY_LEAD_S) -> None:
        self.seconds_per_unit = seconds_per_unit
        self.margin_s = margin_s
        self.started_at: float | None = None

    def start(self, now: float | None = None) -> None:
        """The stream's first output came out (later calls change nothing): the listener's clock starts."""
        if self.started_at is None:
            self.started_at = time.monotonic() if now is None else now

    def ahead_s(self, units: float, now: float | None = None) -> float:
        if self.started_at is None:
            return 0.0
        now = time.monotonic() if now is None else now
        return units * self.seconds_per_unit - (now - self.started_at)

    def steady(self, units: float, now: float | None = None) -> bool:
        """Whether a stream that has put out `units` is at least `margin_s` ahead of its listener."""
        return self.ahead_s(units, now) >= self.margin_s
