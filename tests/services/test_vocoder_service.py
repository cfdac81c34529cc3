"""The vocoder service over real gRPC on loopback: streaming == offline, audio before Flush, bad input,
limits, cancellation, health.

Tolerance: the streamed float PCM equals the offline `Token2Wav.forward` within ~1e-7 (see
test_token2wav); both are quantised to PCM16 here, and a difference that small can only flip the
rounding of a sample that sits on a rounding boundary, so samples may differ by one PCM16 step
(1/32768) and by no more.
"""

import asyncio

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minmo.audio.pcm import PCM16_DTYPE, float_to_pcm16
from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.services.vocoder.main import VocoderSettings, start
from minmo.serving.settings import ServerSettings
from minmo.v1 import common_pb2, vocoder_pb2, vocoder_pb2_grpc

BLOCK = 15  # speech tokens per message, as the voice LM delivers them
TOKENS = 75  # 3 s of audio
SAMPLES_PER_TOKEN = 960  # 24 kHz / 25 Hz
SECOND = 24000  # one 25-token chunk of audio, in samples
MAX_TOKENS = 500
READ_TIMEOUT_S = 10.0  # a chunk that never comes fails the test instead of hanging it


def _settings(max_sessions: int = 4) -> VocoderSettings:
    server = ServerSettings(port=0, max_sessions=max_sessions, model_config="tiny", grace_s=1.0)
    return VocoderSettings(server=server, max_tokens_per_message=MAX_TOKENS, checkpoint=None)


@pytest.fixture
async def vocoder_stub(request):
    host = await start(getattr(request, "param", None) or _settings())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield vocoder_pb2_grpc.VocoderStub(channel), channel
    finally:
        await channel.close()
        await host.stop()


def _config(rate: int = 24000, resume_at_sample: int = 0) -> vocoder_pb2.VocodeRequest:
    return vocoder_pb2.VocodeRequest(
        config=vocoder_pb2.VocodeConfig(
            session_id="s1", turn_id="t1", sample_rate_hz=rate, resume_at_sample=resume_at_sample
        )
    )


def _tokens(ids, first_index: int = 0) -> vocoder_pb2.VocodeRequest:
    return vocoder_pb2.VocodeRequest(speech_tokens=common_pb2.SpeechTokens(ids=list(ids), first_index=first_index))


def _flush(total: int) -> vocoder_pb2.VocodeRequest:
    return vocoder_pb2.VocodeRequest(flush=vocoder_pb2.Flush(total_tokens=total))


def _speech_tokens(count: int = TOKENS) -> list[int]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, load_config("tiny").flow.speech_vocab, (count,), generator=generator).tolist()


def _samples(chunk: vocoder_pb2.PcmChunk) -> np.ndarray:
    return np.frombuffer(chunk.audio, dtype=PCM16_DTYPE).astype(np.int32)


def _first_audio_samples() -> int:
    """Samples the first flow chunk (15 tokens) yields: the vocoder holds back its receptive field."""
    held_frames = build_component(load_config("tiny"), "token2wav").hift.context_frames
    return 15 * SAMPLES_PER_TOKEN - held_frames * SAMPLES_PER_TOKEN // 2


async def _read_chunk(call) -> vocoder_pb2.PcmChunk:
    response = await asyncio.wait_for(call.read(), READ_TIMEOUT_S)
    assert response.HasField("pcm_chunk"), f"expected a PcmChunk, got {response}"
    return response.pcm_chunk


async def test_streamed_pcm_equals_offline_token2wav_and_arrives_before_flush(vocoder_stub):
    stub, _ = vocoder_stub
    ids = _speech_tokens()
    call = stub.Vocode()
    await call.write(_config())
    chunks = []
    for first in range(0, TOKENS, BLOCK):
        await call.write(_tokens(ids[first : first + BLOCK], first))
        if first + BLOCK in (30, 45, 75):  # chunks of 15, 25, 25 tokens are final once 3 lookahead tokens are in
            chunks.append(await _read_chunk(call))
    first_audio = _first_audio_samples()
    assert [c.start_sample for c in chunks] == [0, first_audio, first_audio + SECOND], "audio per chunk, before Flush"
    await call.write(_flush(TOKENS))
    chunks.append(await _read_chunk(call))
    done = (await call.read()).vocode_done
    assert await call.read() == grpc.aio.EOF, "the server ends the stream after VocodeDone"

    streamed = np.concatenate([_samples(c) for c in chunks])
    token2wav = build_component(load_config("tiny"), "token2wav")
    with torch.no_grad():
        offline = token2wav(torch.tensor([ids]))[0].numpy()
    expected = np.frombuffer(float_to_pcm16(offline), dtype=PCM16_DTYPE).astype(np.int32)
    assert streamed.shape == expected.shape == (TOKENS * SAMPLES_PER_TOKEN,)
    assert np.abs(streamed - expected).max() <= 1, "at most one PCM16 step of rounding difference"
    assert chunks[-1].start_sample == first_audio + 2 * SECOND
    assert done.total_samples == TOKENS * SAMPLES_PER_TOKEN
    assert done.first_chunk_ms > 0 and done.compute_ms > 0
    assert all(c.compute_ms > 0 for c in chunks)


async def _whole_turn(stub, ids: list[int], resume_at_sample: int = 0) -> tuple[list[vocoder_pb2.PcmChunk], int]:
    """Every chunk of one Vocode call fed `ids` in the voice LM's blocks, and VocodeDone's total_samples."""
    requests = [_config(resume_at_sample=resume_at_sample)]
    requests += [_tokens(ids[first : first + BLOCK], first) for first in range(0, len(ids), BLOCK)]
    responses = [response async for response in stub.Vocode(iter([*requests, _flush(len(ids))]))]
    return [response.pcm_chunk for response in responses[:-1]], responses[-1].vocode_done.total_samples


async def test_a_resumed_turn_starts_at_its_resume_point_with_the_unbroken_turns_audio(vocoder_stub):
    """A failover's Vocode call: every token again, but only the audio the caller does not have yet."""
    stub, _ = vocoder_stub
    ids = _speech_tokens()
    whole, whole_total = await _whole_turn(stub, ids)
    resume = SECOND + 1234  # mid-chunk, mid-frame
    resumed, total = await _whole_turn(stub, ids, resume_at_sample=resume)
    assert resumed[0].start_sample == resume, "the first chunk starts at the resume point"
    assert [c.start_sample for c in resumed[1:]] == [
        c.start_sample + len(c.audio) // 2 for c in resumed[:-1]
    ], "then chunk after chunk with no gap"
    expected = np.concatenate([_samples(c) for c in whole])[resume:]
    assert np.abs(np.concatenate([_samples(c) for c in resumed]) - expected).max() <= 1
    assert total == whole_total == TOKENS * SAMPLES_PER_TOKEN, "VocodeDone counts the whole turn"


async def _status_of(stub, requests) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stub.Vocode(iter(requests)):
            pass
    return error.value.code(), error.value.details()


BAD_INPUTS = {
    "tokens-before-config": ([_tokens([1, 2, 3])], grpc.StatusCode.INVALID_ARGUMENT, "config"),
    "wrong-sample-rate": ([_config(16000)], grpc.StatusCode.INVALID_ARGUMENT, "24000"),
    "negative-resume": ([_config(resume_at_sample=-1)], grpc.StatusCode.INVALID_ARGUMENT, "resume_at_sample"),
    "id-too-large": ([_config(), _tokens([5, 6561])], grpc.StatusCode.INVALID_ARGUMENT, "[0, 6561)"),
    "negative-id": ([_config(), _tokens([-1])], grpc.StatusCode.INVALID_ARGUMENT, "[0, 6561)"),
    "too-many-tokens": ([_config(), _tokens([0] * (MAX_TOKENS + 1))], grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
    "gap-in-tokens": ([_config(), _tokens([1] * BLOCK), _tokens([1], 20)], grpc.StatusCode.INVALID_ARGUMENT, "order"),
    "flush-count-mismatch": ([_config(), _tokens([1] * BLOCK), _flush(30)], grpc.StatusCode.INVALID_ARGUMENT, "30"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
async def test_bad_input_gets_a_clear_status_and_a_concurrent_stream_is_unaffected(vocoder_stub, case):
    stub, _ = vocoder_stub
    requests, expected_code, expected_text = case
    ids = _speech_tokens(2 * BLOCK)
    healthy = stub.Vocode()
    await healthy.write(_config(0))  # 0 means 24 kHz
    await healthy.write(_tokens(ids[:BLOCK]))
    code, details = await _status_of(stub, requests)
    assert code == expected_code and expected_text in details, details
    await healthy.write(_tokens(ids[BLOCK:], BLOCK))
    chunk = await _read_chunk(healthy)
    assert chunk.start_sample == 0 and len(chunk.audio) == 2 * _first_audio_samples()  # PCM16: 2 bytes a sample
    healthy.cancel()


@pytest.mark.parametrize("vocoder_stub", [_settings(max_sessions=1)], indirect=True)
async def test_session_flood_is_refused_without_hurting_the_admitted_session(vocoder_stub):
    stub, _ = vocoder_stub
    ids = _speech_tokens(2 * BLOCK)
    healthy = stub.Vocode()
    await healthy.write(_config())
    await healthy.write(_tokens(ids[:BLOCK]))
    code, details = await _status_of(stub, [_config()])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 1" in details
    await healthy.write(_tokens(ids[BLOCK:], BLOCK))
    assert (await _read_chunk(healthy)).start_sample == 0, "the admitted session keeps working"
    await healthy.write(_flush(2 * BLOCK))
    await _read_chunk(healthy)
    assert (await healthy.read()).vocode_done.total_samples == 2 * BLOCK * SAMPLES_PER_TOKEN


@pytest.mark.parametrize("vocoder_stub", [_settings(max_sessions=1)], indirect=True)
async def test_cancelled_stream_frees_its_session_slot(vocoder_stub):
    stub, _ = vocoder_stub
    ids = _speech_tokens(2 * BLOCK)
    call = stub.Vocode()
    await call.write(_config())
    await call.write(_tokens(ids[:BLOCK]))
    await call.write(_tokens(ids[BLOCK:], BLOCK))
    await _read_chunk(call)  # the stream holds the only slot now
    call.cancel()
    for _ in range(50):  # the server notices the cancellation asynchronously
        await asyncio.sleep(0.02)
        second = stub.Vocode()
        await second.write(_config())
        await second.write(_flush(0))
        try:
            assert (await second.read()).HasField("vocode_done")
            return
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    pytest.fail("the cancelled session's slot was never freed")


async def test_health_reports_serving_after_start(vocoder_stub):
    _, channel = vocoder_stub
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "minmo.v1.Vocoder"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
