"""Batching across sessions in the local runtime: the ready steps of concurrent sessions run as one forward.

Each session's stream runs on a runtime pool thread and, at every step that batches (an LLM or voice-LM decode step,
an encoder or token2wav chunk step), hands its request to the model's `StepBatcher` and blocks until the result is
there. The batcher's own thread takes the first waiting request, gathers more for at most `window_ms` — but only
while other sessions are in a batchable phase (`active`), so a lone session never waits — up to `max_size`, runs
them as one batched call, and hands each caller its result. Sessions that finished a step submit their next one at
about the same time, so they fall into step.

The window waits for as many steps as the last batch had (capped by the callers in a batchable phase), not for
every such caller: a session busy with work that does not batch (a prefill, sampling) would otherwise cost every
other session the whole window at each step. Steps that arrive while a batch runs simply join the next one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass(frozen=True)
class BatchSettings:
    """MINMO_BATCH_MAX_SIZE: most session steps per batched forward (1: no batching); MINMO_BATCH_WINDOW_MS: how
    long the first waiting step waits for others to join."""

    max_size: int = 8
    window_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.max_size < 1 or self.window_ms < 0:
            raise ValueError(f"batch max size must be >= 1 and window >= 0 ms, got {self.max_size}, {self.window_ms}")

    @property
    def enabled(self) -> bool:
        return self.max_size > 1


@dataclass
class _Slot(Generic[Request, Result]):
    request: Request
    done: threading.Event
    result: Any = None
    error: BaseException | None = None


class StepBatcher(Generic[Request, Result]):
    """Runs `run_batch(requests) -> results` (same order) for requests submitted from many threads."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[Request]], list[Result]],
        settings: BatchSettings,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.run_batch = run_batch
        self.settings = settings
        self.on_batch = on_batch
        self._lock = threading.Condition()
        self._pending: list[_Slot] = []
        self._active = 0  # callers in a phase that submits steps (e.g. generating a response)
        self._last_size = 1  # the previous batch's size: how many steps the window waits for
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"minmo-batch-{name}", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Mark a caller that will submit steps; the window waits for such callers only."""
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._lock.notify_all()

    def __call__(self, request: Request) -> Result:
        """Submit one step and block until its batch ran; raises what the batch raised."""
        slot = _Slot(request, threading.Event())
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.name} batcher is closed")
            self._pending.append(slot)
            self._lock.notify_all()
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                with torch.inference_mode():
                    results = self.run_batch([slot.request for slot in batch])
                for slot, result in zip(batch, results, strict=True):
                    slot.result = result
            except BaseException as error:  # every caller of the batch gets the error, the batcher goes on
                for slot in batch:
                    slot.error = error
            for slot in batch:
                slot.done.set()

    def _next_batch(self) -> list[_Slot] | None:
        with self._lock:
            while not self._pending and not self._closed:
                self._lock.wait()
            if self._closed:
                for slot in self._pending:
                    slot.error = RuntimeError(f"the {self.name} batcher closed")
                    slot.done.set()
                return None
            deadline = time.monotonic() + self.settings.window_ms / 1000
            expected = min(self.settings.max_size, self._active, self._last_size)
            while len(self._pending) < expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._lock.wait(remaining)
            batch = self._pending[: self.settings.max_size]
            del self._pending[: len(batch)]
            self._last_size = max(len(batch), 2 if self._active > len(batch) else 1)  # let a newcomer join once
            return batch
