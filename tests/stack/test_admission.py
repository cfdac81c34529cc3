"""Admission by capacity with real gRPC: a full replica refuses at once with a retry hint, duplex tries the next
replica of the hop, and only when every replica is full does the client get RESOURCE_EXHAUSTED at session start."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from minmo.duplex.links import replica_addresses
from minmo.serving.server import ADMITTED_METADATA, RETRY_AFTER_METADATA
from minmo.v1 import conversation_pb2, encoder_pb2, encoder_pb2_grpc

FULL = {"MINMO_MAX_SESSIONS": "0"}  # a replica with no free slot: every new stream is past its capacity


def _config() -> conversation_pb2.ClientEvent:
    return conversation_pb2.ClientEvent(session_config=conversation_pb2.SessionConfig(input_sample_rate_hz=16000))


def _text(text: str) -> conversation_pb2.ClientEvent:
    return conversation_pb2.ClientEvent(text_input=conversation_pb2.TextInput(text=text))


async def _start_stack(stack, llm_envs: list[dict[str, str]]) -> None:
    for name in ("encoder", "voicelm", "vocoder"):
        await stack.start_model_service(name)
    for env in llm_envs:
        await stack.start_model_service("llm", **env)
    await stack.start_duplex()


async def _read_until(call, predicate, timeout_s: float = 60.0) -> list[conversation_pb2.ServerEvent]:
    events = []
    async with asyncio.timeout(timeout_s):
        while True:
            event = await call.read()
            assert event is not grpc.aio.EOF, f"stream ended early after {events}"
            events.append(event)
            if predicate(event):
                return events


async def test_a_full_replica_refuses_at_once_with_a_retry_hint_and_an_admitted_stream_learns_it_early(stack):
    full = await stack.start_model_service("encoder", **FULL)
    free = await stack.start_model_service("encoder", MINMO_MAX_SESSIONS="3")
    async with grpc.aio.insecure_channel(stack.address("encoder", 0)) as channel:
        call = encoder_pb2_grpc.AudioEncoderStub(channel).Encode()
        assert ADMITTED_METADATA not in dict(await call.initial_metadata())
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "maximum of 0 sessions" in await call.details()
        assert dict(await call.trailing_metadata())[RETRY_AFTER_METADATA].isdigit()
    async with grpc.aio.insecure_channel(stack.address("encoder", 1)) as channel:
        call = encoder_pb2_grpc.AudioEncoderStub(channel).Encode()
        assert dict(await call.initial_metadata())[ADMITTED_METADATA] == "1"  # before any message was sent
        config = encoder_pb2.EncodeConfig(session_id="s", sample_rate_hz=16000)
        await call.write(encoder_pb2.EncodeRequest(config=config))
        assert free.active_sessions() == 1
        call.cancel()
    registry = free.telemetry.metrics.registry
    assert registry.get_sample_value("minmo_session_capacity") == 3
    assert full.telemetry.metrics.registry.get_sample_value("minmo_session_capacity") == 0


async def test_sessions_land_on_the_replica_with_room_when_another_is_full(stack):
    await _start_stack(stack, [FULL, {"MINMO_MAX_SESSIONS": "4"}])
    full, free = stack.hosts["llm"]
    _, conversation = stack.conversation()
    calls = []
    for index in range(2):  # two sessions: whichever replica duplex tries first, both land on the free one
        call = conversation.Converse()
        await call.write(_config())
        await _read_until(call, lambda event: event.HasField("session_started"))
        calls.append(call)
        assert (full.active_sessions(), free.active_sessions()) == (0, index + 1)
    await calls[0].write(_text("hello"))
    events = await _read_until(calls[0], lambda event: event.HasField("latency_report"))
    assert not [event for event in events if event.HasField("error")]
    for call in calls:
        call.cancel()


async def test_when_every_replica_is_full_the_client_is_refused_at_session_start(stack):
    await _start_stack(stack, [FULL, FULL])
    _, conversation = stack.conversation()
    call = conversation.Converse()
    await call.write(_config())
    with pytest.raises(grpc.aio.AioRpcError):  # no SessionStarted: no work was started for this session
        await call.read()
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "every llm replica is full" in await call.details()
    assert dict(await call.trailing_metadata())[RETRY_AFTER_METADATA].isdigit()


def test_replica_addresses_lists_every_replica_of_a_hop():
    assert replica_addresses("127.0.0.1:1, 127.0.0.2:2") == ["127.0.0.1:1", "127.0.0.2:2"]
    assert replica_addresses("ipv4:10.0.0.1:50053") == ["10.0.0.1:50053"]
    assert replica_addresses("dns:///localhost:50053") == ["127.0.0.1:50053"]
    with pytest.raises(ValueError, match="host:port"):
        replica_addresses("localhost")
