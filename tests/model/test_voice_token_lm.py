"""Voice-token LM: chunked decoding equals the full pass, states travel, size matches CosyVoice 2's LM.

Tolerance 1e-4 absolute in float32, for the reason given in test_llm.py: only kernel summation order
differs between chunked and full passes.
"""

from __future__ import annotations

import pytest
import torch

from minmo.model.config import SPEECH_CODEBOOK_SIZE, load_config
from minmo.model.voice_token_lm import VoiceLMState, VoiceTokenLM

ATOL = 1e-4
PAPER_PARAMS = 370e6
PARAM_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def voice_lm() -> VoiceTokenLM:
    torch.manual_seed(0)
    return VoiceTokenLM(load_config("tiny").voice_token_lm).eval()


def _mixed_inputs(voice_lm: VoiceTokenLM, batch: int = 2) -> torch.Tensor:
    """Semantic vectors and speech-token embeddings interleaved, as the schedule feeds them: (B, 11, dim)."""
    semantic = torch.randn(batch, 5, voice_lm.cfg.dim)
    speech = voice_lm.embed_speech(torch.randint(0, voice_lm.cfg.speech_vocab, (batch, 5)))
    sos = voice_lm.embed_speech(torch.full((batch, 1), voice_lm.sos_id))
    return torch.cat([sos, semantic, speech], dim=1)


@pytest.mark.parametrize("chunks", [[1] * 11, [6, 1, 1, 3], [2, 9]])
@torch.no_grad()
def test_incremental_equals_full(voice_lm: VoiceTokenLM, chunks: list[int]) -> None:
    torch.manual_seed(1)
    inputs = _mixed_inputs(voice_lm)
    full, _ = voice_lm.step(inputs, voice_lm.init_state(batch=2))
    reference = voice_lm.head(voice_lm.decoder(inputs_embeds=inputs).last_hidden_state)
    torch.testing.assert_close(full, reference, atol=ATOL, rtol=0)
    state, pieces, start = voice_lm.init_state(batch=2), [], 0
    for size in chunks:
        logits, state = voice_lm.step(inputs[:, start : start + size], state)
        pieces.append(logits)
        start += size
    torch.testing.assert_close(torch.cat(pieces, dim=1), reference, atol=ATOL, rtol=0)
    assert state.position == 11


@torch.no_grad()
def test_state_roundtrip_gives_identical_next_step(voice_lm: VoiceTokenLM) -> None:
    inputs = _mixed_inputs(voice_lm, batch=1)
    _, state = voice_lm.step(inputs[:, :7], voice_lm.init_state())
    restored = VoiceLMState.from_bytes(state.to_bytes())
    expected, _ = voice_lm.step(inputs[:, 7:], state)
    actual, _ = voice_lm.step(inputs[:, 7:], restored)
    assert torch.equal(actual, expected)


def test_vocabularies(voice_lm: VoiceTokenLM) -> None:
    """Head: speech codes + END_OF_SPEECH; embedding: those + SOS + TURN_OF_SPEECH, all distinct."""
    specials = {voice_lm.end_of_speech_id, voice_lm.sos_id, voice_lm.turn_of_speech_id}
    assert len(specials) == 3 and min(specials) == SPEECH_CODEBOOK_SIZE
    assert voice_lm.head.out_features == voice_lm.end_of_speech_id + 1
    assert voice_lm.decoder.embed_tokens.num_embeddings == max(specials) + 1


def test_minmo_8b_parameter_count() -> None:
    with torch.device("meta"):
        voice_lm = VoiceTokenLM(load_config("minmo-8b").voice_token_lm)
    count = sum(p.numel() for p in voice_lm.parameters())
    assert abs(count - PAPER_PARAMS) <= PARAM_TOLERANCE * PAPER_PARAMS, f"{count / 1e6:.0f}M parameters"
