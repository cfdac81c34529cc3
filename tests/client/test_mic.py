"""`minmo chat --mic`: without an audio device (this machine, CI) it says so in one line; the player that feeds
the speaker plays replies in order, reports what it played and falls silent at once on barge-in."""

from __future__ import annotations

import subprocess
import sys

from minmo.client.mic import OUTPUT_RATE, Player

FRAMES = 240  # one PortAudio callback: 10 ms at 24 kHz
BYTES = 2 * FRAMES


def test_mic_without_an_audio_device_is_one_clear_line():
    result = subprocess.run(
        [sys.executable, "-m", "minmo.cli", "chat", "--mic", "--server", "127.0.0.1:1", "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1 and "Traceback" not in output, output
    assert output.startswith("error: no ") and len(output.splitlines()) == 1, output


def _pull(player: Player) -> bytes:
    out = bytearray(BYTES)
    player.callback(out, FRAMES, None, None)
    return bytes(out)


def test_player_plays_in_order_then_silence_and_counts_what_it_played():
    player = Player(OUTPUT_RATE)
    player.add("r1", b"\x01\x00" * FRAMES)
    player.add("r1", b"\x02\x00" * (FRAMES // 2))
    assert _pull(player) == b"\x01\x00" * FRAMES and player.current == "r1"
    assert _pull(player) == b"\x02\x00" * (FRAMES // 2) + bytes(BYTES // 2)
    assert player.played_ms("r1") == 15.0 and player.current is None
    assert _pull(player) == bytes(BYTES)


def test_player_stop_drops_the_rest_of_the_reply_at_once():
    player = Player(OUTPUT_RATE)
    player.add("r1", b"\x05\x00" * FRAMES * 100)  # a second of reply
    _pull(player)
    player.stop()  # the user spoke over it
    assert _pull(player) == bytes(BYTES) and player.played_ms("r1") == 10.0
    player.add("r2", b"\x07\x00" * FRAMES)  # the next reply plays normally
    assert _pull(player) == b"\x07\x00" * FRAMES and player.current == "r2"
