"""Voice encoder: paper size, 4x downsampling, and chunked streaming == the offline pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minmo.model.config import VoiceEncoderConfig, load_config
from minmo.model.voice_encoder import VoiceEncoder, VoiceEncoderState

PAPER_PARAMS = 636e6
# Chunked and offline passes compute the same function on differently shaped matrices (and attention
# reduces over different numbers of masked keys), so float32 rounding differs slightly between them.
ATOL = 1e-5


def _encoder(**overrides) -> VoiceEncoder:
    torch.manual_seed(0)
    cfg = dataclasses.replace(load_config("tiny").voice_encoder, **overrides)
    return VoiceEncoder(cfg).eval()


def _stream(encoder: VoiceEncoder, feats: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state = encoder.init_state(feats.shape[0])
    outputs, start = [], 0
    for size in sizes:
        out, state = encoder.step(feats[:, start : start + size], state)
        outputs.append(out)
        start += size
    assert start == feats.shape[1]
    out, _ = encoder.flush(state)
    return torch.cat([*outputs, out], dim=1)


def test_minmo_8b_size_matches_paper() -> None:
    with torch.device("meta"):
        encoder = VoiceEncoder(load_config("minmo-8b").voice_encoder)
    params = sum(p.numel() for p in encoder.parameters())
    assert abs(params - PAPER_PARAMS) <= 0.15 * PAPER_PARAMS, f"{params / 1e6:.1f}M vs the paper's 636M"


@pytest.mark.parametrize("num_frames, expected", [(98, 25), (100, 25), (101, 26), (4, 1), (1, 1)])
def test_downsamples_4x_rounding_up(num_frames: int, expected: int) -> None:
    encoder = _encoder()
    with torch.no_grad():
        out = encoder(torch.randn(2, num_frames, encoder.cfg.input_dim))
    assert out.shape == (2, expected, encoder.cfg.dim)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"left_chunks": 1}, {"left_chunks": 0, "chunk_frames": 3}, {"chunk_frames": 1, "downsample": 1}],
    ids=["unlimited", "left1", "left0-chunk3", "no-downsample"],
)
@pytest.mark.parametrize(
    "sizes",
    [[103], [16] * 6 + [7], [1] * 37 + [66], [5, 17, 3, 30, 1, 45, 2]],
    ids=["whole", "chunks", "ones", "uneven"],
)
def test_chunked_equals_offline(overrides: dict, sizes: list[int]) -> None:
    encoder = _encoder(**overrides)
    feats = torch.randn(2, sum(sizes), encoder.cfg.input_dim)
    with torch.no_grad():
        offline = encoder(feats)
        streamed = _stream(encoder, feats, sizes)
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=ATOL, rtol=0)


def test_step_emits_complete_chunks_only() -> None:
    encoder = _encoder()
    frames_per_chunk = encoder.cfg.downsample * encoder.cfg.chunk_frames
    feats = torch.randn(1, frames_per_chunk, encoder.cfg.input_dim)
    with torch.no_grad():
        out, state = encoder.step(feats[:, :-1], encoder.init_state())
        assert out.shape[1] == 0 and state.pending.shape[1] == frames_per_chunk - 1
        out, state = encoder.step(feats[:, -1:], state)
    assert out.shape[1] == encoder.cfg.chunk_frames
    assert state.pending.shape[1] == 0 and state.position == encoder.cfg.chunk_frames


def test_kv_cache_trimmed_to_left_chunks() -> None:
    encoder = _encoder(left_chunks=2)
    with torch.no_grad():
        _, state = encoder.step(torch.randn(1, 80, encoder.cfg.input_dim), encoder.init_state())
    assert state.position == 20
    assert all(k.shape[2] == 2 * encoder.cfg.chunk_frames for k in state.keys)


def test_state_bytes_round_trip() -> None:
    encoder = _encoder(left_chunks=1)
    feats = torch.randn(2, 60, encoder.cfg.input_dim)
    with torch.no_grad():
        _, state = encoder.step(feats[:, :37], encoder.init_state(2))
        restored = VoiceEncoderState.from_bytes(state.to_bytes())
        out_a, next_a = encoder.step(feats[:, 37:], state)
        out_b, next_b = encoder.step(feats[:, 37:], restored)
        assert out_a.shape[1] > 0
        assert torch.equal(out_a, out_b)
        assert torch.equal(encoder.flush(next_a)[0], encoder.flush(next_b)[0])


def test_flush_returns_fresh_state() -> None:
    encoder = _encoder()
    cfg: VoiceEncoderConfig = encoder.cfg
    with torch.no_grad():
        _, state = encoder.step(torch.randn(1, 21, cfg.input_dim), encoder.init_state())
        out, state = encoder.flush(state)
    assert out.shape[1] == 2
    assert state.position == 0 and state.pending.shape[1] == 0 and state.keys[0].shape[2] == 0
