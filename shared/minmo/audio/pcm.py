"""PCM16 ⇄ float32 conversion and streaming resampling for audio crossing the wire.

Clients send little-endian PCM16 at one of `SUPPORTED_INPUT_RATES`; the models want float32 at their
own rate (16 kHz in, 24 kHz out). Resampling a stream chunk by chunk must not click at chunk edges, so
it goes through one `soxr.ResampleStream` per stream, which carries the filter history between chunks.
"""

from __future__ import annotations

import numpy as np
import soxr

SUPPORTED_INPUT_RATES = (8000, 16000, 24000, 48000)
PCM16_BYTES = 2
PCM16_SCALE = 32768.0  # int16 full scale: [-32768, 32767] ↔ [-1.0, 1.0)
PCM16_DTYPE = np.dtype("<i2")
RESAMPLE_QUALITY = "HQ"


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian PCM16 bytes → float32 samples in [-1, 1)."""
    if len(data) % PCM16_BYTES:
        raise ValueError(f"PCM16 audio must have an even number of bytes (2 per sample), got {len(data)}")
    return np.frombuffer(data, dtype=PCM16_DTYPE).astype(np.float32) / PCM16_SCALE


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples → little-endian PCM16 bytes, clipping out-of-range values instead of wrapping them."""
    scaled = np.round(np.asarray(samples, dtype=np.float32) * PCM16_SCALE)
    return np.clip(scaled, np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(PCM16_DTYPE).tobytes()


class StreamingResampler:
    """Resamples one mono float32 stream chunk by chunk; the output equals a one-shot resample of the whole.

    Holds soxr's filter state, so use one instance per stream and never share it between sessions.
    When the rates are equal it passes audio through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = RESAMPLE_QUALITY) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, "float32", quality)

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk; `last=True` also drains the samples the filter still holds."""
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=last)
