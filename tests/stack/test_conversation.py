"""Whole conversations through the five services (in this process, real gRPC, real Redis)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import redis.asyncio

from minmo.audio.pcm import float_to_pcm16
from minmo.audio.synthetic import utterance
from minmo.client.chat import ChatRequest, run_chat
from minmo.client.wav import InputAudio
from minmo.session.store import SessionStore
from minmo.v1 import common_pb2, conversation_pb2

TurnType = conversation_pb2.TurnEvent.Type
ROLE_USER, ROLE_ASSISTANT = common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT
CHUNK_SAMPLES = 1600  # 100 ms at 16 kHz


def _config(**fields) -> conversation_pb2.ClientEvent:
    return conversation_pb2.ClientEvent(
        session_config=conversation_pb2.SessionConfig(input_sample_rate_hz=16000, **fields)
    )


def _audio_events(samples: np.ndarray) -> list[conversation_pb2.ClientEvent]:
    return [
        conversation_pb2.ClientEvent(
            audio_chunk=conversation_pb2.AudioChunk(audio=float_to_pcm16(samples[i : i + CHUNK_SAMPLES]))
        )
        for i in range(0, samples.size, CHUNK_SAMPLES)
    ]


def _text(text: str) -> conversation_pb2.ClientEvent:
    return conversation_pb2.ClientEvent(text_input=conversation_pb2.TextInput(text=text))


async def _events_until(call, predicate, timeout_s: float = 60.0) -> list[conversation_pb2.ServerEvent]:
    """Read server events until `predicate(event)` is true for one; return all read."""
    events = []
    async with asyncio.timeout(timeout_s):
        while True:
            event = await call.read()
            assert event is not grpc.aio.EOF, f"stream ended early after {events}"
            events.append(event)
            if predicate(event):
                return events


def _is_latency(event) -> bool:
    return event.HasField("latency_report")


def _turn_types(events) -> list[int]:
    return [event.turn_event.type for event in events if event.HasField("turn_event")]


async def _store(redis_url: str) -> SessionStore:
    return SessionStore(redis.asyncio.Redis.from_url(redis_url, decode_responses=True), ttl_s=3600)


async def test_spoken_turn_through_five_services(full_stack):
    events: list[conversation_pb2.ServerEvent] = []
    request = ChatRequest(audio=InputAudio(utterance(seed=1), 16000), realtime=False, timeout_s=120)
    result = await run_chat(full_stack.address("duplex"), request, events.append)
    assert result.problems() == []
    assert _turn_types(events) == [
        TurnType.USER_SPEECH_STARTED,
        TurnType.USER_SPEECH_STOPPED,
        TurnType.RESPONSE_STARTED,
        TurnType.RESPONSE_DONE,
    ]
    transcripts = [e.transcript for e in events if e.HasField("transcript") and e.transcript.role == ROLE_ASSISTANT]
    deltas, final = transcripts[:-1], transcripts[-1]
    assert deltas and final.is_final, "the assistant transcript streams token by token, then the final text"
    assert final.text == "".join(delta.text for delta in deltas)
    [turn] = result.turns
    assert turn.audio_ms > 500 and turn.sample_rate_hz == 24000
    pcm = np.frombuffer(bytes(turn.audio), dtype="<i2")
    assert np.abs(pcm).max() > 0
    first_audio = next(i for i, event in enumerate(events) if event.HasField("audio_output"))
    assert first_audio < next(i for i, e in enumerate(events) if e.HasField("transcript") and e.transcript == final)
    measured = turn.latency.measured()
    for hop in ("encoder", "llm_first_token", "voicelm_first_tokens", "vocoder_first_chunk", "first_audio"):
        assert measured[hop] >= 0, (hop, measured)


async def test_a_spoken_turn_is_transcribed_into_the_history(full_stack):
    _, stub = full_stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    session_id = (await call.read()).session_started.session_id
    for event in _audio_events(utterance(seed=6, tail_s=0.8)):
        await call.write(event)
    events = await _events_until(call, lambda e: e.HasField("transcript") and e.transcript.role == ROLE_USER)
    user_turn = next(e.turn_event.turn_id for e in events if e.HasField("turn_event"))
    transcript = events[-1].transcript
    assert transcript.is_final and transcript.turn_id == user_turn
    assert TurnType.RESPONSE_STARTED in _turn_types(events), "transcribing waits until the reply is under way"
    history = await (await _store(full_stack.redis_url)).history(session_id)
    assert (history[0].turn_id, history[0].role, history[0].text) == (user_turn, "user", transcript.text)
    call.cancel()


async def test_typed_turn_and_history(full_stack):
    _channel, stub = full_stack.conversation()
    call = stub.Converse()
    await call.write(_config(text_only=True))
    started = (await call.read()).session_started
    await call.write(_text("hello there"))
    events = await _events_until(call, _is_latency)
    assert _turn_types(events) == [TurnType.RESPONSE_STARTED, TurnType.RESPONSE_DONE]
    assert not any(event.HasField("audio_output") for event in events), "text_only sends no audio"
    final = [e.transcript.text for e in events if e.HasField("transcript") and e.transcript.is_final]
    history = await (await _store(full_stack.redis_url)).history(started.session_id)
    assert [(turn.role, turn.text) for turn in history] == [("user", "hello there"), ("assistant", final[-1])]
    await call.done_writing()


async def test_barge_in_interrupts_and_keeps_only_what_was_heard(full_stack):
    _channel, stub = full_stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    session_id = (await call.read()).session_started.session_id
    for event in _audio_events(utterance(seed=2, tail_s=0.8)):
        await call.write(event)
    first_audio = (await _events_until(call, lambda event: event.HasField("audio_output")))[-1].audio_output
    # The user hears a little of the answer, then talks over it. The client says how much it played, as a real
    # one does: on a slow machine all the audio sent so far may have played, so wall time alone proves nothing.
    played = conversation_pb2.PlaybackPosition(turn_id=first_audio.turn_id, played_ms=100)
    await call.write(conversation_pb2.ClientEvent(playback_position=played))
    await asyncio.sleep(0.3)
    for event in _audio_events(utterance(seed=3, lead_s=0.0, speech_s=1.0, tail_s=0.0)):
        await call.write(event)
    events = await _events_until(
        call, lambda event: event.HasField("turn_event") and event.turn_event.type == TurnType.RESPONSE_INTERRUPTED
    )
    interrupted = events[-1].turn_event
    history = await (await _store(full_stack.redis_url)).history(session_id)
    assistant = [turn for turn in history if turn.role == "assistant"][-1]
    assert assistant.interrupted and assistant.text == interrupted.heard_text
    assert interrupted.heard_ms == 100 < assistant.audio_ms, "only the part the client played was heard"
    call.cancel()


async def test_resume_on_another_duplex_replica_keeps_history(full_stack):
    second = await full_stack.start_duplex()
    assert second.port != full_stack.hosts["duplex"][0].port
    _, first_stub = full_stack.conversation(0)
    call = first_stub.Converse()
    await call.write(_config(text_only=True))
    started = (await call.read()).session_started
    await call.write(_text("remember me"))
    await _events_until(call, _is_latency)
    call.cancel()

    _, second_stub = full_stack.conversation(1)
    resumed = second_stub.Converse()
    await resumed.write(
        conversation_pb2.ClientEvent(
            resume_session=conversation_pb2.ResumeSession(
                session_id=started.session_id, resume_token=started.resume_token
            )
        )
    )
    again = (await resumed.read()).session_started
    assert again.resumed and again.session_id == started.session_id and again.history_turns == 2
    await resumed.write(_text("and again"))
    events = await _events_until(resumed, _is_latency)
    assert TurnType.RESPONSE_DONE in _turn_types(events)
    history = await (await _store(full_stack.redis_url)).history(started.session_id)
    assert [turn.role for turn in history] == ["user", "assistant", "user", "assistant"]

    wrong = second_stub.Converse()
    await wrong.write(
        conversation_pb2.ClientEvent(
            resume_session=conversation_pb2.ResumeSession(session_id=started.session_id, resume_token="not-it")
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await wrong.read()
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    resumed.cancel()


async def test_losing_the_llm_replica_costs_nothing_of_the_history(stack):
    for name in ("encoder", "voicelm", "vocoder"):
        await stack.start_model_service(name)
    await stack.start_model_service("llm")
    await stack.start_model_service("llm")
    await stack.start_duplex()
    _, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config(text_only=True))
    started = (await call.read()).session_started
    await call.write(_text("first question"))
    await _events_until(call, _is_latency)
    serving = [host for host in stack.hosts["llm"] if host.active_sessions() > 0]
    assert len(serving) == 1, "the session's llm stream lives on exactly one replica"
    await serving[0].stop()
    await call.write(_text("second question"))
    events = await _events_until(call, _is_latency)
    assert not any(event.HasField("error") for event in events), events
    assert TurnType.RESPONSE_DONE in _turn_types(events)
    history = await (await _store(stack.redis_url)).history(started.session_id)
    assert [turn.text for turn in history][:1] == ["first question"] and len(history) == 4
    call.cancel()
