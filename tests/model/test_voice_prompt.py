"""Voice prompt checks: rate, 3-30 s, silence are refused with a message; a usable prompt's mel conditions the
flow matching deterministically (its first frames are the prompt's, then the reply differs from no prompt)."""

from __future__ import annotations

import pytest
import torch

from minmo.model.config import load_config
from minmo.model.flow_matching import FlowMatching
from minmo.model.voice_prompt import SAMPLE_RATE, InvalidPrompt, check_prompt, prompt_mel


def _speech_like(seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.3 * torch.sin(2 * torch.pi * 180 * t) * (1 + torch.sin(2 * torch.pi * 3 * t)) / 2


@pytest.mark.parametrize(
    ("pcm", "rate", "message"),
    [
        (_speech_like(5), 16000, "must be 24000 Hz audio, got 16000 Hz"),
        (_speech_like(2), SAMPLE_RATE, "must last 3-30 s, got 2.00 s"),
        (_speech_like(31), SAMPLE_RATE, "must last 3-30 s, got 31.00 s"),
        (torch.zeros(5 * SAMPLE_RATE), SAMPLE_RATE, "is silent"),
    ],
    ids=["rate", "short", "long", "silence"],
)
def test_bad_prompts_are_refused_with_a_reason(pcm: torch.Tensor, rate: int, message: str) -> None:
    with pytest.raises(InvalidPrompt, match=message):
        check_prompt(pcm, rate)


@torch.no_grad()
def test_prompt_mel_conditions_the_flow() -> None:
    pcm = _speech_like(3)
    check_prompt(pcm, SAMPLE_RATE)
    cfg = load_config("tiny").flow
    mel = prompt_mel(pcm)
    assert mel.shape == (cfg.mel_bins, 150) and torch.isfinite(mel).all()
    torch.manual_seed(0)
    flow = FlowMatching(cfg).eval()
    prompt_tokens = torch.randint(0, cfg.speech_vocab, (1, mel.shape[1] // cfg.token_mel_ratio))
    tokens = torch.randint(0, cfg.speech_vocab, (1, 20), generator=torch.Generator().manual_seed(1))
    with_prompt = flow(tokens, None, prompt_tokens, mel[None])
    assert torch.equal(with_prompt, flow(tokens, None, prompt_tokens, mel[None]))  # deterministic
    assert not torch.allclose(with_prompt, flow(tokens), atol=1e-3)
