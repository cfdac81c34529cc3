"""A session's audio input path: client PCM -> 16 kHz -> Silero VAD -> turn events, routing speech audio.

Only the user's speech (with its prefix padding) goes on to the encoder; silence between turns never
costs encoder or LLM compute. `process` returns actions in stream order — speech started, audio to
encode, speech stopped — so the caller forwards exactly the samples of each utterance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minmo.audio.pcm import StreamingResampler
from minmo.audio.turn_detection import TurnDetector, TurnEvent, TurnEventType
from minmo.audio.vad import StreamingVad
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ

ENCODER_RATE = ENCODER_SAMPLE_RATE_HZ  # also the Silero VAD's rate
RECENT_AUDIO_S = 3.0  # enough for prefix padding + the VAD's confirmation delay


@dataclass(frozen=True)
class SpeechStarted:
    event: TurnEvent


@dataclass(frozen=True)
class SpeechAudio:
    samples: np.ndarray  # float32, 16 kHz
    start_sample: int  # absolute 16 kHz sample index of samples[0]


@dataclass(frozen=True)
class SpeechStopped:
    event: TurnEvent


Action = SpeechStarted | SpeechAudio | SpeechStopped


class AudioInput:
    """One session's input state: resampler, VAD and turn-detector states, and recent audio."""

    def __init__(self, vad: StreamingVad, detector: TurnDetector, input_rate: int) -> None:
        self.vad = vad
        self.detector = detector
        self.resampler = StreamingResampler(input_rate, ENCODER_RATE)
        self.vad_state = vad.init_state()
        self.turn_state = detector.init_state()
        self.recent = np.zeros(0, dtype=np.float32)
        self.recent_start = 0  # absolute sample index of recent[0]
        self.speech_from: int | None = None  # next sample of the current utterance still to forward

    @property
    def total_samples(self) -> int:
        return self.recent_start + self.recent.shape[0]

    def process(self, samples: np.ndarray) -> list[Action]:
        """Feed float32 samples at the input rate; CPU work (VAD), so async callers use an executor."""
        audio = self.resampler.process(samples)
        self._remember(audio)
        frames, self.vad_state = self.vad.step(audio, self.vad_state)
        actions: list[Action] = []
        for frame in frames:
            event, self.turn_state = self.detector.step(frame.prob, frame.start_ms, frame.end_ms, self.turn_state)
            if event is not None:
                actions.extend(self._on_event(event))
        if self.speech_from is not None:
            actions.extend(self._forward_until(self.total_samples))
        return actions

    def _on_event(self, event: TurnEvent) -> list[Action]:
        if event.type == TurnEventType.SPEECH_STARTED:
            self.speech_from = max(_sample(event.audio_ms), self.recent_start)
            return [SpeechStarted(event)]
        forwarded = self._forward_until(min(_sample(event.audio_ms), self.total_samples))
        self.speech_from = None
        return [*forwarded, SpeechStopped(event)]

    def _forward_until(self, end: int) -> list[Action]:
        assert self.speech_from is not None
        start = self.speech_from
        if end <= start:
            return []
        self.speech_from = end
        chunk = self.recent[start - self.recent_start : end - self.recent_start]
        return [SpeechAudio(chunk.copy(), start)]

    def _remember(self, audio: np.ndarray) -> None:
        self.recent = np.concatenate([self.recent, audio.astype(np.float32, copy=False)])
        excess = self.recent.shape[0] - int(RECENT_AUDIO_S * ENCODER_RATE)
        if excess > 0:
            self.recent = self.recent[excess:]
            self.recent_start += excess
            if self.speech_from is not None:
                self.speech_from = max(self.speech_from, self.recent_start)


def _sample(ms: float) -> int:
    return round(ms * ENCODER_RATE / 1000)
