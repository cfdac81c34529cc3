"""A watch on one step of a long-lived task: when the step takes longer than it should, log where the task waits.

A session's conductor handles its client's events one after another; if one of them never finishes (an await that
nothing will wake), the session goes deaf without an error anywhere. `StallWatch` logs, once per slow step, the
chain of awaits the task is suspended in (each coroutine's function, file and line, down to the future it waits
on), which is what a reader needs to find such a hang from a production log.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
MAX_DEPTH = 40


def await_chain(task: asyncio.Task) -> list[str]:
    """Where a suspended task waits: one 'function (file:line)' per coroutine, outermost first, then what the
    innermost awaits (a future, a task)."""
    chain, awaited = [], task.get_coro()
    for _ in range(MAX_DEPTH):
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            if awaited is not None:
                chain.append(f"awaiting {type(awaited).__name__}")
            break
        chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        awaited = getattr(awaited, "cr_await", None) if isinstance(awaited, types.CoroutineType) else (
            getattr(awaited, "gi_yieldfrom", None)
        )
    return chain


class StallWatch:
    """`with watch.step(name):` around a step of the current task logs a warning with `context` and the task's await
    chain if the step is still running after `after_s`."""

    def __init__(self, after_s: float, context: str) -> None:
        self.after_s = after_s
        self.context = context

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None, "StallWatch.step runs inside a task"
        timer = asyncio.get_running_loop().call_later(self.after_s, self._report, task, name)
        try:
            yield
        finally:
            timer.cancel()

    def _report(self, task: asyncio.Task, name: str) -> None:
        chain = " -> ".join(await_chain(task))
        log.warning("%s: %s still running after %g s, waiting in %s", self.context, name, self.after_s, chain)
