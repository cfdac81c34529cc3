"""CosyVoice 2's prompt features by its own extractor (matcha's `mel_spectrogram` with `cosyvoice2.yaml`'s
`feat_extractor` settings, librosa's mel filters), in the reference environment.

Usage: .venv-ref/bin/python tests/compat/prompt_mel_reference.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from matcha.utils.audio import mel_spectrogram


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(99)
    seconds = torch.arange(3 * 24000) / 24000
    pcm = 0.3 * torch.sin(2 * torch.pi * 220 * seconds) + 0.05 * torch.randn(seconds.shape, generator=generator)
    mel = mel_spectrogram(pcm[None], n_fft=1920, num_mels=80, sampling_rate=24000, hop_size=480, win_size=1920,
                          fmin=0, fmax=8000, center=False)
    torch.save({"pcm": pcm, "mel": mel[0]}, out / "reference.pt")


if __name__ == "__main__":
    main()
