"""Input projector: paper size, 2x downsampling to the LLM width, chunked streaming == offline, and the
whole audio path's rates (16 kHz -> 100 Hz fbank -> 25 Hz encoder -> 12.5 Hz projector)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minmo.model.config import load_config
from minmo.model.fbank import Fbank
from minmo.model.input_projector import InputProjector, InputProjectorState
from minmo.model.voice_encoder import VoiceEncoder

PAPER_PARAMS = 170e6
# Chunked and offline passes compute the same function on differently shaped matrices (and attention
# reduces over different numbers of masked keys), so float32 rounding differs slightly between them.
ATOL = 1e-5


def _projector(chunk_size: int = 2, left_chunks: int = -1) -> InputProjector:
    torch.manual_seed(0)
    return InputProjector(load_config("tiny").input_projector, chunk_size, left_chunks).eval()


def _stream(projector: InputProjector, frames: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state = projector.init_state(frames.shape[0])
    outputs, start = [], 0
    for size in sizes:
        out, state = projector.step(frames[:, start : start + size], state)
        outputs.append(out)
        start += size
    assert start == frames.shape[1]
    out, _ = projector.flush(state)
    return torch.cat([*outputs, out], dim=1)


def test_minmo_8b_size_matches_paper() -> None:
    cfg = load_config("minmo-8b")
    with torch.device("meta"):
        projector = InputProjector.for_encoder(cfg.input_projector, cfg.voice_encoder)
    params = sum(p.numel() for p in projector.parameters())
    assert abs(params - PAPER_PARAMS) <= 0.15 * PAPER_PARAMS, f"{params / 1e6:.1f}M vs the paper's 170M"


def test_chunk_follows_encoder() -> None:
    cfg = load_config("tiny")
    projector = InputProjector.for_encoder(cfg.input_projector, dataclasses.replace(cfg.voice_encoder, left_chunks=3))
    assert (projector.chunk_size, projector.left_chunks) == (cfg.voice_encoder.chunk_frames // 2, 3)


@pytest.mark.parametrize("chunk_size, left_chunks", [(2, -1), (2, 1), (3, 0), (1, 2)])
@pytest.mark.parametrize(
    "sizes", [[25], [4] * 6 + [1], [1] * 25, [3, 1, 7, 2, 5, 6, 1]], ids=["whole", "chunks", "ones", "uneven"]
)
def test_chunked_equals_offline(chunk_size: int, left_chunks: int, sizes: list[int]) -> None:
    projector = _projector(chunk_size, left_chunks)
    frames = torch.randn(2, sum(sizes), projector.cfg.input_dim)
    with torch.no_grad():
        offline = projector(frames)
        streamed = _stream(projector, frames, sizes)
    assert offline.shape == (2, 13, projector.cfg.output_dim)
    torch.testing.assert_close(streamed, offline, atol=ATOL, rtol=0)


def test_odd_frame_waits_for_its_pair() -> None:
    projector = _projector(chunk_size=1)
    frames = torch.randn(1, 3, projector.cfg.input_dim)
    with torch.no_grad():
        out, state = projector.step(frames, projector.init_state())
        assert out.shape[1] == 1 and state.pending.shape[1] == 1
        out, state = projector.flush(state)
    assert out.shape[1] == 1 and state.position == 0


def test_state_bytes_round_trip() -> None:
    projector = _projector(left_chunks=1)
    frames = torch.randn(2, 20, projector.cfg.input_dim)
    with torch.no_grad():
        _, state = projector.step(frames[:, :9], projector.init_state(2))
        restored = InputProjectorState.from_bytes(state.to_bytes())
        out_a, next_a = projector.step(frames[:, 9:], state)
        out_b, next_b = projector.step(frames[:, 9:], restored)
        assert out_a.shape[1] > 0
        assert torch.equal(out_a, out_b)
        assert torch.equal(projector.flush(next_a)[0], projector.flush(next_b)[0])


def test_one_second_of_audio_through_the_rates() -> None:
    """1 s at 16 kHz -> 98 fbank frames (snip_edges) -> 25 encoder frames -> 13 LLM-width frames."""
    cfg = load_config("tiny")
    torch.manual_seed(0)
    encoder = VoiceEncoder(cfg.voice_encoder).eval()
    projector = InputProjector.for_encoder(cfg.input_projector, cfg.voice_encoder).eval()
    feats = Fbank(cfg.fbank).forward(torch.rand(cfg.fbank.sample_rate) * 0.2 - 0.1)
    with torch.no_grad():
        encoded = encoder(feats[None])
        projected = projector(encoded)
    assert feats.shape == (98, cfg.fbank.output_dim)
    assert encoded.shape == (1, 25, cfg.voice_encoder.dim)
    assert projected.shape == (1, 13, cfg.llm.hidden_size)
