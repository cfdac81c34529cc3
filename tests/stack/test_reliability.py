"""Defects found from outside (issue 13), each reproduced: bad enum values and out-of-range configs are
INVALID_ARGUMENT every time, even at once; oversized inputs are refused without echoing them; a lost hop ends
its turn with one RESPONSE_DONE (end_reason FAILED) and the next turn works; internal services never answer
INTERNAL or UNKNOWN."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minmo.audio.synthetic import utterance
from minmo.duplex.limits import InputLimits
from minmo.v1 import conversation_pb2

from .test_bad_input import _status
from .test_conversation import _audio_events, _config, _events_until, _is_latency, _store, _text, _turn_types

TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
ANSWERED = (EndReason.COMPLETED, EndReason.MAX_TOKENS)  # the reply was sent in full (tiny's often hit the cap)
INT32_MAX = 2**31 - 1


async def _until_duplex_serves(stack, timeout_s: float = 30.0) -> None:
    """Wait until duplex reports SERVING: its peer watch reaches every peer over the channels its turns use, so a
    restarted peer is reachable again (a fixed sleep lost to the channel's growing reconnect backoff on a busy
    machine)."""
    channel, _ = stack.conversation()
    health, serving = health_pb2_grpc.HealthStub(channel), health_pb2.HealthCheckResponse.SERVING
    async with asyncio.timeout(timeout_s):
        while (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status != serving:
            await asyncio.sleep(0.2)


def _detection(**fields) -> conversation_pb2.ClientEvent:
    return _config(turn_detection=conversation_pb2.TurnDetection(**fields))


BAD_CONFIGS = {
    "mode 7": _detection(mode=7),
    "mode -1": _detection(mode=-1),
    "mode int32 max": _detection(mode=INT32_MAX),
    "negative prefix padding": _detection(prefix_padding_ms=-1),
    "negative threshold": _detection(vad_threshold=-1.0),
    "threshold 1": _detection(vad_threshold=1.0),
    "nan threshold": _detection(vad_threshold=float("nan")),
    "silence int32 min": _detection(silence_ms=-(2**31)),
    "silence int32 max": _detection(silence_ms=INT32_MAX),
}


async def test_bad_configs_are_invalid_argument_every_time_even_all_at_once(full_stack):
    _, stub = full_stack.conversation()
    names = sorted(BAD_CONFIGS) * 3
    results = await asyncio.gather(*(_status(stub, [BAD_CONFIGS[name]]) for name in names))
    for name, (code, details) in zip(names, results, strict=True):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        assert "turn_detection" in details and len(details) < 200, details


OVERSIZED = "x" * 100_000


@pytest.mark.parametrize(
    "events, field",
    [
        ([_config(), _text(OVERSIZED)], "text_input.text"),
        ([_config(system_prompt=OVERSIZED)], "system_prompt"),
        (
            [
                conversation_pb2.ClientEvent(
                    resume_session=conversation_pb2.ResumeSession(session_id=OVERSIZED, resume_token="t")
                )
            ],
            "session_id",
        ),
    ],
    ids=["text", "system prompt", "session id"],  # an oversized voice instruction: test_voice_control
)
async def test_oversized_inputs_are_refused_without_echoing_them(full_stack, events, field):
    _, stub = full_stack.conversation()
    code, details = await _status(stub, events)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert field in details and "xxxxxxxx" not in details and len(details) < 200, details


async def test_text_at_the_limit_is_answered(full_stack):
    _, stub = full_stack.conversation()
    call = stub.Converse()
    await call.write(_config(text_only=True))
    await call.read()
    await call.write(_text("y" * InputLimits.max_text_chars))
    events = await _events_until(call, _is_latency, timeout_s=120)
    done = [event.turn_event for event in events if event.turn_event.type == TurnType.RESPONSE_DONE]
    assert [event.end_reason in ANSWERED for event in done] == [True]
    call.cancel()


@pytest.mark.parametrize("component", ["voicelm", "vocoder"])
async def test_a_speech_replica_lost_mid_turn_fails_over_and_the_turn_completes(stack, component):
    for name in ("encoder", "llm", "voicelm", "vocoder", component):
        await stack.start_model_service(name, MINMO_GRACE_S="0")
    await stack.start_duplex()
    _, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    await call.read()
    await call.write(_text("hello there"))
    async with asyncio.timeout(60):
        while not (serving := [host for host in stack.hosts[component] if host.active_sessions() > 0]):
            await asyncio.sleep(0.005)
    await serving[0].stop()  # mid-turn: its stream breaks
    events = await _events_until(call, _is_latency, timeout_s=120)
    done = [event.turn_event for event in events if event.turn_event.type == TurnType.RESPONSE_DONE]
    assert [event.end_reason in ANSWERED for event in done] == [True], [event.error for event in events]
    assert not any(event.HasField("error") for event in events)
    audio = [event.audio_output for event in events if event.HasField("audio_output")]
    starts = [chunk.start_ms for chunk in audio]
    assert audio and starts == sorted(starts), "the audio continues where it stopped, in order"
    call.cancel()


async def test_with_no_replica_left_the_turn_fails_once_and_the_next_turn_works(stack):
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name, MINMO_GRACE_S="0")
    await stack.start_duplex()
    _, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    started = (await call.read()).session_started
    voicelm = stack.hosts["voicelm"].pop()
    await call.write(_text("hello there"))
    async with asyncio.timeout(60):
        while voicelm.active_sessions() == 0:
            await asyncio.sleep(0.005)
    await voicelm.stop()
    events = await _events_until(call, _is_latency)
    done = [event.turn_event for event in events if event.turn_event.type == TurnType.RESPONSE_DONE]
    assert len(done) == 1 and done[0].end_reason == EndReason.FAILED and done[0].error_code == "UNAVAILABLE", events
    errors = [event.error for event in events if event.HasField("error")]
    assert len(errors) == 1 and errors[0].retryable and "Error" not in errors[0].message, errors

    await stack.start_model_service("voicelm", MINMO_PORT=str(voicelm.port))
    await _until_duplex_serves(stack)  # its channel to voicelm reconnected (after backoff): its peer watch says so
    await call.write(_text("and again"))  # the llm must not still be generating the failed turn
    events = await _events_until(call, _is_latency, timeout_s=120)
    done = [event.turn_event for event in events if event.turn_event.type == TurnType.RESPONSE_DONE]
    assert [event.end_reason in ANSWERED for event in done] == [True], [event.error for event in events]
    assert any(event.HasField("audio_output") for event in events)

    history = await (await _store(stack.redis_url)).history(started.session_id)
    assert [(turn.role.value, turn.outcome) for turn in history] == [
        ("user", "completed"),
        ("assistant", "failed"),
        ("user", "completed"),
        ("assistant", "completed"),
    ], "every user turn has its answer, the failed one marked"
    call.cancel()


async def test_a_lost_encoder_ends_the_spoken_turn_with_one_response_done(stack):
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name, MINMO_GRACE_S="0")
    await stack.start_duplex()
    _, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config(text_only=True))
    await call.read()
    audio = _audio_events(utterance(seed=1))
    for event in audio[: len(audio) // 3]:
        await call.write(event)
    await _events_until(call, lambda event: TurnType.USER_SPEECH_STARTED in _turn_types([event]))
    await stack.hosts["encoder"][0].stop()
    for event in audio[len(audio) // 3 :]:
        await call.write(event)
    events = await _events_until(call, _is_latency)
    done = [event.turn_event for event in events if event.turn_event.type == TurnType.RESPONSE_DONE]
    assert len(done) == 1 and done[0].end_reason == EndReason.FAILED and done[0].error_code == "UNAVAILABLE", events
    call.cancel()


async def test_internal_services_answer_garbage_with_invalid_argument_not_internal(full_stack):
    for name, method in (
        ("llm", "/minmo.v1.Reasoner/Session"),
        ("encoder", "/minmo.v1.AudioEncoder/Encode"),
        ("voicelm", "/minmo.v1.VoiceDecoder/Synthesize"),
        ("vocoder", "/minmo.v1.Vocoder/Vocode"),
    ):
        async with grpc.aio.insecure_channel(full_stack.address(name)) as channel:
            call = channel.stream_stream(method, request_serializer=bytes, response_deserializer=bytes)()
            await call.write(b"\xff\xfe\xfd garbage")
            with pytest.raises(grpc.aio.AioRpcError) as error:
                async with asyncio.timeout(30):
                    while await call.read() is not grpc.aio.EOF:
                        pass
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.value.details())
