"""ReadAhead: the messages that arrived while a handler computed are taken at once, in order, within a bound."""

import asyncio

import pytest

from minmo.serving.read_ahead import ReadAhead


async def _source(items, gate: asyncio.Event | None = None, error: Exception | None = None):
    for item in items:
        yield item
    if gate is not None:
        await gate.wait()
    if error is not None:
        raise error


async def test_take_ready_pops_the_waiting_messages_the_predicate_accepts_and_keeps_the_order():
    requests = ReadAhead(_source([1, 2, 3, "end", 4]))
    assert await anext(requests) == 1
    await asyncio.sleep(0)  # the reader catches up
    assert requests.take_ready(lambda item: isinstance(item, int)) == [2, 3]
    assert [item async for item in requests] == ["end", 4]
    await requests.close()


async def test_the_reader_stops_at_the_limit_until_the_handler_takes_messages():
    produced = []

    async def counting():
        for item in range(10):
            produced.append(item)
            yield item

    requests = ReadAhead(counting(), limit=3)
    await asyncio.sleep(0.01)
    assert len(produced) <= 4, "at most `limit` wait, plus the one the reader holds"
    assert [item async for item in requests] == list(range(10))
    await requests.close()


async def test_a_broken_source_raises_where_the_handler_reads_after_what_arrived():
    requests = ReadAhead(_source([1], error=ConnectionResetError("peer gone")))
    assert await anext(requests) == 1
    with pytest.raises(ConnectionResetError, match="peer gone"):
        await anext(requests)
    await requests.close()


async def test_close_stops_a_reader_that_waits_for_the_caller():
    gate = asyncio.Event()
    requests = ReadAhead(_source([], gate=gate))
    await asyncio.sleep(0)
    await requests.close()
    assert [item async for item in requests] == []
