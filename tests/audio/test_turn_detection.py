"""VAD endpointing on synthetic probability sequences (32 ms windows, as Silero produces at 16 kHz)."""

import pytest

from minmo.audio.turn_detection import (
    TurnDetectionConfig,
    TurnDetector,
    TurnEvent,
    TurnEventType,
    TurnPhase,
)

FRAME_MS = 32
SPEECH = 0.9
QUIET = 0.05
STARTED = TurnEventType.SPEECH_STARTED
STOPPED = TurnEventType.SPEECH_STOPPED


def probs(*runs: tuple[float, int]) -> list[float]:
    """(probability, number of windows) runs → one probability per window."""
    return [prob for prob, count in runs for _ in range(count)]


def detect(sequence: list[float], detector: TurnDetector | None = None) -> list[tuple[int, TurnEvent]]:
    """(index of the window that fired, event) for every event over the sequence."""
    detector = detector or TurnDetector()
    state = detector.init_state()
    fired = []
    for index, prob in enumerate(sequence):
        event, state = detector.step(prob, index * FRAME_MS, (index + 1) * FRAME_MS, state)
        if event is not None:
            fired.append((index, event))
    return fired


def test_defaults_are_openai_server_vad() -> None:
    config = TurnDetectionConfig()
    assert (config.threshold, config.prefix_padding_ms, config.silence_duration_ms) == (0.5, 300, 500)


def test_a_turn_has_exact_start_and_stop_times() -> None:
    # Speech in windows 10..29 (320 ms to 960 ms), then silence.
    events = detect(probs((QUIET, 10), (SPEECH, 20), (QUIET, 30)))
    # Started once 100 ms of speech is seen: window 13 ends at 448 ms (128 ms after onset).
    # Stopped when 500 ms of silence has passed: the window ending at 1472 ms (960 + 512).
    assert events == [
        (13, TurnEvent(STARTED, audio_ms=320 - 300, speech_ms=320)),
        (45, TurnEvent(STOPPED, audio_ms=960 + 500, speech_ms=960)),
    ]


def test_without_a_min_speech_duration_the_first_speech_window_starts_the_turn() -> None:
    detector = TurnDetector(TurnDetectionConfig(min_speech_duration_ms=0))
    events = detect(probs((QUIET, 20), (SPEECH, 1), (QUIET, 20)), detector)
    assert events == [
        (20, TurnEvent(STARTED, audio_ms=640 - 300, speech_ms=640)),
        (36, TurnEvent(STOPPED, audio_ms=672 + 500, speech_ms=672)),
    ]


def test_short_blips_are_ignored() -> None:
    assert detect(probs((QUIET, 10), (SPEECH, 2), (QUIET, 5), (SPEECH, 3), (QUIET, 30))) == []


def test_a_dip_during_a_candidate_restarts_the_onset() -> None:
    events = detect(probs((QUIET, 10), (SPEECH, 3), (QUIET, 1), (SPEECH, 4), (QUIET, 20)))
    assert events[0] == (17, TurnEvent(STARTED, audio_ms=448 - 300, speech_ms=448))


def test_a_pause_shorter_than_the_silence_duration_keeps_the_turn() -> None:
    # Two phrases with a 448 ms pause (14 windows) between them: one turn.
    events = detect(probs((QUIET, 10), (SPEECH, 20), (QUIET, 14), (SPEECH, 10), (QUIET, 30)))
    speech_end_ms = (10 + 20 + 14 + 10) * FRAME_MS
    assert [(event.type, event.speech_ms) for _, event in events] == [(STARTED, 320), (STOPPED, speech_end_ms)]


def test_a_pause_as_long_as_the_silence_duration_ends_the_turn() -> None:
    events = detect(probs((QUIET, 10), (SPEECH, 20), (QUIET, 16), (SPEECH, 10), (QUIET, 30)))
    assert [event.type for _, event in events] == [STARTED, STOPPED, STARTED, STOPPED]


def test_the_prefix_padding_never_reaches_before_the_stream() -> None:
    (_, started), _ = detect(probs((QUIET, 2), (SPEECH, 10), (QUIET, 20)))
    assert (started.audio_ms, started.speech_ms) == (0, 64)


def test_a_probability_equal_to_the_threshold_is_speech() -> None:
    assert [event.type for _, event in detect(probs((0.5, 10), (0.49, 20)))] == [STARTED, STOPPED]


def test_flush_closes_an_open_turn_at_its_last_speech() -> None:
    detector = TurnDetector()
    state = detector.init_state()
    for index in range(10):
        _, state = detector.step(SPEECH, index * FRAME_MS, (index + 1) * FRAME_MS, state)
    assert state.phase is TurnPhase.SPEAKING
    event, state = detector.flush(state)
    assert event == TurnEvent(STOPPED, audio_ms=320, speech_ms=320)
    assert state == detector.init_state()
    assert detector.flush(state) == (None, state)


@pytest.mark.parametrize(
    "overrides", [{"threshold": 0.0}, {"threshold": 1.0}, {"silence_duration_ms": -1}, {"prefix_padding_ms": -5}]
)
def test_invalid_config_is_rejected(overrides: dict) -> None:
    with pytest.raises(ValueError, match="turn detection"):
        TurnDetectionConfig(**overrides)
