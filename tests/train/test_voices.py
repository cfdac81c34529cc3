"""The training data's acoustic conditions: each augmentation does what its name says, on a known signal."""

import numpy as np

from minmo.train.voices import SAMPLE_RATE, augment, band_limit, coloured_noise, perturb_speed, reverberate


def _tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)).astype(np.float32)


def _band_power(audio: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    frequencies = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    return float(spectrum[(frequencies >= low) & (frequencies < high)].sum())


def test_speed_perturbation_shortens_and_raises_pitch():
    faster = perturb_speed(_tone(500.0), 1.25)
    assert abs(len(faster) - SAMPLE_RATE / 1.25) <= 2
    assert _band_power(faster, 600, 650) > 10 * _band_power(faster, 475, 525), "500 Hz moves to 625 Hz"


def test_reverb_spreads_energy_past_the_sound_and_keeps_loudness():
    click = np.zeros(SAMPLE_RATE, np.float32)
    click[:160] = 0.5
    wet = reverberate(click, np.random.default_rng(0), rt60_s=0.5)
    assert np.isclose(np.mean(wet**2), np.mean(click**2), rtol=1e-3)
    assert np.abs(wet[4000:6000]).max() > 1e-3, "the tail rings on after the click"


def test_band_limit_removes_what_is_outside_the_band():
    mixed = _tone(100.0) + _tone(1000.0) + _tone(6000.0)
    kept = band_limit(mixed, 300.0, 3400.0)
    assert _band_power(kept, 950, 1050) > 0.9 * _band_power(mixed, 950, 1050)
    assert _band_power(kept, 50, 150) < 1e-6 * _band_power(mixed, 50, 150)
    assert _band_power(kept, 5900, 6100) < 1e-6 * _band_power(mixed, 5900, 6100)


def test_brown_noise_is_heavier_at_low_frequencies_than_white():
    rng = np.random.default_rng(1)
    white, brown = coloured_noise(SAMPLE_RATE, rng, 0.0), coloured_noise(SAMPLE_RATE, rng, 2.0)
    ratio = lambda audio: _band_power(audio, 50, 500) / _band_power(audio, 4000, 4450)  # noqa: E731
    assert 0.3 < ratio(white) < 3.0 and ratio(brown) > 100


def test_augment_keeps_audio_in_range_and_float32():
    rng = np.random.default_rng(2)
    for _ in range(20):
        out = augment(_tone(300.0, 0.5), rng)
        assert out.dtype == np.float32 and np.isfinite(out).all() and np.abs(out).max() <= 1.0
        assert 0.4 * SAMPLE_RATE < len(out) < 0.6 * SAMPLE_RATE
