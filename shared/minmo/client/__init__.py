"""Client side of the public Conversation API: run a conversation from a WAV file or typed text.

`run_chat` (or `ConversationClient.chat` to reuse one channel) returns a `ChatResult`; the `minmo chat`
command, the tests and the benchmarks all go through it.
"""

from minmo.client.chat import (
    ChatRequest,
    ChatResult,
    ConversationClient,
    LatencyMs,
    RpcFailure,
    ServerError,
    TurnResult,
    run_chat,
)
from minmo.client.wav import InputAudio, load_wav, write_wav

__all__ = [
    "ChatRequest",
    "ChatResult",
    "ConversationClient",
    "InputAudio",
    "LatencyMs",
    "RpcFailure",
    "ServerError",
    "TurnResult",
    "load_wav",
    "run_chat",
    "write_wav",
]
