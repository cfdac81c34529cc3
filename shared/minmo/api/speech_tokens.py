"""Speech tokens on the wire: a run of any length travels as messages of a bounded size.

The voice-token LM may emit a long run at once (at TextEnd it speaks everything left: 975 tokens for a
long reply), while the vocoder bounds the tokens one message may carry (MINMO_MAX_TOKENS_PER_MESSAGE,
default 500) so that one message cannot ask for unbounded compute. Senders split every run with
`split_speech_tokens`, so that internal limit never reaches a user.
"""

from __future__ import annotations

from collections.abc import Sequence

from minmo.model.config import SPEECH_BLOCK
from minmo.v1 import common_pb2

SPEECH_TOKENS_PER_MESSAGE = 5 * SPEECH_BLOCK  # 75 tokens = 3 s of audio at 25 Hz; far below the vocoder's limit


def split_speech_tokens(
    ids: Sequence[int], first_index: int, size: int = SPEECH_TOKENS_PER_MESSAGE
) -> list[common_pb2.SpeechTokens]:
    """`ids` (the turn's tokens from `first_index` on) as consecutive messages of at most `size` tokens."""
    assert size > 0, f"message size must be positive, got {size}"
    return [
        common_pb2.SpeechTokens(ids=ids[start : start + size], first_index=first_index + start)
        for start in range(0, len(ids), size)
    ]
