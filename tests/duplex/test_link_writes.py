"""A downstream stream written by several tasks at once: every message arrives, and the stream never hangs.

gRPC takes one pending write per stream and grpc.aio does not guard it: two writes started together hang the stream
for good (a session's LLM stream is written by the encoder's reader, the response and the history). The link's
writes take turns. Real gRPC over loopback: a server that counts what it receives."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from minmo.duplex.links import _Link

WRITERS = 2
MESSAGES = 200
PAYLOAD = b"x" * 3200  # an audio chunk's size: enough to keep a write pending while the next one starts


async def _count(request_iterator, _context):
    received = 0
    async for _ in request_iterator:
        received += 1
    yield str(received).encode()


@pytest.fixture
async def counting_channel():
    server = grpc.aio.server()
    methods = {"Count": grpc.stream_stream_rpc_method_handler(_count)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Count", methods)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


async def test_writes_from_several_tasks_all_arrive(counting_channel):
    link = _Link()
    link.call = counting_channel.stream_stream("/test.Count/Count")()

    async def writer() -> None:
        for _ in range(MESSAGES):
            await link.write(PAYLOAD)

    async with asyncio.timeout(30):  # a hung stream fails the test instead of blocking it
        await asyncio.gather(*(writer() for _ in range(WRITERS)))
        await link.call.done_writing()
        counted = [response async for response in link.call]
    assert counted == [str(WRITERS * MESSAGES).encode()]
