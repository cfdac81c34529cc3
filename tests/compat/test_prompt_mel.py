"""The voice prompt's mel equals CosyVoice 2's own feature extractor (matcha's `mel_spectrogram` with
`cosyvoice2.yaml`'s settings and librosa's filters, run in the reference environment) on a 3 s tone + noise.

Tolerance: atol 1e-4 on log-mel values of magnitude ~10 (observed ~2e-7).
"""

from __future__ import annotations

from pathlib import Path

import torch

from minmo.model.voice_prompt import prompt_mel

from .conftest import reference_dump


def test_prompt_mel_matches_cosyvoice2() -> None:
    reference = torch.load(
        reference_dump(Path(__file__).with_name("prompt_mel_reference.py"), "prompt-mel") / "reference.pt",
        weights_only=True,
    )
    mel = prompt_mel(reference["pcm"])
    assert mel.shape == (80, reference["pcm"].shape[0] // 480)
    torch.testing.assert_close(mel, reference["mel"], atol=1e-4, rtol=1e-5)
