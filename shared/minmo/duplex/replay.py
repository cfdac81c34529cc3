"""What duplex keeps of the current turn so that a broken encoder or llm stream can be rebuilt on another replica.

The encoder's caches live in the replica that computes them (DESIGN.md §5), so when that replica dies mid-turn
its state is gone; duplex still has what it sent. `UtteranceLog` holds every Encode message written since the
encoder last acknowledged a flush (the audio of the utterance in progress and its EndOfUtterance, if sent), and
the embedding position that utterance started at. A new stream opened at that position and fed the log computes
the same embeddings (each utterance starts from a fresh encoder state, and streaming equals offline), of which
the caller drops those it already delivered. The log is bounded: past `max_samples` of audio it gives up (the
turn then fails as before, with one RESPONSE_DONE), and its memory is freed.

The llm's KV cache is lost with its replica too. The history in Redis rebuilds the earlier turns, but a spoken user
turn has no text there until the llm transcribes it (after the reply), so `LlmTurnLog` keeps the AudioInputs of the
llm's open user turn and, once a response begins, of the turn that response answers: replayed on a new stream after
the history, they give it the context the lost replica generated from (`minmo.duplex.failover`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minmo.audio.pcm import PCM16_BYTES
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ
from minmo.v1 import encoder_pb2, llm_pb2

ENCODER_RATE = ENCODER_SAMPLE_RATE_HZ
MAX_REPLAY_S = 60.0  # audio of one utterance kept for replay (1.9 MB of PCM16 per session at most)
MAX_LLM_REPLAY_BYTES = 16 * 1024 * 1024  # embeddings of one user turn kept (60 s at minmo-8b's width: 10.8 MB)


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
            self.samples += _samples(request)
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
        self.samples = sum(_samples(request) for request in self.requests)

    def restart(self, position: int) -> None:
        """A fresh stream at `position` (a new session, or a reopening at the next turn): nothing to replay."""
        self.requests, self.samples, self.start_position = [], 0, position
        self.overflowed, self._dropped_ends, self._dropped_tail = False, 0, False


def _samples(request: encoder_pb2.EncodeRequest) -> int:
    """Audio samples a message carries (an EndOfUtterance carries the utterance's last ones)."""
    return len(request.audio_chunk.audio or request.end_of_utterance.audio) // PCM16_BYTES


@dataclass
class LlmTurnLog:
    """The AudioInputs written to the llm since its last response began (its open user turn), and those of the
    user turn the last response answers (`answered`; None when they outgrew the bound and cannot be replayed)."""

    max_bytes: int = MAX_LLM_REPLAY_BYTES
    open_turn: list[llm_pb2.AudioInput] = field(default_factory=list)
    open_bytes: int = 0
    open_overflowed: bool = False
    answered: list[llm_pb2.AudioInput] | None = field(default_factory=list)
    answered_turn: str = ""  # the response turn `answered` belongs to

    def record(self, request: llm_pb2.LlmRequest) -> None:
        kind = request.WhichOneof("request")
        if kind == "audio_input" and not self.open_overflowed:
            self.open_bytes += request.audio_input.ByteSize()
            self.open_overflowed = self.open_bytes > self.max_bytes
            if self.open_overflowed:
                self.open_turn = []
            else:
                self.open_turn.append(request.audio_input)
        elif kind == "generate_response":  # the llm closes its open user turn: the response answers it
            self.answered = None if self.open_overflowed else self.open_turn
            self.answered_turn = request.generate_response.turn_id
            self.restart_open_turn()

    def audio_answered_by(self, turn_id: str) -> list[llm_pb2.AudioInput] | None:
        """What to replay before continuing response `turn_id` on a new stream; None: it cannot be rebuilt."""
        return self.answered if turn_id == self.answered_turn else None

    def restart_open_turn(self) -> None:
        self.open_turn, self.open_bytes, self.open_overflowed = [], 0, False

    def restart(self) -> None:
        """A stream opened from the history alone: nothing of it to replay."""
        self.restart_open_turn()
        self.answered, self.answered_turn = [], ""
