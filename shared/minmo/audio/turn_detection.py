"""VAD endpointing: turns per-window speech probabilities into speech-started / speech-stopped events.

This is the turn-taking policy the duplex service falls back to while the full-duplex predictor is
untrained, with the semantics (and defaults) of OpenAI's `server_vad`, so clients built for that API
see familiar timings:
- speech starts at the first window whose probability reaches `threshold`; the event's `audio_ms`
  reaches back `prefix_padding_ms` so the words' onset is not clipped;
- speech stops once the probability has stayed below `threshold` for `silence_duration_ms`; the
  event's `audio_ms` is the end of that silence (OpenAI's `audio_end_ms`), `speech_ms` the end of the
  last speech window. A shorter pause keeps the turn.
One addition: a candidate turn must stay above the threshold for `min_speech_duration_ms` before it
counts, so a click or a cough-length blip never interrupts the assistant.

The detector is a pure function of (config, state, window): state is a small frozen dataclass, so one
detector serves every session and a session's state can be stored anywhere.
"""

from __future__ import annotations

import dataclasses
import enum

DEFAULT_THRESHOLD = 0.5
DEFAULT_PREFIX_PADDING_MS = 300
DEFAULT_SILENCE_DURATION_MS = 500
DEFAULT_MIN_SPEECH_DURATION_MS = 100  # ~4 Silero windows of 32 ms: longer than a click, short for a syllable


@dataclasses.dataclass(frozen=True)
class TurnDetectionConfig:
    """Endpointing knobs; the defaults are OpenAI server_vad's plus a click filter."""

    threshold: float = DEFAULT_THRESHOLD
    prefix_padding_ms: float = DEFAULT_PREFIX_PADDING_MS
    silence_duration_ms: float = DEFAULT_SILENCE_DURATION_MS
    min_speech_duration_ms: float = DEFAULT_MIN_SPEECH_DURATION_MS

    def __post_init__(self) -> None:
        """Values may come from a client's session config, so bad ones raise ValueError, not assert."""
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"turn detection threshold must be in (0, 1), got {self.threshold}")
        for name in ("prefix_padding_ms", "silence_duration_ms", "min_speech_duration_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"turn detection {name} must be >= 0, got {getattr(self, name)}")


class TurnPhase(enum.StrEnum):
    SILENCE = "silence"
    PENDING = "pending"  # above threshold, not yet for min_speech_duration_ms
    SPEAKING = "speaking"


class TurnEventType(enum.StrEnum):
    SPEECH_STARTED = "speech_started"
    SPEECH_STOPPED = "speech_stopped"


@dataclasses.dataclass(frozen=True)
class TurnEvent:
    """A turn boundary, in milliseconds of stream audio.

    `audio_ms`: STARTED — speech onset minus the prefix padding (≥ 0); STOPPED — end of the silence
    that ended the turn. `speech_ms`: the speech itself — onset for STARTED, end of the last speech
    window for STOPPED.
    """

    type: TurnEventType
    audio_ms: float
    speech_ms: float


@dataclasses.dataclass(frozen=True)
class TurnState:
    """Where one stream is in the policy; `onset_ms` and `last_speech_end_ms` are None in SILENCE."""

    phase: TurnPhase = TurnPhase.SILENCE
    onset_ms: float | None = None
    last_speech_end_ms: float | None = None


class TurnDetector:
    """VAD endpointing over windows `(prob, start_ms, end_ms)`; stateless, see `TurnState`."""

    def __init__(self, config: TurnDetectionConfig | None = None) -> None:
        self.config = config or TurnDetectionConfig()

    def init_state(self) -> TurnState:
        return TurnState()

    def step(self, prob: float, start_ms: float, end_ms: float, state: TurnState) -> tuple[TurnEvent | None, TurnState]:
        """Advance by one VAD window; returns the event this window triggers, if any, and the new state."""
        is_speech = prob >= self.config.threshold
        if state.phase is TurnPhase.SPEAKING:
            return self._speaking(is_speech, end_ms, state)
        if not is_speech:
            return None, TurnState()
        onset_ms = start_ms if state.phase is TurnPhase.SILENCE else state.onset_ms
        if end_ms - onset_ms < self.config.min_speech_duration_ms:
            return None, TurnState(TurnPhase.PENDING, onset_ms, end_ms)
        started = TurnEvent(TurnEventType.SPEECH_STARTED, max(0.0, onset_ms - self.config.prefix_padding_ms), onset_ms)
        return started, TurnState(TurnPhase.SPEAKING, onset_ms, end_ms)

    def flush(self, state: TurnState) -> tuple[TurnEvent | None, TurnState]:
        """End of stream: close an open turn at the end of its last speech window (no silence to wait for)."""
        if state.phase is not TurnPhase.SPEAKING:
            return None, TurnState()
        end_ms = state.last_speech_end_ms
        return TurnEvent(TurnEventType.SPEECH_STOPPED, end_ms, end_ms), TurnState()

    def _speaking(self, is_speech: bool, end_ms: float, state: TurnState) -> tuple[TurnEvent | None, TurnState]:
        if is_speech:
            return None, dataclasses.replace(state, last_speech_end_ms=end_ms)
        silence_ms = end_ms - state.last_speech_end_ms
        if silence_ms < self.config.silence_duration_ms:
            return None, state
        speech_end_ms = state.last_speech_end_ms
        stopped_ms = speech_end_ms + self.config.silence_duration_ms
        return TurnEvent(TurnEventType.SPEECH_STOPPED, stopped_ms, speech_end_ms), TurnState()
