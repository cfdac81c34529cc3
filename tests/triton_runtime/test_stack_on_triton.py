"""The five services with MINMO_RUNTIME=triton: a whole turn through Triton, and a Triton restart mid-session
that costs at most the turn in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from stack.conftest import InProcessStack
from stack.test_conversation import _audio_events, _config, _events_until, _is_latency, _text, _turn_types

from minmo.audio.synthetic import utterance
from minmo.triton.server import LocalTritonServer
from minmo.v1 import conversation_pb2

TurnType = conversation_pb2.TurnEvent.Type


@pytest.fixture
async def triton_stack(redis_url: str, triton_server: LocalTritonServer) -> AsyncIterator[InProcessStack]:
    stack = InProcessStack(redis_url=redis_url)
    env = {"MINMO_RUNTIME": "triton", "MINMO_TRITON_URL": triton_server.url}
    try:
        for name in ("encoder", "llm", "voicelm", "vocoder"):
            await stack.start_model_service(name, **env)
        await stack.start_duplex()
        yield stack
    finally:
        await stack.stop()


async def test_spoken_turn_through_five_services_on_triton(triton_stack):
    _, stub = triton_stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    await call.read()
    for event in _audio_events(utterance(seed=5, tail_s=0.8)):
        await call.write(event)
    events = await _events_until(call, _is_latency, timeout_s=120)
    assert _turn_types(events) == [
        TurnType.USER_SPEECH_STARTED,
        TurnType.USER_SPEECH_STOPPED,
        TurnType.RESPONSE_STARTED,
        TurnType.RESPONSE_DONE,
    ]
    assert any(event.HasField("audio_output") for event in events)
    report = events[-1].latency_report
    assert report.HasField("first_audio_ms") and report.HasField("vocoder_first_chunk_ms")
    call.cancel()


async def test_triton_restart_costs_at_most_the_turn_in_flight(triton_stack, triton_server):
    _, stub = triton_stack.conversation()
    call = stub.Converse()
    await call.write(_config(text_only=True))
    await call.read()
    await call.write(_text("before the restart"))
    assert TurnType.RESPONSE_DONE in _turn_types(await _events_until(call, _is_latency, timeout_s=60))

    await asyncio.to_thread(triton_server.stop)  # every sequence state (the session's KV cache) goes with it
    await asyncio.to_thread(triton_server.start)

    await call.write(_text("after the restart"))
    events = await _events_until(call, _is_latency, timeout_s=120)
    if any(event.HasField("error") for event in events):  # the turn in flight may be lost, the session is not
        await call.write(_text("and once more"))
        events = await _events_until(call, _is_latency, timeout_s=120)
    assert not any(event.HasField("error") for event in events), events
    assert TurnType.RESPONSE_DONE in _turn_types(events)
    call.cancel()
