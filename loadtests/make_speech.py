"""Write the load test's spoken turns: short user questions synthesised offline with espeak-ng, 16 kHz mono WAV.

    .venv/bin/python loadtests/make_speech.py [OUT_DIR]      (default: loadtests/speech)

Several espeak-ng voices and speaking rates, so the VAD and endpointing see varied speech. Each file gets 300 ms of
silence in front and 200 ms behind (the microphone adds its own noise floor between turns). Needs the Debian
package espeak-ng. Real recordings work as well: `minmo load --wav DIR` takes any 16 kHz WAVs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16000
LEAD_S, TAIL_S = 0.3, 0.2
PROMPTS = (
    ("en-us", 160, "What is the weather like today?"),
    ("en-gb", 150, "Can you tell me a short story?"),
    ("en-us+f3", 170, "How far away is the moon?"),
    ("en-gb+m3", 140, "Please remind me to call my sister."),
    ("en-us+m5", 175, "What should I cook for dinner tonight?"),
    ("en-us+f4", 155, "Play some quiet music, please."),
)


def synthesize(voice: str, words_per_minute: int, text: str) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as handle:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", handle.name, text], check=True)
        audio, rate = sf.read(handle.name, dtype="float32")
    audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    audio *= 0.5 / max(1e-6, float(np.abs(audio).max()))
    return np.concatenate([np.zeros(int(LEAD_S * RATE), np.float32), audio, np.zeros(int(TAIL_S * RATE), np.float32)])


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for index, (voice, rate, text) in enumerate(PROMPTS):
        path = out / f"turn-{index:02d}.wav"
        sf.write(path, synthesize(voice, rate, text), RATE, subtype="PCM_16")
        print(path, text)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "speech")
