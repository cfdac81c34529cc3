import torch

from minmo.model.config import load_config
from minmo.model.speech_encoder import SpeechEncoder, SpeechEncoderState


def _encoder() -> SpeechEncoder:
    torch.manual_seed(0)
    return SpeechEncoder(load_config("tiny")).eval()


def test_chunked_pcm_gives_the_offline_embeddings():
    encoder = _encoder()
    pcm = 0.1 * torch.randn(16000 + 1234)
    with torch.no_grad():
        offline = encoder(pcm)
        state = encoder.init_state()
        pieces = []
        for start in range(0, pcm.shape[0], 2560 + 7):  # 160 ms chunks, off the frame grid
            out, state = encoder.step(pcm[start : start + 2560 + 7], state)
            pieces.append(out)
        tail, state = encoder.flush(state)
    chunked = torch.cat([*pieces, tail], dim=1)
    assert chunked.shape == offline.shape == (1, 14, encoder.output_dim)  # ~1.08 s at 12.5 Hz
    # float32 rounding from different matmul shapes only (see test_voice_encoder)
    torch.testing.assert_close(chunked, offline, atol=1e-5, rtol=0)
    assert state.voice_encoder.position == 0, "flush starts a fresh utterance"


def test_state_bytes_round_trip():
    encoder = _encoder()
    pcm = 0.1 * torch.randn(6000)
    with torch.no_grad():
        _, state = encoder.step(pcm[:3000], encoder.init_state())
        expected, _ = encoder.step(pcm[3000:], state)
        actual, _ = encoder.step(pcm[3000:], SpeechEncoderState.from_bytes(state.to_bytes()))
    assert torch.equal(expected, actual)
