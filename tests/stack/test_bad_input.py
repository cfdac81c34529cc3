"""Bad input at the front door: each case gets a clear status, and a concurrent healthy session
completes its turn unaffected."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from minmo.v1 import conversation_pb2

from .test_conversation import _config, _events_until, _is_latency, _text


def _audio(data: bytes) -> conversation_pb2.ClientEvent:
    return conversation_pb2.ClientEvent(audio_chunk=conversation_pb2.AudioChunk(audio=data))


async def _status(stub, events: list) -> tuple[grpc.StatusCode, str]:
    call = stub.Converse()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async with asyncio.timeout(30):
            for event in events:  # a refusal at the call's start (no API key) may end it before a write
                await call.write(event)
            while await call.read() is not grpc.aio.EOF:
                pass
    return error.value.code(), error.value.details()


CASES = {
    "audio before config": ([_audio(b"\0\0" * 160)], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
    "unsupported sample rate": (
        [conversation_pb2.ClientEvent(session_config=conversation_pb2.SessionConfig(input_sample_rate_hz=44100))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "44100",
    ),
    "odd byte count": ([_config(), _audio(b"\0" * 321)], grpc.StatusCode.INVALID_ARGUMENT, "even"),
    "oversized chunk": ([_config(), _audio(b"\0\0" * 16000 * 5)], grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds"),
    "unknown session id": (
        [
            conversation_pb2.ClientEvent(
                resume_session=conversation_pb2.ResumeSession(session_id="no-such-session", resume_token="x")
            )
        ],
        grpc.StatusCode.NOT_FOUND,
        "no-such-session",
    ),
    "second config": ([_config(), _config()], grpc.StatusCode.INVALID_ARGUMENT, "only the first message"),
    "empty text": ([_config(), _text("  ")], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_input_gets_a_clear_status_and_costs_a_healthy_session_nothing(full_stack, case):
    _, stub = full_stack.conversation()
    healthy = stub.Converse()
    await healthy.write(_config(text_only=True))
    await healthy.read()
    events, expected_code, expected_words = CASES[case]
    code, details = await _status(stub, events)
    assert code == expected_code, details
    assert expected_words in details
    await healthy.write(_text("still there?"))
    assert any(event.HasField("turn_event") for event in await _events_until(healthy, _is_latency))
    healthy.cancel()


async def test_garbage_bytes_are_invalid_argument(full_stack):
    channel, _stub = full_stack.conversation()
    raw = channel.stream_stream(
        "/minmo.v1.Conversation/Converse", request_serializer=lambda data: data, response_deserializer=lambda d: d
    )
    call = raw()
    await call.write(b"\xff\xfe\xfd\xfc garbage")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_session_flood_is_refused_past_the_limit(stack):
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name)
    await stack.start_duplex(MINMO_MAX_SESSIONS="1")
    _, stub = stack.conversation()
    healthy = stub.Converse()
    await healthy.write(_config(text_only=True))
    await healthy.read()
    code, details = await _status(stub, [_config()])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 1" in details
    await healthy.write(_text("hello"))
    assert any(event.HasField("turn_event") for event in await _events_until(healthy, _is_latency))
    healthy.cancel()
