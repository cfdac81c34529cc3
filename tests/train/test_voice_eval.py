"""`minmo eval voice`: the rate and pitch measurements on signals of known rate and pitch, and a whole run on tiny."""

import json
import math
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from minmo.cli import app
from minmo.train.voice_eval import (
    INSTRUCTIONS,
    NONE,
    Reply,
    characters,
    f0_frames,
    median_f0,
    summarise,
    voiced_seconds,
)

RATE = 24000


def harmonic_tone(f0: float, seconds: float, rate: int = RATE) -> np.ndarray:
    """A voice-like periodic signal: five harmonics of `f0` with falling amplitude."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))).astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    noise = np.random.default_rng(0).standard_normal(round(seconds * rate))
    return (1e-4 * noise).astype(np.float32)  # -80 dBFS: room noise, not speech


def test_pitch_of_known_tones():
    high, low = median_f0(harmonic_tone(200, 1.0), RATE), median_f0(harmonic_tone(100, 1.0), RATE)
    assert abs(high - 200) < 2 and abs(low - 100) < 2
    assert abs(high / low - 2) < 0.02
    assert math.isnan(median_f0(silence(1.0), RATE)), "no voiced frames, no pitch"


def test_voiced_duration_ignores_silence():
    one = np.concatenate([silence(0.5), harmonic_tone(150, 1.0), silence(0.7)])
    two = np.concatenate([harmonic_tone(150, 1.0), silence(0.3), harmonic_tone(150, 1.0)])
    assert abs(voiced_seconds(one, RATE) - 1.0) < 0.05
    assert abs(voiced_seconds(two, RATE) - 2.0) < 0.05


def test_rate_and_pitch_ratios_against_no_instruction():
    """The same text over twice the voiced time is half the rate; an octave up is twice the F0."""
    text = "Paris is the capital."
    assert characters(text) == 17
    fast, slow = "Please speak very fast.", "Please speak very slowly."

    def reply(instruction: str, pcm: np.ndarray) -> Reply:
        return Reply("q", instruction, text, len(pcm) / RATE, voiced_seconds(pcm, RATE), characters(text),
                     list(f0_frames(pcm, RATE)))

    rows = summarise([
        reply(NONE, np.concatenate([harmonic_tone(120, 1.0), silence(0.5)])),
        reply(slow, np.concatenate([harmonic_tone(120, 2.0), silence(0.2)])),
        reply(fast, harmonic_tone(240, 0.5)),
    ], judged=False)
    by = {row.instruction: row for row in rows}
    assert abs(by[NONE].chars_per_s - 17) < 1
    assert abs(by[slow].rate_ratio - 0.5) < 0.03
    assert abs(by[fast].rate_ratio - 2.0) < 0.1
    assert abs(by[slow].f0_ratio - 1.0) < 0.02 and abs(by[fast].f0_ratio - 2.0) < 0.03
    assert by[NONE].rate_ratio == 1.0 and by[NONE].words_per_s is None


def test_eval_voice_on_tiny(tmp_path: Path):
    out = tmp_path / "voice.json"
    result = CliRunner().invoke(
        app, ["eval", "voice", "--config", "tiny", "--checkpoint", "none", "--limit", "1", "--no-judge",
              "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["instruction_table"] is True, "tiny's voice LM reads the instruction itself"
    assert [row["instruction"] for row in report["rows"]] == list(INSTRUCTIONS)
    assert len(report["replies"]) == len(INSTRUCTIONS) and all(r["audio_s"] > 0 for r in report["replies"])
    assert "median F0 Hz" in result.output and "slow" in result.output
