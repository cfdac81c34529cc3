"""Bounds on everything a client sends the front door, and the checks that enforce them.

Every string and number in a ClientEvent is bounded here, before it reaches Redis or a model: a typed
megabyte of text must cost its sender a status, not the other sessions their latency. Messages name the
field, its size and the limit, and never quote the input itself (it may be huge or hostile).

The limits (README "Input limits"; env variables in `DuplexSettings`):
- text_input.text: MINMO_MAX_TEXT_CHARS characters (default 1,000; the tiny model's context is 4,096 bytes);
- session_config.system_prompt: MINMO_MAX_SYSTEM_PROMPT_CHARS (default 1,000; the llm also refuses a prompt
  over half its context, and trims the oldest turns to keep the context under its limit);
- session_config.voice_instruction and text_input.voice_instruction: MINMO_MAX_INSTRUCTION_CHARS (default 500),
  checked in `voice_control.py` (INVALID_ARGUMENT, as the voice prompt's checks there);
- ids and tokens (session_id, resume_token, turn_id, trace_context keys and values): 256 characters,
  at most 8 trace_context entries;
- audio chunks: MINMO_MAX_CHUNK_MS of audio (the duplex policy's max_chunk_ms);
- turn_detection: vad_threshold in (0, 1) or 0 (default), silence_ms in [0, 10,000] (0: default),
  prefix_padding_ms in [0, 5,000] (0: default), mode one of the defined enum values.
Too long text is RESOURCE_EXHAUSTED (it is a size), a value out of range INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from minmo.model.config import MAX_INSTRUCTION_CHARS
from minmo.v1 import conversation_pb2

MAX_ID_CHARS = 256
MAX_TRACE_CONTEXT_ENTRIES = 8
MAX_SILENCE_MS = 10_000
MAX_PREFIX_PADDING_MS = 5_000
TURN_DETECTION_MODES = frozenset(conversation_pb2.TurnDetection.Mode.values())


class ProtocolError(Exception):
    """End the client's stream with `code` and `message` (bad input, a refused resume, ...); messages quote no
    unbounded input."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing_metadata: tuple = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailing_metadata = trailing_metadata  # e.g. the retry-after-ms hint of a refusal


@dataclass(frozen=True)
class InputLimits:
    """Per-field bounds of the front door (see the module docstring for units and defaults)."""

    max_text_chars: int = 1_000
    max_system_prompt_chars: int = 1_000
    max_instruction_chars: int = 500

    def __post_init__(self) -> None:
        for name in ("max_text_chars", "max_system_prompt_chars", "max_instruction_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_instruction_chars > MAX_INSTRUCTION_CHARS:
            raise ValueError(
                f"max_instruction_chars must be <= {MAX_INSTRUCTION_CHARS} (the voice LM's limit), "
                f"got {self.max_instruction_chars}"
            )

    def check_text(self, text: str) -> None:
        check_length("text_input.text", text, self.max_text_chars)

    def check_session_config(self, config: conversation_pb2.SessionConfig) -> None:
        check_length("session_config.system_prompt", config.system_prompt, self.max_system_prompt_chars)
        check_turn_detection(config.turn_detection)


def check_length(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise ProtocolError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"{field} has {len(value)} characters; the limit is {limit}"
        )


def check_id(field: str, value: str) -> None:
    """Ids and tokens are short opaque strings; a long one is refused before any lookup."""
    check_length(field, value, MAX_ID_CHARS)


def check_trace_context(field: str, carrier) -> None:
    if len(carrier) > MAX_TRACE_CONTEXT_ENTRIES:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field} has {len(carrier)} entries; at most {MAX_TRACE_CONTEXT_ENTRIES} (traceparent, tracestate)",
        )
    for key, value in carrier.items():
        check_length(f"{field} key", key, MAX_ID_CHARS)
        check_length(f"{field} value", value, MAX_ID_CHARS)


def check_turn_detection(detection: conversation_pb2.TurnDetection) -> None:
    """Every field in range, whatever the thread or order of sessions: a pure check of the message."""
    if detection.mode not in TURN_DETECTION_MODES:
        names = ", ".join(conversation_pb2.TurnDetection.Mode.keys())
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT, f"turn_detection.mode {detection.mode} is not one of {names}"
        )
    threshold = detection.vad_threshold
    if threshold != 0.0 and not 0.0 < threshold < 1.0:  # NaN fails both tests
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"turn_detection.vad_threshold {threshold:g} must be in (0, 1), or 0 for the server default",
        )
    _check_range("turn_detection.silence_ms", detection.silence_ms, MAX_SILENCE_MS)
    _check_range("turn_detection.prefix_padding_ms", detection.prefix_padding_ms, MAX_PREFIX_PADDING_MS)


def _check_range(field: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{field} {value} must be in [0, {limit}] ms (0: the server default)"
        )
