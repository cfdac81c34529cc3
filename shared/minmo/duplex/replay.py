"""What duplex keeps of the current user turn so that a broken encoder stream can be rebuilt on another replica.

The encoder's caches live in the replica that computes them (DESIGN.md §5), so when that replica dies mid-turn
its state is gone; duplex still has what it sent. `UtteranceLog` holds every Encode message written since the
encoder last acknowledged a flush (the audio of the utterance in progress and its EndOfUtterance, if sent), and
the embedding position that utterance started at. A new stream opened at that position and fed the log computes
the same embeddings (each utterance starts from a fresh encoder state, and streaming equals offline), of which
the caller drops those it already delivered. The log is bounded: past `max_samples` of audio it gives up (the
turn then fails as before, with one RESPONSE_DONE), and its memory is freed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minmo.audio.pcm import PCM16_BYTES
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ
from minmo.v1 import encoder_pb2

ENCODER_RATE = ENCODER_SAMPLE_RATE_HZ
MAX_REPLAY_S = 60.0  # audio of one utterance kept for replay (1.9 MB of PCM16 per session at most)


@dataclass
class UtteranceLog:
    """Encode messages not yet covered by a FlushDone, and where their utterance starts."""

    start_position: int = 0  # embedding position (12.5 Hz frames) of the logged utterance's first frame
    max_samples: int = int(MAX_REPLAY_S * ENCODER_RATE)
    requests: list[encoder_pb2.EncodeRequest] = field(default_factory=list)
    samples: int = 0
    overflowed: bool = False  # audio was dropped: the utterances it belongs to cannot be replayed
    _dropped_ends: int = 0  # EndOfUtterance messages among the dropped ones, not yet flushed
    _dropped_tail: bool = False  # audio after the last dropped EndOfUtterance was dropped too

    @property
    def replayable(self) -> bool:
        return not self.overflowed

    def add(self, request: encoder_pb2.EncodeRequest) -> None:
        is_end = request.HasField("end_of_utterance")
        if not self.overflowed:
            self.samples += len(request.audio_chunk.audio) // PCM16_BYTES
            if self.samples <= self.max_samples:
                self.requests.append(request)
                return
            self._dropped_ends = sum(message.HasField("end_of_utterance") for message in self.requests)
            self.requests, self.samples, self.overflowed = [], 0, True
        self._dropped_ends += is_end
        self._dropped_tail = not is_end

    def flushed(self, end_position: int) -> None:
        """The encoder finished an utterance at `end_position`: drop its messages (through its EndOfUtterance)."""
        self.start_position = end_position
        if self.overflowed:
            self._dropped_ends = max(self._dropped_ends - 1, 0)
            self.overflowed = self._dropped_ends > 0 or self._dropped_tail
            return
        ends = [index for index, request in enumerate(self.requests) if request.HasField("end_of_utterance")]
        self.requests = self.requests[ends[0] + 1 :] if ends else []
        self.samples = sum(len(request.audio_chunk.audio) // PCM16_BYTES for request in self.requests)

    def restart(self, position: int) -> None:
        """A fresh stream at `position` (a new session, or a reopening at the next turn): nothing to replay."""
        self.requests, self.samples, self.start_position = [], 0, position
        self.overflowed, self._dropped_ends, self._dropped_tail = False, 0, False
