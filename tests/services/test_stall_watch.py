"""StallWatch: a step that outlives its bound is logged once with the await chain it is stuck in; one that ends in
time logs nothing."""

from __future__ import annotations

import asyncio
import logging

from minmo.serving.stall_watch import StallWatch, await_chain


async def _inner(gate: asyncio.Event) -> None:
    await gate.wait()


async def _outer(gate: asyncio.Event) -> None:
    await _inner(gate)


async def test_a_stalled_step_is_logged_with_where_it_waits(caplog):
    caplog.set_level(logging.WARNING, logger="minmo.serving.stall_watch")
    gate = asyncio.Event()
    watch = StallWatch(0.05, "session s1")

    async def handler() -> None:
        with watch.step("handling its text_input event"):
            await _outer(gate)

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.2)
    (record,) = caplog.records
    assert "session s1: handling its text_input event still running after 0.05 s" in record.message
    assert "_outer (test_stall_watch.py:" in record.message and "-> _inner (test_stall_watch.py:" in record.message
    assert "-> awaiting Future" in record.message, record.message
    gate.set()
    await task


async def test_a_step_that_ends_in_time_logs_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="minmo.serving.stall_watch")
    watch = StallWatch(0.2, "session s1")
    with watch.step("handling its audio_chunk event"):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert caplog.records == []


async def test_the_chain_of_a_suspended_task_names_each_coroutine():
    gate = asyncio.Event()
    task = asyncio.create_task(_outer(gate))
    await asyncio.sleep(0)
    chain = await_chain(task)
    assert [link.split(" ")[0] for link in chain] == ["_outer", "_inner", "wait", "awaiting"]
    gate.set()
    await task
