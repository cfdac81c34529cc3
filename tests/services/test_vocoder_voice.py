"""The vocoder speaks in the voice VocodeConfig.voice describes (CosyVoice 2 zero-shot conditioning of the flow),
over real gRPC on loopback with the tiny config: the streamed PCM equals offline `Token2Wav.forward` with the same
speaker and prompt, a different prompt gives different audio, and malformed conditioning is INVALID_ARGUMENT.
"""

import grpc
import numpy as np
import pytest
import torch

from minmo.api.tensors import tensor_to_proto
from minmo.audio.pcm import PCM16_DTYPE, float_to_pcm16
from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.runtime.token2wav_model import MAX_PROMPT_TOKENS
from minmo.services.vocoder.main import VocoderSettings, start
from minmo.serving.settings import ServerSettings
from minmo.v1 import common_pb2, vocoder_pb2, vocoder_pb2_grpc

CFG = load_config("tiny")
TOKENS = 45  # 1.8 s of speech
PROMPT_TOKENS = 20  # 0.8 s of prompt
BLOCK = 15


@pytest.fixture(scope="module")
def token2wav():
    return build_component(CFG, "token2wav")


@pytest.fixture
async def stub():
    server = ServerSettings(port=0, max_sessions=4, model_config="tiny", grace_s=1.0)
    host = await start(VocoderSettings(server=server, max_tokens_per_message=500, checkpoint=None))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield vocoder_pb2_grpc.VocoderStub(channel)
    finally:
        await channel.close()
        await host.stop()


def _voice(seed: int) -> dict[str, torch.Tensor]:
    """A speaker x-vector and a prompt (tokens + their mel), as a deployment derives them from a recording."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "speaker": torch.randn(CFG.flow.spk_embed_dim, generator=generator),
        "prompt_tokens": torch.randint(0, CFG.flow.speech_vocab, (PROMPT_TOKENS,), generator=generator),
        "prompt_mel": torch.randn(CFG.flow.mel_bins, PROMPT_TOKENS * CFG.flow.token_mel_ratio, generator=generator),
    }


def _conditioning(voice: dict[str, torch.Tensor]) -> vocoder_pb2.VoiceConditioning:
    return vocoder_pb2.VoiceConditioning(
        speaker_embedding=tensor_to_proto(voice["speaker"]),
        prompt_speech_tokens=voice["prompt_tokens"].tolist(),
        prompt_mel=tensor_to_proto(voice["prompt_mel"]),
    )


def _requests(ids: list[int], voice: vocoder_pb2.VoiceConditioning | None) -> list[vocoder_pb2.VocodeRequest]:
    config = vocoder_pb2.VocodeConfig(session_id="s1", turn_id="t1", sample_rate_hz=24000, voice=voice)
    chunks = [
        vocoder_pb2.VocodeRequest(speech_tokens=common_pb2.SpeechTokens(ids=ids[i : i + BLOCK], first_index=i))
        for i in range(0, len(ids), BLOCK)
    ]
    return [
        vocoder_pb2.VocodeRequest(config=config),
        *chunks,
        vocoder_pb2.VocodeRequest(flush=vocoder_pb2.Flush(total_tokens=len(ids))),
    ]


async def _vocode(stub, ids: list[int], voice: vocoder_pb2.VoiceConditioning | None) -> np.ndarray:
    pieces = [r.pcm_chunk.audio async for r in stub.Vocode(iter(_requests(ids, voice))) if r.HasField("pcm_chunk")]
    return np.frombuffer(b"".join(pieces), dtype=PCM16_DTYPE).astype(np.int32)


def _ids() -> list[int]:
    return torch.randint(0, CFG.flow.speech_vocab, (TOKENS,), generator=torch.Generator().manual_seed(3)).tolist()


async def test_prompt_voice_conditions_the_flow_and_streaming_equals_offline(stub, token2wav):
    ids = _ids()
    voice_a, voice_b = _voice(1), _voice(2)
    plain = await _vocode(stub, ids, None)
    with_a = await _vocode(stub, ids, _conditioning(voice_a))
    with_b = await _vocode(stub, ids, _conditioning(voice_b))
    with torch.no_grad():
        offline = token2wav(
            torch.tensor([ids]), voice_a["speaker"][None], voice_a["prompt_tokens"][None], voice_a["prompt_mel"][None]
        )[0].numpy()
    expected = np.frombuffer(float_to_pcm16(offline), dtype=PCM16_DTYPE).astype(np.int32)
    assert with_a.shape == expected.shape == plain.shape == with_b.shape
    assert np.abs(with_a - expected).max() <= 1, "streamed = offline with the same prompt (one PCM16 step)"
    assert np.abs(with_a - with_b).max() > 100, "a different prompt voice gives different audio"
    assert np.abs(with_a - plain).max() > 100, "the prompt voice changes the audio"


def _bad(**changes) -> vocoder_pb2.VoiceConditioning:
    voice = _conditioning(_voice(1))
    for name, value in changes.items():
        if name == "prompt_speech_tokens":
            del voice.prompt_speech_tokens[:]
            voice.prompt_speech_tokens.extend(value)
        else:
            getattr(voice, name).CopyFrom(value)
    return voice


BAD_VOICES = {
    "speaker-wrong-size": (_bad(speaker_embedding=tensor_to_proto(torch.zeros(7))), "speaker"),
    "mel-frames-mismatch": (_bad(prompt_mel=tensor_to_proto(torch.zeros(CFG.flow.mel_bins, 3))), "prompt_mel"),
    "prompt-token-out-of-range": (_bad(prompt_speech_tokens=[CFG.flow.speech_vocab] * PROMPT_TOKENS), "[0, 6561)"),
    "prompt-too-long": (_bad(prompt_speech_tokens=[0] * (MAX_PROMPT_TOKENS + 1)), "exceed"),
    "mel-not-finite": (_bad(prompt_mel=tensor_to_proto(torch.full((CFG.flow.mel_bins, 40), float("nan")))), "finite"),
}


@pytest.mark.parametrize("case", BAD_VOICES.values(), ids=BAD_VOICES.keys())
async def test_malformed_voice_conditioning_is_invalid_argument(stub, case):
    voice, expected = case
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _vocode(stub, _ids()[:BLOCK], voice)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.value.details()
