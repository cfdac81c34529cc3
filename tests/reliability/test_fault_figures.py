"""The figures `minmo faults` derives from what each probe session saw: the silence a real-time speaker heard mid-reply,
the wait for audio after a moment, and which replies were playing at a kill. Chunk arrivals are given directly
(seconds on a made-up clock)."""

from __future__ import annotations

import pytest

from minmo.reliability.harness import TurnOutcome
from minmo.reliability.runs import _failed_over_waits, _silence_after


def _reply(
    arrivals: list[tuple[float, float]], input_done_at: float = 0.0, failovers: tuple[str, ...] = ()
) -> TurnOutcome:
    """A reply whose chunks of `duration` seconds arrived at `at` (and whose LatencyReport named `failovers`)."""
    turn = TurnOutcome(None, 0, input_done_at=input_done_at, failovers=list(failovers))
    for at, duration in arrivals:
        turn.arrived(at, duration)
    return turn


def test_a_speaker_ahead_of_playback_hears_no_silence_when_chunks_come_late():
    # 3 s of audio at once, then a chunk 2.5 s later: the speaker still had 0.5 s to play
    turn = _reply([(1.0, 3.0), (3.5, 1.0)])
    assert turn.silences == [] and turn.playback_end == pytest.approx(5.0)
    assert turn.waited_after(2.0) == pytest.approx(1.5), "the next chunk came 1.5 s after the moment"


def test_a_dry_speaker_hears_the_gap_until_the_next_chunk():
    turn = _reply([(1.0, 1.0), (2.0, 1.0), (4.5, 1.0)])  # dry from 3.0 to 4.5
    assert turn.silences == [(pytest.approx(3.0), pytest.approx(4.5))]
    assert turn.silence_heard(0.0, 10.0) == pytest.approx(1.5)
    assert turn.silence_heard(4.0, 10.0) == pytest.approx(0.5), "only the part after the moment"


def test_only_replies_playing_at_the_kill_count_for_its_silence():
    turns = [
        _reply([(1.0, 2.0)]),  # played out at 3.0, before the kill
        _reply([(4.0, 1.0), (7.0, 1.0)], input_done_at=3.5),  # playing at 4.5; dry from 5.0 to 7.0
        _reply([(9.0, 1.0)], input_done_at=8.5),  # asked for after the kill
    ]
    assert _silence_after(turns, killed_at=4.5) == (pytest.approx(2.0), 1)


def test_the_turns_a_kill_hit_are_those_whose_report_names_the_component():
    turns = [
        _reply([(4.0, 1.0), (7.0, 1.0)], input_done_at=3.5, failovers=("vocoder",)),  # next chunk 2.5 s after
        _reply([(5.0, 1.0)], input_done_at=3.0, failovers=("vocoder",)),  # 0.5 s
        _reply([(4.6, 1.0)], input_done_at=3.0),  # not hit: on the replica that lived
        _reply([(4.8, 1.0)], input_done_at=3.0, failovers=("llm",)),  # another hop's failover
    ]
    hit, p50, longest = _failed_over_waits(turns, "vocoder", killed_at=4.5)
    assert hit == 2 and p50 == pytest.approx(1.5) and longest == pytest.approx(2.5)
    assert _failed_over_waits(turns, "encoder", killed_at=4.5)[0] == 0
