"""Client side of the public Conversation API.

- `Session`: a conversation from code (open, send text or audio, iterate events, `say` for a typed turn and
  its whole reply). The README shows it; the web page and `minmo chat --mic` use it.
- `run_chat` (or `ConversationClient.chat` to reuse one channel): one input from a WAV file or typed text,
  returning a `ChatResult`; `minmo chat --wav`, the tests and the benchmarks go through it.
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
from minmo.client.session import Reply, Session, SessionError
from minmo.client.wav import InputAudio, load_wav, write_wav

__all__ = [
    "ChatRequest",
    "ChatResult",
    "ConversationClient",
    "InputAudio",
    "LatencyMs",
    "Reply",
    "RpcFailure",
    "ServerError",
    "Session",
    "SessionError",
    "TurnResult",
    "load_wav",
    "run_chat",
    "write_wav",
]
