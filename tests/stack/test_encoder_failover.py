"""The encoder keeps each session's caches in its replica; when that replica dies mid-utterance, duplex replays
the utterance on another replica from what it kept (issue 13, turn-level failover), and the user's turn is
answered as if nothing happened: no error, one RESPONSE_DONE, the reply's audio in order."""

from __future__ import annotations

import asyncio

from minmo.audio.synthetic import utterance
from minmo.v1 import conversation_pb2

from .test_conversation import _audio_events, _config, _events_until, _is_latency

TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
ANSWERED = (EndReason.COMPLETED, EndReason.MAX_TOKENS)


def _is_speech_started(event: conversation_pb2.ServerEvent) -> bool:
    return event.HasField("turn_event") and event.turn_event.type == TurnType.USER_SPEECH_STARTED


async def test_an_encoder_replica_lost_mid_utterance_is_replayed_and_the_turn_is_answered(stack):
    for name in ("encoder", "encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name, MINMO_GRACE_S="0")
    duplex = await stack.start_duplex()
    _, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    await call.read()
    chunks = _audio_events(utterance(seed=1))  # 0.5 s lead, 1.5 s of speech, 1 s tail
    middle = len(chunks) // 2
    for chunk in chunks[:middle]:
        await call.write(chunk)
    before = await _events_until(call, _is_speech_started)
    (serving,) = [host for host in stack.hosts["encoder"] if host.active_sessions() > 0]
    await asyncio.sleep(0.3)  # the speech so far reaches the encoder
    await serving.stop()  # mid-utterance: its stream and the session's encoder caches are gone
    for chunk in chunks[middle:]:
        await call.write(chunk)
    events = before + await _events_until(call, _is_latency, timeout_s=120)

    done = [event.turn_event for event in events if event.turn_event.type == TurnType.RESPONSE_DONE]
    assert [event.end_reason in ANSWERED for event in done] == [True], [event.error for event in events]
    assert not any(event.HasField("error") for event in events)
    starts = [event.audio_output.start_ms for event in events if event.HasField("audio_output")]
    assert starts and starts == sorted(starts)
    (other,) = [host for host in stack.hosts["encoder"] if host is not serving]
    assert other.active_sessions() == 1, "the session's encoder stream now lives on the other replica"
    (report,) = [event.latency_report for event in events if _is_latency(event)]
    assert list(report.failovers) == ["encoder"], "the turn's LatencyReport names the hop that failed over"
    call.cancel()
    assert duplex.active_sessions() <= 1
