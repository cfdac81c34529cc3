"""The encoder service over real gRPC on loopback: streaming == offline, bad input, limits, cancellation."""

import asyncio

import grpc
import numpy as np
import pytest
import torch

from minmo.api.tensors import tensor_from_proto
from minmo.audio.pcm import float_to_pcm16, pcm16_to_float
from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.services.encoder.main import EncoderSettings, start
from minmo.serving.settings import ServerSettings
from minmo.v1 import encoder_pb2, encoder_pb2_grpc

CHUNK = 2560  # 160 ms at 16 kHz


def _settings(max_sessions: int = 4) -> EncoderSettings:
    server = ServerSettings(port=0, max_sessions=max_sessions, model_config="tiny", grace_s=1.0)
    return EncoderSettings(server=server, max_chunk_ms=2000, checkpoint=None)


@pytest.fixture
async def encoder_stub(request):
    host = await start(getattr(request, "param", None) or _settings())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield encoder_pb2_grpc.AudioEncoderStub(channel), host
    finally:
        await channel.close()
        await host.stop()


def _config(rate: int = 16000) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(config=encoder_pb2.EncodeConfig(session_id="s1", sample_rate_hz=rate))


def _audio(data: bytes) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(audio_chunk=encoder_pb2.EncodeAudioChunk(audio=data, turn_id="t1"))


def _speechlike(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.mark.parametrize("tail_with_flush", [False, True], ids=["flush-alone", "last-chunk-in-flush"])
async def test_streamed_embeddings_equal_the_offline_encoder(encoder_stub, tail_with_flush):
    """Also when the utterance's last samples ride on its EndOfUtterance (as duplex sends them)."""
    stub, _ = encoder_stub
    pcm16 = float_to_pcm16(_speechlike(1.3))
    pieces16 = [pcm16[i : i + 2 * CHUNK] for i in range(0, len(pcm16), 2 * CHUNK)]
    tail = pieces16.pop() if tail_with_flush else b""
    requests = [_config()] + [_audio(piece) for piece in pieces16]
    end = encoder_pb2.EndOfUtterance(turn_id="t1", audio=tail)
    requests.append(encoder_pb2.EncodeRequest(end_of_utterance=end))
    pieces, flush_done = [], None
    async for response in stub.Encode(iter(requests)):
        if response.HasField("embeddings"):
            assert response.embeddings.start_position == sum(p.shape[0] for p in pieces)
            pieces.append(tensor_from_proto(response.embeddings.embeddings))
        else:
            flush_done = response.flush_done
    streamed = torch.cat(pieces)
    encoder = build_component(load_config("tiny"), "speech_encoder")
    with torch.no_grad():
        offline = encoder(torch.from_numpy(pcm16_to_float(pcm16)))[0]
    assert len(pieces) > 2, "embeddings must stream back chunk by chunk"
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)
    assert flush_done.end_position == offline.shape[0]


async def _status_of(stub, requests) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stub.Encode(iter(requests)):
            pass
    return error.value.code(), error.value.details()


async def test_audio_before_config_is_invalid(encoder_stub):
    code, details = await _status_of(encoder_stub[0], [_audio(b"\0\0" * 100)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "config" in details


async def test_wrong_sample_rate_is_invalid(encoder_stub):
    code, details = await _status_of(encoder_stub[0], [_config(8000)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "16000" in details


async def test_odd_byte_count_is_invalid(encoder_stub):
    code, _details = await _status_of(encoder_stub[0], [_config(), _audio(b"\0" * 301)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    end = encoder_pb2.EndOfUtterance(turn_id="t1", audio=b"\0" * 301)
    code, _details = await _status_of(encoder_stub[0], [_config(), encoder_pb2.EncodeRequest(end_of_utterance=end)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_oversized_chunk_is_refused(encoder_stub):
    code, details = await _status_of(encoder_stub[0], [_config(), _audio(b"\0\0" * 16000 * 3)])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in details


@pytest.mark.parametrize("encoder_stub", [_settings(max_sessions=1)], indirect=True)
async def test_session_flood_is_refused_without_hurting_the_admitted_session(encoder_stub):
    stub, _host = encoder_stub
    healthy = stub.Encode()
    await healthy.write(_config())
    await healthy.write(_audio(float_to_pcm16(_speechlike(0.5))))
    first = await healthy.read()
    assert first.HasField("embeddings")
    code, details = await _status_of(stub, [_config()])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 1" in details
    await healthy.write(_audio(float_to_pcm16(_speechlike(0.5))))
    assert (await healthy.read()).HasField("embeddings"), "the admitted session keeps working"
    await healthy.done_writing()


@pytest.mark.parametrize("encoder_stub", [_settings(max_sessions=1)], indirect=True)
async def test_cancelled_stream_frees_its_session_slot(encoder_stub):
    stub, _host = encoder_stub
    call = stub.Encode()
    await call.write(_config())
    await call.write(_audio(float_to_pcm16(_speechlike(0.5))))
    await call.read()
    call.cancel()
    for _ in range(50):  # the server notices the cancellation asynchronously
        await asyncio.sleep(0.02)
        second = stub.Encode()
        await second.write(_config())
        await second.write(_audio(float_to_pcm16(_speechlike(0.5))))
        try:
            assert (await second.read()).HasField("embeddings")
            second.cancel()
            return
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    pytest.fail("the cancelled session's slot was never freed")

