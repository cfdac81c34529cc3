"""Pacing (MINMO_AUDIO_LEAD_MS): the vocoder works at most the lead ahead of the client's real-time playback, and a
paced reply is the same audio as an unpaced one, only spread over its playback instead of sent in one burst."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from minmo.audio.pcm import PCM16_BYTES
from minmo.services.duplex.main import DuplexSettings
from minmo.serving.settings import SettingsError
from minmo.v1 import conversation_pb2

from .conftest import MODEL_SERVICES

LEAD_S = 1.0
REPLY_TOKENS = "6"  # tiny's random voice LM speaks to the bound: 6 text tokens -> 120 speech tokens, 4.8 s of audio
PCM_TOLERANCE = 2  # int16 steps: the vocoder's tokens come in other groups, so its float sums round differently
ARRIVAL_SLACK_S = 0.3  # duplex's playback clock starts at its first PCM, a little before the client's


@dataclass
class Reply:
    pcm: bytearray = field(default_factory=bytearray)
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (arrived at, audio seconds received so far)


async def _typed_reply(stack, duplex: int, text: str) -> Reply:
    _, stub = stack.conversation(duplex)
    call = stub.Converse()
    config = conversation_pb2.SessionConfig(input_sample_rate_hz=16000)
    await call.write(conversation_pb2.ClientEvent(session_config=config))
    await call.write(conversation_pb2.ClientEvent(text_input=conversation_pb2.TextInput(text=text)))
    reply = Reply()
    while (event := await call.read()) is not grpc.aio.EOF and not event.HasField("latency_report"):
        if event.HasField("audio_output"):
            reply.pcm += event.audio_output.audio
            seconds = len(reply.pcm) / PCM16_BYTES / event.audio_output.sample_rate_hz
            reply.arrivals.append((time.monotonic(), seconds))
    call.cancel()
    return reply


async def test_a_paced_reply_is_the_unpaced_audio_arriving_no_faster_than_playback_plus_the_lead(stack):
    for name in MODEL_SERVICES:
        await stack.start_model_service(name, MINMO_VOICELM_TEMPERATURE="0")  # greedy: the same reply twice
    await stack.start_duplex(MINMO_MAX_RESPONSE_TOKENS=REPLY_TOKENS)
    await stack.start_duplex(MINMO_MAX_RESPONSE_TOKENS=REPLY_TOKENS, MINMO_AUDIO_LEAD_MS=str(int(LEAD_S * 1000)))

    unpaced = await _typed_reply(stack, 0, "tell me about the sea")
    paced = await _typed_reply(stack, 1, "tell me about the sea")

    paced_pcm, unpaced_pcm = (np.frombuffer(bytes(reply.pcm), "<i2").astype(np.int32) for reply in (paced, unpaced))
    assert paced_pcm.size == unpaced_pcm.size
    assert np.abs(paced_pcm - unpaced_pcm).max() <= PCM_TOLERANCE, "pacing changes when audio is made, not what"
    duration_s = unpaced.arrivals[-1][1]
    assert duration_s > LEAD_S + 2, "the reply must be long enough for pacing to hold something back"
    started = paced.arrivals[0][0]
    for arrived, received_s in paced.arrivals:
        assert received_s <= arrived - started + LEAD_S + ARRIVAL_SLACK_S, (arrived - started, received_s)
    assert paced.arrivals[-1][0] - started >= duration_s - LEAD_S - ARRIVAL_SLACK_S, "spread over its playback"
    unpaced_spread_s = unpaced.arrivals[-1][0] - unpaced.arrivals[0][0]
    assert unpaced_spread_s < duration_s - LEAD_S - ARRIVAL_SLACK_S, "without pacing the reply comes at once"


@pytest.mark.parametrize("lead_ms", ["500", "-1"])
def test_a_lead_too_short_for_the_first_chunk_is_refused_at_start(monkeypatch, lead_ms):
    monkeypatch.setenv("MINMO_AUDIO_LEAD_MS", lead_ms)
    monkeypatch.setenv("MINMO_CONFIG", "tiny")
    with pytest.raises(SettingsError, match="MINMO_AUDIO_LEAD_MS"):
        DuplexSettings.from_env()
