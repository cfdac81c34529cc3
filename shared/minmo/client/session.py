"""A conversation from code: open a session, send text or audio as it comes, iterate the server's events.

    async with await Session.open("127.0.0.1:50051") as session:
        reply = await session.say("What is the capital of France?")
        print(reply.text, reply.audio_ms, reply.end_reason)

`Session` is the whole public API (`minmo.v1.Conversation/Converse`, documented in docs/api.md) behind a few
methods: `send_text`, `send_audio` (PCM16 as a microphone gives it, any chunking), `cancel_response`,
`playback_position` (for barge-in truncation to what was really played), and `events()`, the ServerEvents in
order. `say` and `reply` are the common case: one typed turn and its whole answer. The web page bridge and
`minmo chat --mic` are built on it; `run_chat` (one input from a file) stays for `minmo chat --wav`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from minmo.audio.pcm import PCM16_BYTES
from minmo.client.chat import OUTPUT_SAMPLE_RATE_HZ, ConversationClient, LatencyMs
from minmo.client.wav import MS_PER_S
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ
from minmo.v1 import common_pb2, conversation_pb2

DEFAULT_INPUT_RATE_HZ = ENCODER_SAMPLE_RATE_HZ
READY_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
_RESPONSE_ENDS = (TurnType.RESPONSE_DONE, TurnType.RESPONSE_INTERRUPTED)


class SessionError(RuntimeError):
    """The conversation could not start or ended with an error; `code` is the gRPC status name (or NOT_READY)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Reply:
    """One assistant response, collected from its events."""

    turn_id: str
    text: str = ""
    audio: bytearray = field(default_factory=bytearray)  # PCM16LE mono at sample_rate_hz
    sample_rate_hz: int = OUTPUT_SAMPLE_RATE_HZ
    end_reason: str = ""  # COMPLETED, MAX_TOKENS (cut at the server's length cap), INTERRUPTED, FAILED
    errors: list[str] = field(default_factory=list)
    latency: LatencyMs | None = None

    @property
    def audio_ms(self) -> float:
        return len(self.audio) / PCM16_BYTES * MS_PER_S / self.sample_rate_hz


class Session:
    """One open Converse stream. Create it with `await Session.open(...)`; close it with `close()` (or `async with`).

    Events are read in the background from the moment the session opens and queue up until `events()` (or
    `reply()`) takes them, so nothing is lost between a send and the read that follows it.
    """

    def __init__(self, client: ConversationClient, call: grpc.aio.StreamStreamCall, started) -> None:
        self._client = client
        self._call = call
        self.started: conversation_pb2.SessionStarted = started
        self._queue: asyncio.Queue[conversation_pb2.ServerEvent | BaseException | None] = asyncio.Queue()
        self._write_lock = asyncio.Lock()  # one write at a time: two started together hang a gRPC stream for good
        self._reader = asyncio.create_task(self._read(), name=f"session-reader-{started.session_id}")

    @property
    def session_id(self) -> str:
        return self.started.session_id

    @property
    def output_sample_rate_hz(self) -> int:
        return self.started.output_format.sample_rate_hz

    @classmethod
    async def open(
        cls,
        target: str,
        *,
        input_sample_rate_hz: int = DEFAULT_INPUT_RATE_HZ,
        output_sample_rate_hz: int = OUTPUT_SAMPLE_RATE_HZ,
        system_prompt: str = "",
        voice_instruction: str = "",
        text_only: bool = False,
        ready_timeout_s: float = READY_TIMEOUT_S,
        voice_prompt: conversation_pb2.VoicePrompt | None = None,
    ) -> Session:
        """Connect to `target` ("host:port"), waiting up to `ready_timeout_s` for the server to be SERVING, and
        start a session; raises SessionError when it cannot."""
        client = ConversationClient(target)
        try:
            not_ready = await client.wait_until_ready(ready_timeout_s)
            if not_ready is not None:
                raise SessionError("NOT_READY", not_ready)
            call = client.stub.Converse()
            config = conversation_pb2.SessionConfig(
                input_sample_rate_hz=input_sample_rate_hz,
                output_sample_rate_hz=output_sample_rate_hz,
                system_prompt=system_prompt,
                voice_instruction=voice_instruction,
                text_only=text_only,
                voice_prompt=voice_prompt,
            )
            try:
                await call.write(conversation_pb2.ClientEvent(session_config=config))
                first = await asyncio.wait_for(call.read(), ready_timeout_s)
            except grpc.aio.AioRpcError as error:
                raise SessionError(error.code().name, error.details() or "") from None
            if first is grpc.aio.EOF or not first.HasField("session_started"):
                message = first.error.message if first is not grpc.aio.EOF and first.HasField("error") else ""
                raise SessionError("UNAVAILABLE", message or "the server ended the stream before the session started")
        except BaseException:
            await client.close()
            raise
        return cls(client, call, first.session_started)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- sending ----------------------------------------------------------------------------------

    async def send_audio(self, pcm16: bytes) -> None:
        """Microphone audio: PCM16LE mono at the session's input rate, in chunks of 20-100 ms as captured."""
        await self._send(conversation_pb2.ClientEvent(audio_chunk=conversation_pb2.AudioChunk(audio=pcm16)))

    async def send_text(self, text: str, voice_instruction: str = "") -> None:
        """A whole typed user turn; the assistant answers it as if it had been spoken (in the voice
        `voice_instruction` asks for, this turn only; empty: the session's)."""
        text_input = conversation_pb2.TextInput(text=text, voice_instruction=voice_instruction)
        await self._send(conversation_pb2.ClientEvent(text_input=text_input))

    async def cancel_response(self) -> None:
        """Stop the current response (as if the user had spoken over it)."""
        await self._send(conversation_pb2.ClientEvent(cancel_response=conversation_pb2.CancelResponse()))

    async def playback_position(self, turn_id: str, played_ms: float) -> None:
        """Tell the server how much of response `turn_id` has really been played, so a barge-in keeps only that."""
        position = conversation_pb2.PlaybackPosition(turn_id=turn_id, played_ms=round(played_ms))
        await self._send(conversation_pb2.ClientEvent(playback_position=position))

    # --- receiving --------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[conversation_pb2.ServerEvent]:
        """The server's events in order, until the session ends; a stream that fails raises SessionError."""
        while (item := await self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def reply(self, timeout_s: float | None = None) -> Reply:
        """Collect the next response (text, audio, end reason, latency report) from the events."""
        async with asyncio.timeout(timeout_s):
            reply: Reply | None = None
            async for event in self.events():
                kind = event.WhichOneof("event")
                if kind == "turn_event" and event.turn_event.type == TurnType.RESPONSE_STARTED:
                    reply = Reply(turn_id=event.turn_event.turn_id, sample_rate_hz=self.output_sample_rate_hz)
                elif reply is None:
                    continue
                elif kind == "transcript" and event.transcript.role == common_pb2.ROLE_ASSISTANT:
                    transcript = event.transcript
                    reply.text = transcript.text if transcript.is_final else reply.text + transcript.text
                elif kind == "audio_output":
                    reply.audio += event.audio_output.audio
                elif kind == "error":
                    reply.errors.append(f"{event.error.code}: {event.error.message}")
                elif kind == "turn_event" and event.turn_event.type in _RESPONSE_ENDS:
                    reply.end_reason = EndReason.Name(event.turn_event.end_reason)
                elif kind == "latency_report":
                    reply.latency = LatencyMs.from_proto(event.latency_report)
                    return reply
        raise SessionError("UNAVAILABLE", "the session ended before the reply did")

    async def say(self, text: str, timeout_s: float | None = None) -> Reply:
        """Send a typed turn and return the whole reply."""
        await self.send_text(text)
        return await self.reply(timeout_s)

    async def close(self) -> None:
        """End the session (EndSession), wait briefly for the server to close the stream, release the channel."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, SessionError):
            await self._send(conversation_pb2.ClientEvent(end_session=conversation_pb2.EndSession()))
            async with self._write_lock:
                await self._call.done_writing()
        await asyncio.wait({self._reader}, timeout=CLOSE_TIMEOUT_S)
        self._reader.cancel()
        self._call.cancel()
        await self._client.close()

    async def _send(self, event: conversation_pb2.ClientEvent) -> None:
        """Write one event; safe from several tasks at once (a microphone task and a keyboard task, say)."""
        try:
            async with self._write_lock:
                await self._call.write(event)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            code = await self._call.code() if self._call.done() else grpc.StatusCode.UNAVAILABLE
            details = await self._call.details() if self._call.done() else "the stream is closed"
            raise SessionError(code.name, details or "the stream is closed") from None

    async def _read(self) -> None:
        try:
            while (event := await self._call.read()) is not grpc.aio.EOF:
                self._queue.put_nowait(event)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self._queue.put_nowait(SessionError(error.code().name, error.details() or ""))
        finally:
            self._queue.put_nowait(None)
