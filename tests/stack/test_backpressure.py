"""Backpressure with real gRPC: a client that stops reading fails its own session with RESOURCE_EXHAUSTED and a
message that says why, its queue never grows past its bound, and another session keeps its pace meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest

from minmo.duplex.outbox import OUTBOX_EVENTS
from minmo.serving.backpressure import Outbox, slow_reader_message
from minmo.v1 import conversation_pb2, conversation_pb2_grpc

SLOW_CLIENT_S = 1.0
# A small receive window and no window growth: the transport holds few bytes, so a stalled reader is felt at once.
STALLED_READER_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
TURN_TIMEOUT_S = 60.0


def _config() -> conversation_pb2.ClientEvent:
    return conversation_pb2.ClientEvent(session_config=conversation_pb2.SessionConfig(input_sample_rate_hz=16000))


def _text(text: str) -> conversation_pb2.ClientEvent:
    return conversation_pb2.ClientEvent(text_input=conversation_pb2.TextInput(text=text))


async def _started(call) -> None:
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while not (await call.read()).HasField("session_started"):
            pass


async def _one_turn(call) -> float:
    """Seconds from the typed input to the turn's latency report (the end of the response)."""
    started = time.perf_counter()
    await call.write(_text("hello there"))
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while True:
            event = await call.read()
            assert event is not grpc.aio.EOF and not event.HasField("error"), f"turn failed: {event}"
            if event.HasField("latency_report"):
                return time.perf_counter() - started


async def test_a_client_that_stops_reading_fails_alone_with_resource_exhausted(stack):
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name)
    await stack.start_duplex(MINMO_SLOW_CLIENT_S=str(SLOW_CLIENT_S))
    llm = stack.hosts["llm"][0]
    _, conversation = stack.conversation()
    healthy = conversation.Converse()
    await healthy.write(_config())
    await _started(healthy)
    alone_s = await _one_turn(healthy)

    async with grpc.aio.insecure_channel(stack.address("duplex"), options=STALLED_READER_OPTIONS) as channel:
        stalled = conversation_pb2_grpc.ConversationStub(channel).Converse()
        await stalled.write(_config())
        await _started(stalled)
        assert llm.active_sessions() == 2

        async def keep_asking() -> None:  # every input makes events to read, which this client never does
            while True:
                await stalled.write(_text("tell me a long story please"))
                await asyncio.sleep(0.2)

        asking = asyncio.create_task(keep_asking())
        beside_stalled_s = await _one_turn(healthy)  # while the stalled session's events pile up
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while llm.active_sessions() > 1:  # the stalled session ends on the server (its llm stream closes)
                await asyncio.sleep(0.1)
        asking.cancel()
        read = 0
        async with asyncio.timeout(TURN_TIMEOUT_S):
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await stalled.read() is not grpc.aio.EOF:  # what was in flight, then the status
                    read += 1
        assert await stalled.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the client reads too slowly" in await stalled.details()
    assert read <= OUTBOX_EVENTS + 4, f"{read} events reached the client after it stalled"
    assert beside_stalled_s < alone_s + 2 * SLOW_CLIENT_S, "the other session was slowed down"
    assert await _one_turn(healthy) > 0  # and still works afterwards


async def test_the_outbox_stays_bounded_and_fails_a_stalled_reader() -> None:
    outbox: Outbox[int] = Outbox(4, 0.2, lambda: RuntimeError(slow_reader_message("reader", "4 queued messages", 0.2)))
    for item in range(4):
        await outbox.put(item)
    started = time.perf_counter()
    try:
        await outbox.put(4)
    except RuntimeError as error:
        assert "reader reads too slowly: 4 queued messages" in str(error)
    else:
        raise AssertionError("a full outbox accepted an item past its bound")
    assert time.perf_counter() - started >= 0.2 and outbox.high_water == 4 and len(outbox) == 0
    try:
        await outbox.get()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the writer of a failed outbox went on")
    ordered: Outbox[int] = Outbox(2, 0.2, RuntimeError)
    await ordered.put(1)
    ordered.close()
    assert [await ordered.get(), await ordered.get()] == [1, None]
    ending: Outbox[int] = Outbox(2, 0.2, RuntimeError)
    ending.put_nowait(1)
    ending.close(ValueError("after the queued items"))
    assert await ending.get() == 1
    with pytest.raises(ValueError, match="after the queued items"):
        await ending.get()
