"""The stack as users run it: `minmo up` starts Redis and five service processes; `minmo chat` talks
to it; Ctrl-C stops everything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import soundfile

from minmo.audio.synthetic import utterance
from minmo.bench.turn import free_port_block
from minmo.serving.stack import wait_until_serving

MINMO = [sys.executable, "-m", "minmo.cli"]


def test_minmo_up_serves_a_spoken_turn_and_stops_cleanly(tmp_path):
    port = free_port_block()
    wav = tmp_path / "question.wav"
    soundfile.write(wav, utterance(seed=4), 16000, subtype="PCM_16")
    up = subprocess.Popen([*MINMO, "up", "--config", "tiny", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        wait_until_serving(f"127.0.0.1:{port}", up, timeout_s=240)
        chat = subprocess.run(
            [*MINMO, "chat", "--server", f"127.0.0.1:{port}", "--wav", str(wav), "--no-realtime", "--json",
             "--out", str(tmp_path / "answer.wav"), "--timeout", "120"],
            capture_output=True, text=True, timeout=300,
        )
        assert chat.returncode == 0, chat.stderr
        summary = json.loads(chat.stdout)
        [turn] = summary["turns"]
        assert turn["audio_ms"] > 500 and not turn["interrupted"]
        assert all(turn["latency_ms"][hop] is not None for hop in ("encoder", "llm_first_token", "first_audio"))
        answer, rate = soundfile.read(tmp_path / "answer.wav")
        assert rate == 24000 and np.abs(answer).max() > 0
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0
    assert "Conversation API" in out
