"""Client for the public Conversation API: send one input (spoken audio or a typed turn), collect the reply.

The server decides turns from the audio itself (VAD or the duplex predictor), so a file-based client has
to behave like a microphone: PCM16 chunks of 100 ms at real-time pace, then silence so that endpointing
sees the speech end. The reply is complete when every response the server started has both its final
TurnEvent and its LatencyReport. Tests and benchmarks reuse `run_chat` for that bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minmo.audio.pcm import PCM16_BYTES, float_to_pcm16
from minmo.client.wav import MS_PER_S, InputAudio
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ, VOCODER_SAMPLE_RATE_HZ
from minmo.v1 import common_pb2, conversation_pb2, conversation_pb2_grpc

CHUNK_MS = 100
TRAILING_SILENCE_MS = 1500
OUTPUT_SAMPLE_RATE_HZ = VOCODER_SAMPLE_RATE_HZ  # the vocoder's own rate: no resampling at the server
TEXT_SESSION_INPUT_RATE_HZ = ENCODER_SAMPLE_RATE_HZ  # SessionConfig needs an input rate even when only text is sent
DEFAULT_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0  # how long the server may take to close the stream after EndSession
NO_SPEECH_WAIT_S = 5.0  # after the last audio chunk: no USER_SPEECH_STARTED by then means the audio held no speech
READY_POLL_S = 0.25  # how often to ask grpc.health.v1 while the server is still starting
READY_ATTEMPT_S = 2.0  # one health check waits this long for a connection before asking again
RECONNECT_BACKOFF_MS = 2000  # retry a server that is still starting this often (gRPC's default grows to 120 s)
TYPED_USER_TURN = "typed"  # key of the user turn that a TextInput stands for
JSON_LATENCY_FIELDS = ("encoder", "llm_first_token", "voicelm_first_tokens", "vocoder_first_chunk", "first_audio")

TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
_END_SESSION = conversation_pb2.ClientEvent(end_session=conversation_pb2.EndSession())
EventCallback = Callable[[conversation_pb2.ServerEvent], None]
WaitCallback = Callable[[str], None]


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to run: exactly one of `audio` (spoken input) or `text` (a typed turn)."""

    audio: InputAudio | None = None
    text: str | None = None
    system_prompt: str = ""
    voice_instruction: str = ""
    voice_prompt: InputAudio | None = None  # the voice to mimic, 3-30 s (SessionConfig.voice_prompt)
    realtime: bool = True  # pace audio like a microphone; False sends it as fast as the stream takes it
    trailing_silence_ms: int = TRAILING_SILENCE_MS
    timeout_s: float = DEFAULT_TIMEOUT_S  # for SessionStarted, and for the reply once the input is sent
    output_sample_rate_hz: int = OUTPUT_SAMPLE_RATE_HZ

    def __post_init__(self) -> None:
        if (self.audio is None) == (self.text is None):
            raise ValueError("a chat needs exactly one input: audio or text")

    @property
    def input_sample_rate_hz(self) -> int:
        return self.audio.sample_rate if self.audio is not None else TEXT_SESSION_INPUT_RATE_HZ


@dataclass(frozen=True)
class LatencyMs:
    """A LatencyReport in milliseconds; None where the turn never reached that hop."""

    trace_id: str = ""
    duplex_decision: float | None = None
    encoder: float | None = None
    llm_first_token: float | None = None
    llm_five_tokens: float | None = None
    voicelm_first_tokens: float | None = None
    vocoder_first_chunk: float | None = None
    first_audio: float | None = None
    network: float | None = None
    queue: float | None = None

    @classmethod
    def from_proto(cls, report: conversation_pb2.LatencyReport) -> LatencyMs:
        names = [f.name for f in fields(cls) if f.name != "trace_id"]
        values = {name: getattr(report, f"{name}_ms") if report.HasField(f"{name}_ms") else None for name in names}
        return cls(trace_id=report.trace_id, **values)

    def measured(self) -> dict[str, float]:
        """The hops the turn reached, in field order."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "trace_id"}
        return {name: value for name, value in values.items() if value is not None}


@dataclass
class TurnResult:
    """One assistant response, the user turn it answers, and its speech."""

    turn_id: str
    user_turn_id: str | None
    user_text: str = ""
    assistant_text: str = ""
    audio: bytearray = field(default_factory=bytearray)  # PCM16LE mono at sample_rate_hz
    sample_rate_hz: int = 0
    interrupted: bool = False
    heard_ms: int | None = None  # only for an interrupted response
    heard_text: str | None = None  # only for an interrupted response
    ended: bool = False  # RESPONSE_DONE or RESPONSE_INTERRUPTED arrived
    end_reason: str = ""  # TurnEvent.EndReason name: COMPLETED, MAX_TOKENS (cut at the length cap), INTERRUPTED, FAILED
    latency: LatencyMs | None = None

    @property
    def audio_ms(self) -> float:
        if not self.sample_rate_hz:
            return 0.0
        return len(self.audio) / PCM16_BYTES * MS_PER_S / self.sample_rate_hz

    @property
    def finished(self) -> bool:
        return self.ended and self.latency is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "user_text": self.user_text,
            "assistant_text": self.assistant_text,
            "audio_ms": round(self.audio_ms, 1),
            "interrupted": self.interrupted,
            "end_reason": self.end_reason,
            "latency_ms": {name: getattr(self.latency, name, None) for name in JSON_LATENCY_FIELDS},
        }


@dataclass(frozen=True)
class ServerError:
    """An Error event the server sent (the stream may have gone on)."""

    code: str
    message: str
    retryable: bool
    turn_id: str


@dataclass(frozen=True)
class RpcFailure:
    """The Converse call ended with a non-OK gRPC status."""

    code: str  # grpc.StatusCode name, e.g. "INVALID_ARGUMENT"
    details: str


@dataclass
class ChatResult:
    """Everything one conversation produced; `problems()` is empty when it went as it should."""

    session_id: str = ""
    turns: list[TurnResult] = field(default_factory=list)
    errors: list[ServerError] = field(default_factory=list)
    rpc_failure: RpcFailure | None = None
    not_ready: str | None = None  # why the conversation never started: no server answered, or it was not SERVING
    no_speech: bool = False  # the audio was sent, and the server heard no speech in it
    timed_out: bool = False
    send_s: float = 0.0  # wall time spent sending the input; ≈ the audio's length when paced in real time

    @property
    def complete(self) -> bool:
        return bool(self.turns) and all(turn.finished for turn in self.turns)

    def problems(self) -> list[str]:
        """Why the conversation failed, one line each."""
        if self.not_ready is not None:
            return [self.not_ready]
        lines = [f"server error {e.code}: {e.message}" for e in self.errors]
        if self.no_speech:
            lines.append(
                f"no speech detected: the server heard no speech in the audio within {NO_SPEECH_WAIT_S:.0f} s of its "
                "end; check the recording is not silent (or speak louder / closer to the microphone)"
            )
        elif self.rpc_failure is not None:
            lines.append(f"RPC failed with {self.rpc_failure.code}: {self.rpc_failure.details}")
        elif self.timed_out:
            lines.append("timed out before the reply was complete")
        elif not self.complete:
            lines.append("the server closed the stream before the reply was complete")
        return lines

    def assistant_audio(self) -> tuple[bytes, int]:
        """All responses' speech back to back as PCM16LE, and its sample rate (0 when there is none)."""
        rate = next((turn.sample_rate_hz for turn in self.turns if turn.sample_rate_hz), 0)
        return b"".join(bytes(turn.audio) for turn in self.turns), rate

    def to_json(self) -> dict[str, Any]:
        """The result for scripts: `error` is null on success, else the problems, one per line."""
        problems = self.problems()
        return {
            "session_id": self.session_id,
            "turns": [turn.to_json() for turn in self.turns],
            "error": "\n".join(problems) if problems else None,
        }


class _Collector:
    """Folds ServerEvents into a ChatResult and signals when the session starts and the reply completes."""

    def __init__(self, typed_text: str | None) -> None:
        self.result = ChatResult()
        self.session_started = asyncio.Event()
        self.speech_started = asyncio.Event()
        self.reply_complete = asyncio.Event()
        self._turns: dict[str, TurnResult] = {}
        self._user_texts: dict[str, str] = {}
        self._user_turn: str | None = None
        self._backchannels: set[str] = set()
        if typed_text is not None:
            self._user_turn = TYPED_USER_TURN
            self._user_texts[TYPED_USER_TURN] = typed_text

    def apply(self, event: conversation_pb2.ServerEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "session_started":
            self.result.session_id = event.session_started.session_id
            self.session_started.set()
        elif kind == "turn_event":
            self._on_turn_event(event.turn_event)
        elif kind == "transcript":
            self._on_transcript(event.transcript)
        elif kind == "audio_output":
            self._on_audio(event.audio_output)
        elif kind == "latency_report" and (turn := self._turn(event.latency_report.turn_id)) is not None:
            turn.latency = LatencyMs.from_proto(event.latency_report)
        elif kind == "error":
            error = event.error
            self.result.errors.append(ServerError(error.code, error.message, error.retryable, error.turn_id))
        if self.result.complete:
            self.reply_complete.set()
        else:
            self.reply_complete.clear()

    def finish(self) -> ChatResult:
        for turn in self.result.turns:
            turn.user_text = self._user_texts.get(turn.user_turn_id or "", "")
        return self.result

    def _turn(self, turn_id: str) -> TurnResult | None:
        """The response `turn_id`, created on its first event; None for a backchannel."""
        if turn_id in self._backchannels:
            return None
        if turn_id not in self._turns:
            self._turns[turn_id] = TurnResult(turn_id=turn_id, user_turn_id=self._user_turn)
            self.result.turns.append(self._turns[turn_id])
        return self._turns[turn_id]

    def _on_turn_event(self, event: conversation_pb2.TurnEvent) -> None:
        if event.type in (TurnType.USER_SPEECH_STARTED, TurnType.USER_SPEECH_STOPPED):
            self._user_turn = event.turn_id
            self.speech_started.set()
        elif event.type == TurnType.BACKCHANNEL:
            self._backchannels.add(event.turn_id)
            if (turn := self._turns.pop(event.turn_id, None)) is not None:
                self.result.turns.remove(turn)
        elif event.type in (TurnType.RESPONSE_STARTED, TurnType.RESPONSE_DONE, TurnType.RESPONSE_INTERRUPTED):
            self._on_response_event(event)

    def _on_response_event(self, event: conversation_pb2.TurnEvent) -> None:
        turn = self._turn(event.turn_id)
        if turn is None or event.type == TurnType.RESPONSE_STARTED:
            return
        turn.ended = True
        turn.end_reason = EndReason.Name(event.end_reason) if event.end_reason else ""
        if event.type == TurnType.RESPONSE_INTERRUPTED:
            turn.interrupted, turn.heard_ms, turn.heard_text = True, event.heard_ms, event.heard_text

    def _on_transcript(self, transcript: conversation_pb2.Transcript) -> None:
        if transcript.role == common_pb2.ROLE_USER:
            if self._user_turn in (None, TYPED_USER_TURN):  # speech events, when there are any, name the turn
                self._user_turn = transcript.turn_id
            previous = "" if transcript.is_final else self._user_texts.get(transcript.turn_id, "")
            self._user_texts[transcript.turn_id] = previous + transcript.text
        elif (turn := self._turn(transcript.turn_id)) is not None:
            turn.assistant_text = transcript.text if transcript.is_final else turn.assistant_text + transcript.text

    def _on_audio(self, audio: conversation_pb2.AudioOutput) -> None:
        if (turn := self._turn(audio.turn_id)) is not None:
            turn.audio += audio.audio
            turn.sample_rate_hz = audio.sample_rate_hz


class ConversationClient:
    """A channel to the Conversation service: one `chat` per session, any number of sessions per client.

    Create it inside the event loop that will use it (gRPC aio channels are bound to their loop).
    """

    def __init__(self, target: str, tls_ca: bytes | None = None, api_key: str | None = None) -> None:
        """`tls_ca`: PEM of the CA that signed the server's certificate (TLS; None: plaintext). `api_key`: sent as
        `authorization: Bearer <key>` on every session (servers with MINMO_API_KEYS_FILE require one)."""
        self.target = target
        options = [("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS)]
        if tls_ca is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca)
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self._stub = conversation_pb2_grpc.ConversationStub(self._channel)

    @property
    def stub(self) -> conversation_pb2_grpc.ConversationStub:
        return self._stub

    async def __aenter__(self) -> ConversationClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def chat(
        self, request: ChatRequest, on_event: EventCallback | None = None, on_waiting: WaitCallback | None = None
    ) -> ChatResult:
        """Run one session: config, input, wait for the reply, EndSession. `on_event` sees every ServerEvent.

        A failed RPC is reported in the result, not raised; cancelling the task cancels the call. A server that is
        still starting (e.g. right after `minmo up`) is waited for, up to `request.timeout_s`.
        """
        collector = _Collector(request.text)
        collector.result.not_ready = await self.wait_until_ready(request.timeout_s, on_waiting)
        if collector.result.not_ready is not None:
            return collector.finish()
        call = self._stub.Converse(metadata=self._metadata)
        reader = asyncio.create_task(_read_events(call, collector, on_event))
        try:
            await _converse(call, request, collector, reader)
        except grpc.aio.AioRpcError as error:
            collector.result.rpc_failure = RpcFailure(error.code().name, error.details() or "")
        finally:
            reader.cancel()
            call.cancel()
        return collector.finish()

    async def wait_until_ready(self, timeout_s: float, on_waiting: WaitCallback | None = None) -> str | None:
        """Poll grpc.health.v1 until the server says SERVING; None when it does, else why not (one line).
        `on_waiting` hears once, with a line for a person, when the first answer is not SERVING yet."""
        health = health_pb2_grpc.HealthStub(self._channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        status: str | None = None  # the last status the server answered; None while nothing answers
        while True:
            remaining = deadline - loop.time()
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=min(max(remaining, 0.05), READY_ATTEMPT_S),
                    wait_for_ready=True,
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return None
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:  # a server without health checks: just try it
                    return None
            if loop.time() + READY_POLL_S >= deadline:
                break
            if on_waiting is not None:
                on_waiting(f"waiting up to {timeout_s:.0f} s for the server at {self.target} to be ready…")
                on_waiting = None
            await asyncio.sleep(READY_POLL_S)
        if status is None:
            return f"no MinMo server answers at {self.target} (waited {timeout_s:.0f} s); start one with `minmo up`"
        return (
            f"the server at {self.target} is not ready ({status} after {timeout_s:.0f} s): it is still loading, "
            "or one of the services behind it is down; see the `minmo up` output"
        )


async def run_chat(
    target: str,
    request: ChatRequest,
    on_event: EventCallback | None = None,
    on_waiting: WaitCallback | None = None,
    tls_ca: bytes | None = None,
    api_key: str | None = None,
) -> ChatResult:
    """One conversation with the server at `target` ("host:port") over a channel of its own."""
    async with ConversationClient(target, tls_ca, api_key) as client:
        return await client.chat(request, on_event, on_waiting)


async def _converse(
    call: grpc.aio.StreamStreamCall, request: ChatRequest, collector: _Collector, reader: asyncio.Task[None]
) -> None:
    """Drive the client half of the stream; raises AioRpcError when the server ends it with an error."""
    result = collector.result
    if await _write(call, _session_config(request)):
        if await _wait_while_open(collector.session_started, reader, request.timeout_s):
            start = time.monotonic()
            await _send_input(call, request)
            result.send_s = time.monotonic() - start
            if request.audio is not None:
                wait = min(NO_SPEECH_WAIT_S, request.timeout_s)
                heard = await _wait_while_open(collector.speech_started, reader, wait)
                result.no_speech = not heard and not reader.done()
            if not result.no_speech:
                await _wait_while_open(collector.reply_complete, reader, request.timeout_s)
        result.timed_out = not reader.done() and not collector.reply_complete.is_set() and not result.no_speech
    if not reader.done() and await _write(call, _END_SESSION):
        await call.done_writing()
    await asyncio.wait({reader}, timeout=CLOSE_TIMEOUT_S)
    if reader.done():
        reader.result()


async def _read_events(call: grpc.aio.StreamStreamCall, collector: _Collector, on_event: EventCallback | None) -> None:
    async for event in call:
        collector.apply(event)
        if on_event is not None:
            on_event(event)


async def _wait_while_open(event: asyncio.Event, reader: asyncio.Task[None], timeout_s: float) -> bool:
    """Wait for `event` unless the stream ends or `timeout_s` passes first; True when the event is set."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, reader}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return event.is_set()


async def _write(call: grpc.aio.StreamStreamCall, event: conversation_pb2.ClientEvent) -> bool:
    """Send one event; False when the stream has already ended (the reader reports the status)."""
    try:
        await call.write(event)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        return False
    return True


def _session_config(request: ChatRequest) -> conversation_pb2.ClientEvent:
    config = conversation_pb2.SessionConfig(
        input_sample_rate_hz=request.input_sample_rate_hz,
        output_sample_rate_hz=request.output_sample_rate_hz,
        system_prompt=request.system_prompt,
        voice_instruction=request.voice_instruction,
    )
    if request.voice_prompt is not None:
        prompt = request.voice_prompt
        config.voice_prompt.CopyFrom(
            conversation_pb2.VoicePrompt(audio=float_to_pcm16(prompt.samples), sample_rate_hz=prompt.sample_rate)
        )
    return conversation_pb2.ClientEvent(session_config=config)


async def _send_input(call: grpc.aio.StreamStreamCall, request: ChatRequest) -> None:
    if request.text is not None:
        await _write(call, conversation_pb2.ClientEvent(text_input=conversation_pb2.TextInput(text=request.text)))
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, chunk in enumerate(_audio_chunks(request)):
        if request.realtime:
            await asyncio.sleep(max(0.0, start + index * CHUNK_MS / MS_PER_S - loop.time()))
        if not await _write(call, conversation_pb2.ClientEvent(audio_chunk=conversation_pb2.AudioChunk(audio=chunk))):
            return


def _audio_chunks(request: ChatRequest) -> list[bytes]:
    """The input audio and its trailing silence as PCM16LE chunks of CHUNK_MS (the last one may be shorter)."""
    audio = request.audio
    assert audio is not None, "audio chunks need an audio request"
    silence = bytes(PCM16_BYTES * (audio.sample_rate * request.trailing_silence_ms // MS_PER_S))
    pcm = float_to_pcm16(audio.samples) + silence
    step = PCM16_BYTES * audio.sample_rate * CHUNK_MS // MS_PER_S
    return [pcm[start : start + step] for start in range(0, len(pcm), step)]
