"""WAV files in and out of a chat: the server takes a few input rates, and the client adapts the file to them.

SessionConfig accepts only `SUPPORTED_INPUT_RATES`; a file at any other rate (22050 Hz, 44100 Hz) is
resampled once to the models' own 16 kHz so the server never resamples twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from minmo.audio.pcm import PCM16_DTYPE, SUPPORTED_INPUT_RATES, StreamingResampler
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ

FALLBACK_INPUT_RATE = (
    ENCODER_SAMPLE_RATE_HZ  # the speech encoder's rate: resampling there avoids a second server-side pass
)
MS_PER_S = 1000


@dataclass(frozen=True)
class InputAudio:
    """Mono float32 audio at a rate the Conversation API accepts."""

    samples: np.ndarray  # (T,) float32 in [-1, 1)
    sample_rate: int  # Hz, one of SUPPORTED_INPUT_RATES

    def __post_init__(self) -> None:
        assert self.samples.ndim == 1, f"input audio must be mono (T,), got shape {self.samples.shape}"
        assert self.sample_rate in SUPPORTED_INPUT_RATES, f"unsupported input rate {self.sample_rate} Hz"

    @property
    def duration_ms(self) -> float:
        return len(self.samples) * MS_PER_S / self.sample_rate


class AudioFileError(ValueError):
    """A file given as spoken input cannot be used; the message says why and what to give instead."""


def load_wav(path: Path) -> InputAudio:
    """Read a WAV file as mono (channels averaged) at a supported rate (else resampled to 16 kHz).

    A file that is not audio (or holds no samples) raises AudioFileError with one line for a person.
    """
    try:
        frames, rate = sf.read(path, dtype="float32", always_2d=True)  # (T, C)
    except (sf.SoundFileError, RuntimeError) as error:
        raise AudioFileError(
            f"{path} is not an audio file this client can read ({str(error).strip()}); give a WAV file, "
            "e.g. `espeak-ng -w question.wav 'what is the capital of France?'`"
        ) from None
    if frames.shape[0] == 0:
        raise AudioFileError(f"{path} holds no audio samples; record or synthesise some speech into it")
    mono = frames.mean(axis=1, dtype=np.float32)
    if rate in SUPPORTED_INPUT_RATES:
        return InputAudio(mono, rate)
    return InputAudio(StreamingResampler(rate, FALLBACK_INPUT_RATE).process(mono, last=True), FALLBACK_INPUT_RATE)


def write_wav(path: Path, pcm16: bytes, sample_rate: int) -> None:
    """Write little-endian PCM16 mono bytes as a 16-bit WAV file, unchanged."""
    sf.write(path, np.frombuffer(pcm16, dtype=PCM16_DTYPE), sample_rate, subtype="PCM_16")
