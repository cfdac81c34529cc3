"""SenseVoice voice encoder (random weights, SenseVoiceSmall's structure at a small width): windowed streaming
equals offline when its contexts cover the utterance, gets closer to offline as the right context grows,
and its state round-trips. Equality with funasr's own encoder is in tests/compat.

The distance from offline printed here is for random weights; with trained SenseVoiceSmall weights it has
to be measured on speech (the published encoder was trained on whole utterances).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minmo.model.config import VoiceEncoderConfig
from minmo.model.sensevoice import SenseVoiceEncoder, SenseVoiceState

FRAMES = 40  # 2.4 s of 60 ms LFR frames
CONFIG = VoiceEncoderConfig(
    kind="sensevoice", input_dim=560, dim=64, num_layers=3, tp_layers=2, num_heads=4, ffn_dim=128,
    fsmn_kernel=11, downsample=1, chunk_frames=4, left_chunks=2, right_context=4,
)


def _encoder(cfg: VoiceEncoderConfig) -> SenseVoiceEncoder:
    torch.manual_seed(0)
    return SenseVoiceEncoder(cfg).eval()


@torch.no_grad()
def _stream(encoder: SenseVoiceEncoder, feats: torch.Tensor, size: int) -> torch.Tensor:
    state, outputs = encoder.init_state(feats.shape[0]), []
    for start in range(0, feats.shape[1], size):
        out, state = encoder.step(feats[:, start : start + size], state)
        assert out.shape[1] % encoder.cfg.chunk_frames == 0
        outputs.append(out)
    outputs.append(encoder.flush(state)[0])
    return torch.cat(outputs, dim=1)


@pytest.fixture(scope="module")
def feats() -> torch.Tensor:
    return torch.randn(2, FRAMES, CONFIG.input_dim, generator=torch.Generator().manual_seed(1))


def test_streaming_with_covering_contexts_is_offline(feats: torch.Tensor) -> None:
    encoder = _encoder(dataclasses.replace(CONFIG, left_chunks=FRAMES, right_context=FRAMES))
    with torch.no_grad():
        offline = encoder(feats)
    torch.testing.assert_close(_stream(encoder, feats, 3), offline, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_distance_from_offline_shrinks_with_right_context(feats: torch.Tensor) -> None:
    distances = []
    for right in (0, 4, 12):
        encoder = _encoder(dataclasses.replace(CONFIG, right_context=right))
        offline = encoder(feats)
        streamed = _stream(encoder, feats, 4)
        distances.append(((streamed - offline).norm() / offline.norm()).item())
    print(f"relative distance from offline at right context 0 / 4 / 12 frames: {distances}")
    assert distances[0] > distances[1] > distances[2] > 0


@torch.no_grad()
def test_frames_wait_for_their_right_context_and_state_round_trips(feats: torch.Tensor) -> None:
    encoder = _encoder(CONFIG)
    out, state = encoder.step(feats[:, : CONFIG.chunk_frames + CONFIG.right_context - 1], encoder.init_state(2))
    assert out.shape[1] == 0
    out, state = encoder.step(feats[:, CONFIG.chunk_frames + CONFIG.right_context - 1 : 20], state)
    assert out.shape[1] == 16  # 20 frames in, 4 of them right context: the chunks ending at 4 .. 16 are ready
    restored = SenseVoiceState.from_bytes(state.to_bytes())
    assert restored.feats.shape[1] == 20 - (16 - CONFIG.left_chunks * CONFIG.chunk_frames)  # bounded window
    assert torch.equal(encoder.step(feats[:, 20:], restored)[0], encoder.step(feats[:, 20:], state)[0])
