"""A voicelm or vocoder replica that dies while the user is hearing a reply: only that hop is reopened on another
replica, and it continues from what duplex logged (issue 13, turn-level failover). A new voicelm goes on after the
speech tokens already produced; a new vocoder is fed the logged speech tokens and resumes at the sample the client
has (VocodeConfig.resume_at_sample), passing over the audio before it. The client hears the rest of the reply once:
its audio chunks follow each other without a gap or an overlap, no error, one RESPONSE_DONE, and the history has
the whole reply."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from minmo.audio.pcm import pcm16_to_float
from minmo.session.store import Role
from minmo.v1 import common_pb2, conversation_pb2

from .test_conversation import _config, _events_until, _is_latency, _store, _text

TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
ANSWERED = (EndReason.COMPLETED, EndReason.MAX_TOKENS)
REOPENED = re.compile(r"(\w+) stream lost .*reopened on another replica after (\d+) text positions and (\d+) speech")
RATE_HZ = 24_000


def _is_audio(event: conversation_pb2.ServerEvent) -> bool:
    return event.HasField("audio_output")


PACED = {"MINMO_AUDIO_LEAD_MS": "1000", "MINMO_MAX_RESPONSE_TOKENS": "6"}  # a 4.8 s reply, fed 1 s ahead


@pytest.mark.parametrize(
    ("component", "duplex_env"), [("voicelm", {}), ("vocoder", {}), ("voicelm", PACED), ("vocoder", PACED)]
)
async def test_a_speech_hop_lost_while_the_reply_plays_continues_from_the_log(stack, component, duplex_env, caplog):
    caplog.set_level(logging.WARNING, logger="minmo.duplex.speech_hops")
    for name in ("encoder", "llm", "voicelm", "vocoder", component):
        await stack.start_model_service(name, MINMO_GRACE_S="0")
    await stack.start_duplex(**duplex_env)
    _, stub = stack.conversation()
    call = stub.Converse()
    await call.write(_config(output_sample_rate_hz=RATE_HZ))
    started = (await call.read()).session_started
    await call.write(_text("hello there"))
    before = await _events_until(call, _is_audio, timeout_s=120)
    (serving,) = [host for host in stack.hosts[component] if host.active_sessions() > 0]
    await serving.stop()  # mid-reply: the client has audio, the hop's stream and caches are gone
    events = before + await _events_until(call, _is_latency, timeout_s=120)

    done = [event.turn_event for event in events if event.turn_event.type == TurnType.RESPONSE_DONE]
    assert [event.end_reason in ANSWERED for event in done] == [True], [event.error for event in events]
    assert not any(event.HasField("error") for event in events)
    reopened = [match.groups() for match in map(REOPENED.search, caplog.messages) if match]
    assert [hop for hop, _, _ in reopened] == [component], caplog.messages
    assert int(reopened[0][2]) > 0, "the hop was lost mid-reply, with speech tokens already logged"
    (report,) = [event.latency_report for event in events if _is_latency(event)]
    assert list(report.failovers) == [component], "the turn's LatencyReport names the hop that failed over"

    audio = [event.audio_output for event in events if _is_audio(event)]
    samples = [pcm16_to_float(chunk.audio).size for chunk in audio]
    expected_starts = np.cumsum([0, *samples[:-1]]) * 1000 / RATE_HZ
    starts = np.array([chunk.start_ms for chunk in audio])
    assert np.abs(starts - expected_starts).max() <= 1, "each chunk starts where the last ended: no gap, nothing twice"

    final = [e.transcript.text for e in events if e.HasField("transcript") and e.transcript.is_final]
    history = await (await _store(stack.redis_url)).history(started.session_id)
    assert [(turn.role, turn.outcome) for turn in history] == [(Role.USER, "completed"), (Role.ASSISTANT, "completed")]
    assert history[1].text == final[-1] and final[-1], "the history has the whole reply"
    assert abs(history[1].audio_ms - 1000 * sum(samples) / RATE_HZ) <= 1, "and the audio the user got"
    pieces = [e.transcript for e in events if e.HasField("transcript") and not e.transcript.is_final]
    assert "".join(piece.text for piece in pieces if piece.role == common_pb2.ROLE_ASSISTANT) == final[-1]
    call.cancel()
