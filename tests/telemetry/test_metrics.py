"""Every service serves Prometheus metrics on its own port; a turn shows up in all five."""

from __future__ import annotations

import grpc
from stack.test_conversation import _config

from minmo.audio.synthetic import utterance
from minmo.client.chat import ChatRequest, run_chat
from minmo.client.wav import InputAudio
from minmo.v1 import vocoder_pb2, vocoder_pb2_grpc

from .conftest import scrape

TURN_OPERATION = {
    "duplex": "duplex.turn",
    "encoder": "encoder.utterance",
    "llm": "llm.generate",
    "voicelm": "voicelm.synthesize",
    "vocoder": "vocoder.vocode",
}
FIRST_LATENCY = {  # the time-to-first histogram each service fills
    "duplex": "minmo_time_to_first_audio_seconds",
    "llm": "minmo_time_to_first_token_seconds",
    "voicelm": "minmo_time_to_first_speech_tokens_seconds",
    "vocoder": "minmo_time_to_first_audio_seconds",
}


def _value(samples: list, name: str, **labels: str) -> float:
    matching = [sample.value for sample in samples if sample.name == name and labels.items() <= sample.labels.items()]
    return sum(matching)


async def test_a_turn_is_counted_by_every_service(full_stack):
    urls = {name: hosts[0].telemetry.metrics_url for name, hosts in full_stack.hosts.items()}
    assert len(set(urls.values())) == 5, "each service has its own metrics port"
    request = ChatRequest(audio=InputAudio(utterance(seed=2), 16000), realtime=False, timeout_s=120)
    result = await run_chat(full_stack.address("duplex"), request)
    assert result.problems() == []

    for name, url in urls.items():
        families = await scrape(url)
        turns = families["minmo_turns"]
        ok = _value(turns, "minmo_turns_total", operation=TURN_OPERATION[name], outcome="ok")
        assert ok == 1, f"{name}: {turns}"
        if name in FIRST_LATENCY:
            histogram = FIRST_LATENCY[name]
            assert _value(families[histogram], histogram + "_count") == 1, name
        assert "minmo_active_sessions" in families and "minmo_errors" in families
    duplex = await scrape(urls["duplex"])
    assert _value(duplex["minmo_hop_latency_seconds"], "minmo_hop_latency_seconds_count", hop="vocoder") == 2
    assert _value((await scrape(urls["vocoder"]))["minmo_rtf"], "minmo_rtf_count") == 1


async def test_active_sessions_and_errors_by_code(full_stack):
    duplex_url = full_stack.hosts["duplex"][0].telemetry.metrics_url
    _, stub = full_stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    await call.read()
    assert (await scrape(duplex_url))["minmo_active_sessions"][0].value == 1
    call.cancel()

    async with grpc.aio.insecure_channel(full_stack.address("vocoder")) as channel:
        bad = vocoder_pb2_grpc.VocoderStub(channel).Vocode()
        await bad.write(vocoder_pb2.VocodeRequest(flush=vocoder_pb2.Flush()))  # no config first
        assert await bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    errors = (await scrape(full_stack.hosts["vocoder"][0].telemetry.metrics_url))["minmo_errors"]
    assert _value(errors, "minmo_errors_total", code="INVALID_ARGUMENT") == 1
