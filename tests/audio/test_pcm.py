"""PCM16 conversion and streaming resampling."""

import numpy as np
import pytest
import soxr

from minmo.audio.pcm import SUPPORTED_INPUT_RATES, StreamingResampler, float_to_pcm16, pcm16_to_float

MODEL_RATE = 16000
OUTPUT_RATE = 24000
# soxr's stream and one-shot paths run the same filter; measured difference is 0.0, this allows float noise.
RESAMPLE_TOLERANCE = 1e-6


def test_pcm16_round_trips_exactly() -> None:
    data = np.arange(-32768, 32768, 7, dtype="<i2").tobytes()
    samples = pcm16_to_float(data)
    assert samples.dtype == np.float32
    assert samples.min() >= -1.0 and samples.max() < 1.0
    assert float_to_pcm16(samples) == data


def test_pcm16_full_scale_values() -> None:
    assert pcm16_to_float(np.array([-32768, 0, 16384], dtype="<i2").tobytes()).tolist() == [-1.0, 0.0, 0.5]


def test_odd_byte_count_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")


def test_out_of_range_floats_clip_instead_of_wrapping() -> None:
    clipped = np.frombuffer(float_to_pcm16(np.array([-2.0, 1.0, 3.0], dtype=np.float32)), dtype="<i2")
    assert clipped.tolist() == [-32768, 32767, 32767]


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [*((rate, MODEL_RATE) for rate in SUPPORTED_INPUT_RATES if rate != MODEL_RATE), (MODEL_RATE, OUTPUT_RATE)],
)
def test_chunked_resampling_equals_one_shot(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(in_rate + out_rate)
    audio = (0.3 * rng.standard_normal(in_rate * 2)).astype(np.float32)
    resampler = StreamingResampler(in_rate, out_rate)
    bounds = np.cumsum(rng.integers(1, 2000, size=audio.size))
    chunks = np.split(audio, bounds[bounds < audio.size])
    streamed = np.concatenate([resampler.process(chunk) for chunk in chunks] + [resampler.process(chunks[0][:0], True)])
    reference = soxr.resample(audio, in_rate, out_rate, "HQ")
    assert streamed.shape == reference.shape
    np.testing.assert_allclose(streamed, reference, atol=RESAMPLE_TOLERANCE)


def test_equal_rates_pass_audio_through() -> None:
    audio = np.linspace(-1, 1, 1000, dtype=np.float32)
    resampler = StreamingResampler(MODEL_RATE, MODEL_RATE)
    assert np.array_equal(resampler.process(audio), audio)
    assert resampler.process(audio[:0], last=True).size == 0
