"""The encoder and vocoder services keep each stream's caches in the replica (DESIGN.md §5), over real gRPC on
loopback: the bytes of every call stay flat however long the stream grows (on the wire and into the runtime),
the encoder's cache stays bounded by its left context, and however a stream ends (done, cancelled, disconnected,
refused for bad input) the replica holds no state for it afterwards.
"""

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import torch

from minmo.audio.pcm import float_to_pcm16
from minmo.model.build import build_component
from minmo.model.config import MinMoConfig, load_config
from minmo.runtime.base import Sequence, TensorMap
from minmo.runtime.local import LocalRuntime
from minmo.runtime.models import EncoderModel
from minmo.runtime.token2wav_model import Token2WavModel
from minmo.services.encoder.servicer import AudioEncoderServicer
from minmo.services.vocoder.servicer import VocoderServicer
from minmo.serving.server import ServiceHost, SessionLimiter
from minmo.serving.settings import ServerSettings
from minmo.telemetry import Telemetry, start_telemetry
from minmo.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, vocoder_pb2, vocoder_pb2_grpc

UTTERANCE_S = 60
CHUNK_SAMPLES = 10240  # 640 ms at 16 kHz per Encode message
BLOCK = 15  # speech tokens per message, as the voice LM delivers them
TURN_TOKENS = 180  # a 7.2 s reply
CHUNK_AUDIO_BYTES = 25 * 960 * 2  # PCM16 of one 25-token token2wav chunk: the most one response may carry
FRAMING_BYTES = 32  # field tags, lengths and varints around a message's payload (a growing position adds one)
WAIT_S = 5.0
SESSIONS = 2
MAX_CHUNK_MS = 2000
MAX_TOKENS_PER_MESSAGE = 500


class MeteredRuntime(LocalRuntime):
    """The in-process runtime, recording the tensor bytes that cross it on every call (a Triton hop's payload)."""

    def __init__(self, models) -> None:
        super().__init__(models)
        self.calls: list[tuple[int, int]] = []  # (input bytes, output bytes) per call

    async def infer(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None, steady: bool = False
    ) -> TensorMap:
        outputs = await super().infer(model, inputs, sequence, steady)
        self.calls.append((_nbytes(inputs), _nbytes(outputs)))
        return outputs


def _nbytes(tensors: TensorMap) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def _state_bytes(runtime: LocalRuntime, model: str) -> int:
    """Bytes of the one live stream's state in the replica, as the old design shipped it with every call."""
    (state,) = runtime.live_sequences(model).values()
    return len(state.to_bytes())


@pytest.fixture(scope="module")
def cfg() -> MinMoConfig:
    return load_config("tiny")


async def _serve(servicer, register, name: str, telemetry: Telemetry) -> tuple[ServiceHost, str]:
    host = ServiceHost(ServerSettings(port=0, max_sessions=SESSIONS, model_config="tiny", grace_s=1.0), telemetry)
    host.add(register, servicer, f"minmo.v1.{name}")
    await host.start()
    await host.set_serving()
    return host, f"127.0.0.1:{host.port}"


@pytest.fixture
async def encoder(cfg: MinMoConfig) -> AsyncIterator[tuple[encoder_pb2_grpc.AudioEncoderStub, MeteredRuntime, str]]:
    runtime = MeteredRuntime([EncoderModel(build_component(cfg, "speech_encoder"))])
    telemetry = start_telemetry("test-encoder", ServerSettings(port=0))
    servicer = AudioEncoderServicer(runtime, SessionLimiter(SESSIONS), MAX_CHUNK_MS, telemetry)
    host, address = await _serve(
        servicer, encoder_pb2_grpc.add_AudioEncoderServicer_to_server, "AudioEncoder", telemetry
    )
    channel = grpc.aio.insecure_channel(address)
    try:
        yield encoder_pb2_grpc.AudioEncoderStub(channel), runtime, address
    finally:
        await channel.close()
        await host.stop()
        await runtime.close()


@pytest.fixture
async def vocoder(cfg: MinMoConfig) -> AsyncIterator[tuple[vocoder_pb2_grpc.VocoderStub, MeteredRuntime, str]]:
    runtime = MeteredRuntime([Token2WavModel(build_component(cfg, "token2wav"))])
    telemetry = start_telemetry("test-vocoder", ServerSettings(port=0))
    servicer = VocoderServicer(runtime, SessionLimiter(SESSIONS), MAX_TOKENS_PER_MESSAGE, telemetry)
    host, address = await _serve(servicer, vocoder_pb2_grpc.add_VocoderServicer_to_server, "Vocoder", telemetry)
    channel = grpc.aio.insecure_channel(address)
    try:
        yield vocoder_pb2_grpc.VocoderStub(channel), runtime, address
    finally:
        await channel.close()
        await host.stop()
        await runtime.close()


def _encode_config() -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(config=encoder_pb2.EncodeConfig(session_id="s1", sample_rate_hz=16000))


def _audio(samples: np.ndarray) -> encoder_pb2.EncodeRequest:
    chunk = encoder_pb2.EncodeAudioChunk(audio=float_to_pcm16(samples), turn_id="t1")
    return encoder_pb2.EncodeRequest(audio_chunk=chunk)


def _speech(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))).astype(np.float32)


def _vocode_config() -> vocoder_pb2.VocodeRequest:
    return vocoder_pb2.VocodeRequest(config=vocoder_pb2.VocodeConfig(session_id="s1", turn_id="t1"))


def _tokens(ids: list[int], first_index: int) -> vocoder_pb2.VocodeRequest:
    return vocoder_pb2.VocodeRequest(speech_tokens=common_pb2.SpeechTokens(ids=ids, first_index=first_index))


def _speech_tokens(cfg: MinMoConfig, count: int) -> list[int]:
    return torch.randint(0, cfg.flow.speech_vocab, (count,), generator=torch.Generator().manual_seed(5)).tolist()


async def _released(runtime: LocalRuntime, model: str) -> bool:
    """Whether the replica drops every state of `model` within WAIT_S (a cancellation reaches it asynchronously)."""
    for _ in range(int(WAIT_S / 0.02)):
        if not runtime.live_sequences(model):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_encoder_bytes_per_call_stay_flat_over_a_60_s_utterance(encoder) -> None:
    stub, runtime, _ = encoder
    pcm = _speech(UTTERANCE_S)
    chunks = [pcm[start : start + CHUNK_SAMPLES] for start in range(0, pcm.shape[0], CHUNK_SAMPLES)]
    call = stub.Encode()
    await call.write(_encode_config())
    request_bytes, response_bytes, state_bytes = [], [], []
    for chunk in chunks:
        request = _audio(chunk)
        request_bytes.append(request.ByteSize())
        await call.write(request)
        response = await call.read()
        assert response.HasField("embeddings"), "every 640 ms chunk completes encoder chunks"
        response_bytes.append(response.ByteSize())
        state_bytes.append(_state_bytes(runtime, "encoder"))
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF

    whole = [index for index, chunk in enumerate(chunks) if chunk.shape[0] == CHUNK_SAMPLES]
    assert len(set(request_bytes[index] for index in whole)) == 1, "the client sends equal chunks"
    later = [response_bytes[index] for index in whole[1:]]
    assert max(later) - min(later) <= FRAMING_BYTES, f"response bytes {sorted(later)}"
    inputs = {runtime.calls[index][0] for index in whole}
    outputs = {runtime.calls[index][1] for index in whole[1:]}
    assert inputs == {CHUNK_SAMPLES * 4 + 1}, "a call carries the chunk's float PCM and the flush flag, nothing else"
    assert len(outputs) == 1, f"every later call returns the same number of embeddings: {sorted(outputs)}"
    ten_s = 10_000 // 640
    assert state_bytes[-1] == state_bytes[ten_s], (
        f"the replica's cache is bounded by the left context: {state_bytes[ten_s]} bytes at 10 s, "
        f"{state_bytes[-1]} at {UTTERANCE_S} s"
    )
    assert await _released(runtime, "encoder"), "the stream ended: the replica drops the session's cache"


async def test_vocoder_bytes_per_call_stay_flat_over_a_long_turn(vocoder, cfg: MinMoConfig) -> None:
    stub, runtime, _ = vocoder
    ids = _speech_tokens(cfg, TURN_TOKENS)
    requests = [_vocode_config()]
    requests += [_tokens(ids[first : first + BLOCK], first) for first in range(0, TURN_TOKENS, BLOCK)]
    requests.append(vocoder_pb2.VocodeRequest(flush=vocoder_pb2.Flush(total_tokens=TURN_TOKENS)))
    responses = [response async for response in stub.Vocode(iter(requests))]

    assert responses[-1].vocode_done.total_samples == TURN_TOKENS * 960
    id_bytes = 2  # a speech token id < 6561 is a varint of at most 2 bytes
    assert max(request.ByteSize() for request in requests[1:]) <= BLOCK * id_bytes + FRAMING_BYTES
    chunk_limit = CHUNK_AUDIO_BYTES + FRAMING_BYTES
    assert max(response.ByteSize() for response in responses[:-2]) <= chunk_limit, "one chunk's audio per response"
    token_calls = runtime.calls[:-1]
    assert {inputs for inputs, _ in token_calls} == {BLOCK * 8 + 1}, "a call carries its 15 token ids and a flag"
    assert max(outputs for _, outputs in token_calls) <= CHUNK_AUDIO_BYTES * 2, "one chunk's float PCM at most"
    assert runtime.live_sequences("token2wav") == {}, "the flush ended the turn's sequence"


async def test_a_resumed_vocoder_stream_rebuilds_in_one_call(vocoder, cfg: MinMoConfig) -> None:
    """A failover's stream is sent the whole turn again: the tokens whose audio lies before its resume point go to
    the model in one call, with the first block that reaches past it (streams failing over together then rebuild
    in turn, not in alternating pieces); the blocks after it go one call each, and the audio starts at the point."""
    stub, runtime, _ = vocoder
    ids = _speech_tokens(cfg, TURN_TOKENS)
    resume = 100 * 960 + 17  # blocks of 15 reach past it with the 7th (tokens 90-104)
    config = _vocode_config()
    config.config.resume_at_sample = resume
    requests = [config, *(_tokens(ids[first : first + BLOCK], first) for first in range(0, TURN_TOKENS, BLOCK))]
    requests.append(vocoder_pb2.VocodeRequest(flush=vocoder_pb2.Flush(total_tokens=TURN_TOKENS)))
    responses = [response async for response in stub.Vocode(iter(requests))]

    assert responses[0].pcm_chunk.start_sample == resume
    assert responses[-1].vocode_done.total_samples == TURN_TOKENS * 960
    calls = [inputs for inputs, _ in runtime.calls]
    resume_input = 8  # the first call also carries `resume_samples` (int64)
    assert calls[0] == 105 * 8 + 1 + resume_input, "every token up to the block past the resume point, in one call"
    assert calls[1:-1] == [BLOCK * 8 + 1] * ((TURN_TOKENS - 105) // BLOCK), "then a call per block"
    assert len(calls) == 1 + (TURN_TOKENS - 105) // BLOCK + 1, "and the flush"


async def test_encoder_state_is_dropped_when_a_stream_is_cancelled_or_disconnects(encoder) -> None:
    stub, runtime, address = encoder
    call = stub.Encode()
    await call.write(_encode_config())
    await call.write(_audio(_speech(0.64)))
    assert (await call.read()).HasField("embeddings")
    assert len(runtime.live_sequences("encoder")) == 1
    call.cancel()
    assert await _released(runtime, "encoder"), "a cancelled stream leaves no state in the replica"

    other = grpc.aio.insecure_channel(address)
    call = encoder_pb2_grpc.AudioEncoderStub(other).Encode()
    await call.write(_encode_config())
    await call.write(_audio(_speech(0.64)))
    assert (await call.read()).HasField("embeddings")
    await other.close()  # the client goes away without ending its stream
    assert await _released(runtime, "encoder"), "a disconnected client leaves no state in the replica"


async def test_encoder_bad_input_mid_stream_is_invalid_argument_and_drops_the_state(encoder) -> None:
    stub, runtime, _ = encoder
    call = stub.Encode()
    await call.write(_encode_config())
    await call.write(_audio(_speech(0.64)))
    assert (await call.read()).HasField("embeddings")
    await call.write(encoder_pb2.EncodeRequest(audio_chunk=encoder_pb2.EncodeAudioChunk(audio=b"\0" * 301)))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _released(runtime, "encoder")


async def test_vocoder_state_is_dropped_when_a_turn_is_cancelled_or_disconnects(vocoder, cfg: MinMoConfig) -> None:
    stub, runtime, address = vocoder
    ids = _speech_tokens(cfg, 2 * BLOCK)
    call = stub.Vocode()
    await call.write(_vocode_config())
    await call.write(_tokens(ids[:BLOCK], 0))
    await call.write(_tokens(ids[BLOCK:], BLOCK))
    assert (await call.read()).HasField("pcm_chunk")
    assert len(runtime.live_sequences("token2wav")) == 1
    call.cancel()  # barge-in
    assert await _released(runtime, "token2wav"), "a cancelled turn leaves no state in the replica"

    other = grpc.aio.insecure_channel(address)
    call = vocoder_pb2_grpc.VocoderStub(other).Vocode()
    await call.write(_vocode_config())
    await call.write(_tokens(ids, 0))
    assert (await call.read()).HasField("pcm_chunk")
    await other.close()
    assert await _released(runtime, "token2wav"), "a disconnected client leaves no state in the replica"


async def test_vocoder_bad_token_mid_turn_is_invalid_argument_and_drops_the_state(vocoder, cfg: MinMoConfig) -> None:
    stub, runtime, _ = vocoder
    call = stub.Vocode()
    await call.write(_vocode_config())
    await call.write(_tokens(_speech_tokens(cfg, BLOCK), 0))
    await call.write(_tokens([cfg.flow.speech_vocab + 1] * BLOCK, BLOCK))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "speech token ids" in error.value.details()
    assert await _released(runtime, "token2wav")
