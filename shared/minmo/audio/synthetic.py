"""Synthetic speech-like audio for tests, benchmarks and smoke runs — no TTS or recordings needed.

Voiced syllables from a glottal pulse train with vibrato, shaped by vowel formants and a syllable
envelope, between stretches of low-level noise. The real Silero VAD rates it as speech (median ~0.95,
dips between syllables) and the noise as silence (< 0.15 once its state has settled).
"""

from __future__ import annotations

import numpy as np

from minmo.model.config import ENCODER_SAMPLE_RATE_HZ

SAMPLE_RATE = ENCODER_SAMPLE_RATE_HZ  # what the speech encoder hears
NOISE_LEVEL = 0.003
SPEECH_PEAK = 0.3
VOWEL_FORMANTS_HZ = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240))


def syllable(rng: np.random.Generator, duration_s: float, f0_hz: float, formants_hz: tuple[int, ...]) -> np.ndarray:
    n = int(duration_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    phase = np.cumsum(f0_hz * (1 + 0.08 * np.sin(2 * np.pi * 1.5 * t))) / SAMPLE_RATE
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    source = np.convolve(pulses, np.hanning(40), mode="same") + 0.02 * rng.standard_normal(n)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    formant_gain = sum(1 / (1 + ((freqs - f) / (60 + 0.06 * f)) ** 2) for f in formants_hz)
    voiced = np.fft.irfft(np.fft.rfft(source) * formant_gain, n)
    return voiced * np.sin(np.pi * np.arange(n) / n) ** 0.6


def speech_like(rng: np.random.Generator, duration_s: float) -> np.ndarray:
    """`duration_s` of syllables with short gaps, peak-normalised to SPEECH_PEAK, at 16 kHz."""
    parts, index = [], 0
    while sum(p.size for p in parts) < duration_s * SAMPLE_RATE:
        formants = VOWEL_FORMANTS_HZ[index % len(VOWEL_FORMANTS_HZ)]
        parts.append(syllable(rng, rng.uniform(0.15, 0.3), rng.uniform(110, 180), formants))
        parts.append(np.zeros(int(rng.uniform(0.02, 0.06) * SAMPLE_RATE)))
        index += 1
    audio = np.concatenate(parts)[: int(duration_s * SAMPLE_RATE)]
    return SPEECH_PEAK * audio / np.abs(audio).max()


def utterance(seed: int = 0, lead_s: float = 0.5, speech_s: float = 1.5, tail_s: float = 1.0) -> np.ndarray:
    """Noise, speech-like audio, noise: one user turn as a microphone would deliver it (float32, 16 kHz)."""
    rng = np.random.default_rng(seed)
    signal = np.concatenate(
        [np.zeros(int(lead_s * SAMPLE_RATE)), speech_like(rng, speech_s), np.zeros(int(tail_s * SAMPLE_RATE))]
    )
    return (signal + NOISE_LEVEL * rng.standard_normal(signal.size)).astype(np.float32)
