"""Fbank: kaldi frame counts, int16 scaling, LFR as funasr computes it, and streaming == offline exactly."""

from __future__ import annotations

import math

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from minmo.model.config import FbankConfig
from minmo.model.fbank import Fbank, FbankState, apply_lfr

SAMPLE_RATE = 16000
SENSEVOICE = FbankConfig(num_mel_bins=80, lfr_m=7, lfr_n=6)


def _audio(num_samples: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(num_samples, generator=generator) * 2 - 1) * 0.5


def _random_chunks(total: int, seed: int, max_size: int) -> list[int]:
    """Chunk sizes summing to `total`, drawn from 1..max_size (so 1-sample and odd sizes occur)."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(int(rng.integers(1, max_size + 1)), total - sum(sizes)))
    return sizes


def _stream(fbank: Fbank, waveform: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state = fbank.init_state()
    outputs, start = [], 0
    for size in sizes:
        out, state = fbank.step(waveform[start : start + size], state)
        outputs.append(out)
        start += size
    out, _ = fbank.flush(state)
    return torch.cat([*outputs, out])


def _funasr_lfr(inputs: torch.Tensor, lfr_m: int, lfr_n: int) -> torch.Tensor:
    """funasr's `apply_lfr` loop, transcribed as the reference."""
    frames = []
    length = inputs.shape[0]
    num_out = int(np.ceil(length / lfr_n))
    inputs = torch.vstack((inputs[0].repeat((lfr_m - 1) // 2, 1), inputs))
    length += (lfr_m - 1) // 2
    for i in range(num_out):
        if lfr_m <= length - i * lfr_n:
            frames.append(inputs[i * lfr_n : i * lfr_n + lfr_m].reshape(1, -1))
        else:
            frame = inputs[i * lfr_n :].reshape(-1)
            for _ in range(lfr_m - (length - i * lfr_n)):
                frame = torch.hstack((frame, inputs[-1]))
            frames.append(frame.reshape(1, -1))
    return torch.vstack(frames)


@pytest.mark.parametrize("num_samples", [0, 399, 400, 559, 560, 16000, 16159])
def test_frame_count_follows_kaldi_snip_edges(num_samples: int) -> None:
    fbank = Fbank(FbankConfig())
    expected = 0 if num_samples < 400 else 1 + (num_samples - 400) // 160
    feats = fbank.forward(_audio(num_samples))
    assert feats.shape == (expected, 128)
    assert feats.dtype == torch.float32


def test_matches_kaldi_native_fbank_on_int16_scale() -> None:
    waveform = _audio(8000)
    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.mel_opts.num_bins = 80
    reference = knf.OnlineFbank(options)
    reference.accept_waveform(SAMPLE_RATE, (waveform.numpy() * 32768).tolist())
    reference.input_finished()
    expected = np.stack([reference.get_frame(i) for i in range(reference.num_frames_ready)])
    assert torch.equal(Fbank(FbankConfig(num_mel_bins=80)).forward(waveform), torch.from_numpy(expected))


@pytest.mark.parametrize("seed, max_size", [(0, 1), (1, 7), (2, 333), (3, 4001)])
def test_chunked_equals_offline_exactly(seed: int, max_size: int) -> None:
    fbank = Fbank(FbankConfig(num_mel_bins=80))
    waveform = _audio(1601 if max_size == 1 else 16000 + 37, seed)
    streamed = _stream(fbank, waveform, _random_chunks(waveform.shape[0], seed, max_size))
    assert torch.equal(streamed, fbank.forward(waveform))


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 6, 7, 12, 13, 50])
@pytest.mark.parametrize("lfr_m, lfr_n", [(7, 6), (5, 3), (1, 1), (2, 2)])
def test_apply_lfr_matches_funasr(num_frames: int, lfr_m: int, lfr_n: int) -> None:
    feats = torch.randn(num_frames, 3)
    assert torch.equal(apply_lfr(feats, lfr_m, lfr_n), _funasr_lfr(feats, lfr_m, lfr_n))


def test_lfr_one_is_identity() -> None:
    feats = torch.randn(9, 4)
    assert torch.equal(apply_lfr(feats, 1, 1), feats)


@pytest.mark.parametrize("num_samples", [400, 1360, 1520, 16000, 16000 + 960 * 3 + 11])
@pytest.mark.parametrize("seed", [0, 1])
def test_lfr_chunked_equals_offline(num_samples: int, seed: int) -> None:
    fbank = Fbank(SENSEVOICE)
    waveform = _audio(num_samples, seed)
    offline = fbank.forward(waveform)
    assert offline.shape == (math.ceil(fbank.num_frames(num_samples) / 6), 7 * 80)
    streamed = _stream(fbank, waveform, _random_chunks(num_samples, seed, 900))
    assert torch.equal(streamed, offline)


def test_rates() -> None:
    assert Fbank(FbankConfig()).frame_rate == 100.0
    assert Fbank(SENSEVOICE).frame_rate == pytest.approx(1000 / 60)


def test_state_bytes_round_trip() -> None:
    fbank = Fbank(SENSEVOICE)
    waveform = _audio(6000)
    _, state = fbank.step(waveform[:2345], fbank.init_state())
    restored = FbankState.from_bytes(state.to_bytes())
    out_a, next_a = fbank.step(waveform[2345:], state)
    out_b, next_b = fbank.step(waveform[2345:], restored)
    assert out_a.shape[0] > 0
    assert torch.equal(out_a, out_b)
    assert torch.equal(fbank.flush(next_a)[0], fbank.flush(next_b)[0])
