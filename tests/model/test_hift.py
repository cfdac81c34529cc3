"""HiFT vocoder: chunked == offline (unvoiced and voiced, so the carried sine phase is exercised), 480
samples per mel frame, frames held back exactly `receptive_frames`, position-keyed noise, state
serialisation, CosyVoice2-0.5B's parameter count. Equality with CosyVoice 2's own module is in tests/compat.

Tolerance: float32, atol = 1e-5 (observed ~2e-7): the same arithmetic as offline, convolutions over
different lengths summing in a different order; the sine phase accumulates in float64.
"""

from __future__ import annotations

import pytest
import torch

from minmo.model.config import HiFTConfig, load_config
from minmo.model.hift import AUDIO_LIMIT, HiFT, HiFTState, position_noise, receptive_frames

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
FRAMES = 150  # 3 s
VOICED_F0_HZ = 220.0


@pytest.fixture(scope="module")
def cfg() -> HiFTConfig:
    return load_config("tiny").hift


@pytest.fixture(scope="module", params=["unvoiced", "voiced"])
def model(cfg: HiFTConfig, request: pytest.FixtureRequest) -> HiFT:
    torch.manual_seed(0)
    vocoder = HiFT(cfg).eval()
    if request.param == "voiced":
        with torch.no_grad():
            vocoder.f0_predictor.head.bias.fill_(VOICED_F0_HZ)
    return vocoder


def _mel(cfg: HiFTConfig, frames: int = FRAMES) -> torch.Tensor:
    return torch.randn(2, cfg.mel_bins, frames, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _stream(model: HiFT, mel: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state, outputs, start = model.init_state(mel.shape[0]), [], 0
    for size in sizes:
        pcm, state = model.step(mel[:, :, start : start + size], state)
        start += size
        held_back = min(start, model.context_frames)
        assert state.emitted == start - held_back and pcm.shape[1] % model.cfg.samples_per_frame == 0
        outputs.append(pcm)
    assert start == mel.shape[2]
    pcm, _ = model.flush(state)
    assert pcm.shape[1] == min(start, model.context_frames) * model.cfg.samples_per_frame
    return torch.cat([*outputs, pcm], dim=1)


@pytest.mark.parametrize("sizes", [[50] * 3, [1] * 30 + [120], [7, 30, 2, 0, 111]], ids=["50", "1", "uneven"])
def test_chunked_equals_offline(model: HiFT, cfg: HiFTConfig, sizes: list[int]) -> None:
    mel = _mel(cfg)
    with torch.no_grad():
        offline = model(mel)
    assert offline.shape == (2, FRAMES * cfg.samples_per_frame)
    assert offline.dtype == torch.float32 and torch.isfinite(offline).all()
    assert offline.abs().max() <= AUDIO_LIMIT
    torch.testing.assert_close(_stream(model, mel, sizes), offline, **TOLERANCE)


@torch.no_grad()
def test_voiced_source_is_a_harmonic_tone(cfg: HiFTConfig) -> None:
    vocoder = HiFT(cfg)
    f0 = torch.full((1, 4), VOICED_F0_HZ)
    noise = torch.zeros(1, 4 * cfg.samples_per_frame, cfg.nb_harmonics + 1)
    source, centres = vocoder.source(f0, None, True, noise)
    spectrum = torch.fft.rfft(source[0]).abs()
    hz_per_bin = cfg.sample_rate / source.shape[1]
    assert source.shape == (1, 4 * cfg.samples_per_frame)
    assert centres.shape == (1, 4, cfg.nb_harmonics + 1) and ((centres >= 0) & (centres < 1)).all()
    assert round(spectrum[1:].argmax().item() * hz_per_bin / VOICED_F0_HZ) in range(1, cfg.nb_harmonics + 2)


def test_receptive_field_bound_of_the_published_sizes() -> None:
    assert receptive_frames(load_config("minmo-8b").hift) == 24  # 480 ms held back while streaming


def test_noise_depends_only_on_sample_position() -> None:
    cpu = torch.device("cpu")
    whole = position_noise(0, 1000, 9, cpu)
    parts = torch.cat([position_noise(0, 400, 9, cpu), position_noise(400, 600, 9, cpu)])
    assert torch.equal(whole, parts)
    assert abs(whole.mean().item()) < 0.05 and abs(whole.std().item() - 1) < 0.05


@torch.no_grad()
def test_state_round_trip_gives_identical_next_step(model: HiFT, cfg: HiFTConfig) -> None:
    mel = _mel(cfg)
    _, state = model.step(mel[:, :, :37], model.init_state(2))
    restored = HiFTState.from_bytes(state.to_bytes())
    expected, _ = model.step(mel[:, :, 37:], state)
    actual, _ = model.step(mel[:, :, 37:], restored)
    assert expected.shape[1] > 0
    assert torch.equal(actual, expected)


def test_paper_size_parameter_count() -> None:
    with torch.device("meta"):
        model = HiFT(load_config("minmo-8b").hift)
    count = sum(parameter.numel() for parameter in model.parameters())
    print(f"minmo-8b HiFT: {count / 1e6:.1f}M parameters")
    assert model.sample_rate == 24000 and model.cfg.samples_per_frame == 480
    assert 20.8e6 < count < 20.9e6  # CosyVoice2-0.5B's hift.pt (weight norm folded): 20.8M
