"""One Converse stream: the per-session state machine of the duplex front door.

States (also written to Redis): listening -> user_speaking -> responding -> listening, with
interrupted when the user barges in. Client audio goes through VAD + turn detection; only speech goes
to the encoder, whose embeddings go to the LLM, whose predictor signals (or, untrained, the VAD's end
of speech) decide when to respond. A response streams text tokens to voicelm, speech tokens to the
vocoder and PCM to the client. While its audio is still playing, user speech interrupts it: the
downstream calls are cancelled, the client learns how much it heard, and the history (Redis and the
LLM context) keeps only the words actually heard.

Protocol errors end the stream with a gRPC status via `ProtocolError`; the servicer aborts with it.

Each user turn is one trace (`TurnTrace`); every turn-scoped message to a model service carries its context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import grpc
from redis.exceptions import RedisError

from minmo.audio.pcm import SUPPORTED_INPUT_RATES, float_to_pcm16, pcm16_to_float
from minmo.audio.turn_detection import TurnDetectionConfig, TurnDetector
from minmo.audio.vad import StreamingVad
from minmo.duplex.audio_input import AudioInput, SpeechAudio, SpeechStarted, SpeechStopped
from minmo.duplex.latency import TurnTimings, now_ms
from minmo.duplex.limits import InputLimits, ProtocolError, check_id, check_trace_context
from minmo.duplex.links import EncoderLink, LinkLost, LlmLink, Replicas, ReplicasFull, history_turn
from minmo.duplex.outbox import client_outbox
from minmo.duplex.response import Response
from minmo.duplex.turn_trace import TurnTrace
from minmo.model.interleave import VoiceSchedule
from minmo.serving.server import RETRY_AFTER_METADATA
from minmo.session.store import (
    PermissionDenied,
    Role,
    SessionEnded,
    SessionError,
    SessionNotFound,
    SessionState,
    SessionStore,
    StaleOwner,
    Turn,
)
from minmo.telemetry import Telemetry
from minmo.v1 import common_pb2, conversation_pb2, encoder_pb2, llm_pb2

log = logging.getLogger(__name__)
OUTPUT_RATES = (8000, 16000, 24000, 48000)
DEFAULT_OUTPUT_RATE = 24000
RESPOND_THRESHOLD = 0.5
TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
LLM_END_REASONS = {"LENGTH": EndReason.MAX_TOKENS}  # ResponseEnd.Reason name -> the client's; otherwise COMPLETED
ENCODER_LOST = "the speech encoder became unavailable during this turn; please say it again"
LLM_LOST = "the language model is unavailable; please retry this turn"
STORE_LOST = "the session store is unavailable; please retry this turn"


@dataclass(frozen=True)
class DuplexPolicy:
    """Service-wide behaviour; per-session turn detection comes from the client within these bounds."""

    replica_id: str
    max_chunk_ms: int = 1000
    max_response_tokens: int = 64
    turn_timeout_s: float = 300.0  # deadline of a response's downstream calls
    turn_detection: TurnDetectionConfig = field(default_factory=TurnDetectionConfig)
    limits: InputLimits = field(default_factory=InputLimits)


@dataclass(frozen=True)
class Peers:
    """Every replica of each downstream hop; streams open on one that admits them (see `Replicas`)."""

    encoder: Replicas
    llm: Replicas
    voicelm: Replicas
    vocoder: Replicas


class Conversation:
    def __init__(
        self,
        policy: DuplexPolicy,
        peers: Peers,
        store: SessionStore,
        vad: StreamingVad,
        telemetry: Telemetry,
        slow_client_s: float = 5.0,
    ) -> None:
        self.policy = policy
        self.peers = peers
        self.store = store
        self.vad = vad
        self.telemetry = telemetry
        self.trace: TurnTrace | None = None  # the user turn being heard or answered
        self.schedule = VoiceSchedule()
        self.outbox = client_outbox(slow_client_s)  # bounded: a client that stops reading fails its own session
        self.session_id = ""
        self.epoch = 0
        self.config: dict = {}
        self.audio_input: AudioInput | None = None
        self.encoder = EncoderLink(peers.encoder, self._on_embeddings, self._on_flush_done, self._on_encoder_lost)
        self.llm = LlmLink(peers.llm, self._on_predictor, self._on_user_transcript, self._on_context_trimmed)
        self.user_turn: str | None = None
        self.user_turn_ms = 0.0
        self.timings: TurnTimings | None = None
        self.respond_on_flush = False
        self.response: Response | None = None
        self.response_task: asyncio.Task | None = None
        self.playing: Response | None = None  # finished or not, until its audio has played out
        self.played_ms: dict[str, float] = {}

    async def run(self, requests: AsyncIterator[conversation_pb2.ClientEvent]) -> AsyncIterator:
        """Yield ServerEvents until the session ends; raises ProtocolError for the servicer to abort with."""
        driver = asyncio.create_task(self._drive(requests), name="duplex-driver")
        try:
            while (event := await self.outbox.get()) is not None:
                yield event
            await driver
        finally:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, ProtocolError):
                await driver

    async def emit(self, event: conversation_pb2.ServerEvent) -> None:
        await self.outbox.put(event)

    async def _drive(self, requests: AsyncIterator[conversation_pb2.ClientEvent]) -> None:
        try:
            first = await anext(aiter(requests), None)
            await self._start(first)
            async for event in requests:
                if not await self._handle(event):
                    break
        except StaleOwner as error:
            raise ProtocolError(grpc.StatusCode.ABORTED, "this session was resumed on another connection") from error
        finally:
            await self._shutdown()
            self.outbox.close()

    async def _handle(self, event: conversation_pb2.ClientEvent | None) -> bool:
        kind = event.WhichOneof("event") if event is not None else None
        if kind == "audio_chunk":
            await self._on_audio(event.audio_chunk.audio)
        elif kind == "text_input":
            await self._on_text(event.text_input)
        elif kind == "cancel_response":
            check_id("cancel_response.turn_id", event.cancel_response.turn_id)
            await self._interrupt()
        elif kind == "playback_position":
            check_id("playback_position.turn_id", event.playback_position.turn_id)
            self.played_ms[event.playback_position.turn_id] = float(event.playback_position.played_ms)
        elif kind == "end_session":  # a response still generating is cancelled by _shutdown
            await self.store.end(self.session_id, self.epoch)
            return False
        elif kind in ("session_config", "resume_session"):
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "only the first message may configure the session")
        else:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "could not parse the message as a ClientEvent")
        return True

    # --- session set-up -------------------------------------------------------------------------

    async def _start(self, first: conversation_pb2.ClientEvent | None) -> None:
        kind = first.WhichOneof("event") if first is not None else None
        if kind == "session_config":
            resumed, history = False, []
            self.config = self._validated_config(first.session_config)
            record, token = await self.store.create(self.config)
            record = await self.store.claim(record.session_id, token, self.policy.replica_id)
        elif kind == "resume_session":
            resumed = True
            record, token = await self._resume(first.resume_session)
            history = await self.store.history(record.session_id)
        else:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be session_config or resume_session"
            )
        self.session_id, self.epoch = record.session_id, record.epoch
        detection = self._turn_detection(self.config)
        self.audio_input = AudioInput(self.vad, TurnDetector(detection), self.config["input_sample_rate_hz"])
        try:
            await self._open_llm(history)
            await self._open_encoder()
        except ProtocolError as refusal:  # refused before any work started: the session is not kept
            if refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.telemetry.metrics.errors.labels(code=refusal.code.name).inc()
                await self.store.end(self.session_id, self.epoch)
            raise
        await self.emit(self._session_started(token, resumed, len(history), detection))

    def _validated_config(self, config: conversation_pb2.SessionConfig) -> dict:
        """The session's config, every field checked before anything is stored (the same answer for the same
        message, however many sessions open at once)."""
        self.policy.limits.check_session_config(config)
        if config.input_sample_rate_hz not in SUPPORTED_INPUT_RATES:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input_sample_rate_hz {config.input_sample_rate_hz} is not supported;"
                f" use one of {SUPPORTED_INPUT_RATES}",
            )
        output_rate = config.output_sample_rate_hz or DEFAULT_OUTPUT_RATE
        if output_rate not in OUTPUT_RATES:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output_sample_rate_hz {output_rate} is not supported; use one of {OUTPUT_RATES}",
            )
        detection = config.turn_detection
        defaults = self.policy.turn_detection
        validated = {
            "input_sample_rate_hz": config.input_sample_rate_hz,
            "output_sample_rate_hz": output_rate,
            "system_prompt": config.system_prompt,
            "voice_instruction": config.voice_instruction,
            "text_only": config.text_only,
            "mode": conversation_pb2.TurnDetection.Mode.Name(detection.mode),
            "threshold": detection.vad_threshold or defaults.threshold,
            "silence_ms": detection.silence_ms or defaults.silence_duration_ms,
            "prefix_padding_ms": detection.prefix_padding_ms or defaults.prefix_padding_ms,
        }
        self._turn_detection(validated)  # the combination must make a detector, too
        return validated

    def _turn_detection(self, config: dict) -> TurnDetectionConfig:
        try:
            return TurnDetectionConfig(
                threshold=config["threshold"],
                prefix_padding_ms=config["prefix_padding_ms"],
                silence_duration_ms=config["silence_ms"],
                min_speech_duration_ms=self.policy.turn_detection.min_speech_duration_ms,
            )
        except ValueError as error:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error

    async def _resume(self, resume: conversation_pb2.ResumeSession):
        check_id("resume_session.session_id", resume.session_id)
        check_id("resume_session.resume_token", resume.resume_token)
        try:
            record = await self.store.claim(resume.session_id, resume.resume_token, self.policy.replica_id)
        except SessionNotFound as error:
            raise ProtocolError(grpc.StatusCode.NOT_FOUND, f"no session {resume.session_id!r} (expired?)") from error
        except PermissionDenied as error:
            raise ProtocolError(grpc.StatusCode.PERMISSION_DENIED, "the resume token does not match") from error
        except SessionEnded as error:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION, "the session has ended") from error
        config = dict(record.config)
        if resume.input_sample_rate_hz:
            config["input_sample_rate_hz"] = resume.input_sample_rate_hz
        if resume.output_sample_rate_hz:
            config["output_sample_rate_hz"] = resume.output_sample_rate_hz
        self._validated_config(_as_session_config(config))
        self.config = config
        return record, resume.resume_token

    def _session_started(self, token: str, resumed: bool, history_turns: int, detection: TurnDetectionConfig):
        def audio_format(rate: int) -> common_pb2.AudioFormat:
            return common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16LE, sample_rate_hz=rate, channels=1)

        return conversation_pb2.ServerEvent(
            session_started=conversation_pb2.SessionStarted(
                session_id=self.session_id,
                resume_token=token,
                input_format=audio_format(self.config["input_sample_rate_hz"]),
                output_format=audio_format(self.config["output_sample_rate_hz"]),
                resumed=resumed,
                history_turns=history_turns,
                turn_detection=conversation_pb2.TurnDetection(
                    mode=conversation_pb2.TurnDetection.Mode.Value(self.config["mode"]),
                    vad_threshold=detection.threshold,
                    silence_ms=round(detection.silence_duration_ms),
                    prefix_padding_ms=round(detection.prefix_padding_ms),
                ),
            )
        )

    async def _open_llm(self, history: list[Turn]) -> None:
        """Open the LLM stream with the context rebuilt from the history (new replica or new session)."""
        config = llm_pb2.LlmSessionConfig(
            session_id=self.session_id,
            system_prompt=self.config["system_prompt"],
            history=[history_turn(turn.role, turn.text) for turn in history if turn.text],
            max_response_tokens=self.policy.max_response_tokens,
        )
        try:
            ready = await self.llm.open(config)
        except LinkLost as lost:
            log.warning("session %s: %s", self.session_id, lost)
            cause = lost.__cause__
            if isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.INVALID_ARGUMENT:
                message = "the system prompt is too long for the model's context"
                raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, message) from lost
            if isinstance(lost, ReplicasFull):
                raise _refusal(lost) from lost
            raise ProtocolError(grpc.StatusCode.UNAVAILABLE, LLM_LOST) from lost
        if ready.dropped_history_turns:
            trimmed = common_pb2.ContextTrimmed(
                dropped_turns=ready.dropped_history_turns,
                context_tokens=ready.context_tokens,
                max_context_tokens=ready.max_context_tokens,
            )
            await self._on_context_trimmed(trimmed)

    async def _open_encoder(self) -> None:
        try:
            await self.encoder.open(self.session_id)
        except LinkLost as lost:
            raise _refusal(lost) from lost

    async def _ensure_links(self) -> None:
        """Reopen a lost stream on a live replica before a new turn uses it; when none answers, the turn goes
        on and fails at its end with one RESPONSE_DONE (the session stays)."""
        try:
            if not self.llm.usable:
                await self._open_llm(await self.store.history(self.session_id))
            if not self.encoder.usable:
                await self._open_encoder()
        except (ProtocolError, LinkLost, grpc.aio.AioRpcError, RedisError) as error:
            log.warning("session %s: a stream could not be reopened: %s", self.session_id, error)

    # --- user input -----------------------------------------------------------------------------

    async def _on_audio(self, audio: bytes) -> None:
        rate = self.config["input_sample_rate_hz"]
        limit = 2 * rate * self.policy.max_chunk_ms // 1000
        if len(audio) > limit:
            raise ProtocolError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"audio chunk of {len(audio)} bytes exceeds {limit} bytes ({self.policy.max_chunk_ms} ms at {rate} Hz)",
            )
        try:
            samples = pcm16_to_float(audio)
        except ValueError as error:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        for action in await asyncio.to_thread(self.audio_input.process, samples):
            if isinstance(action, SpeechStarted):
                await self._on_speech_started(action)
            elif isinstance(action, SpeechAudio):
                await self._send_speech(action)
            elif isinstance(action, SpeechStopped):
                await self._on_speech_stopped(action)

    async def _on_speech_started(self, action: SpeechStarted) -> None:
        await self._interrupt()
        await self._ensure_links()
        self.user_turn = _new_turn_id()
        self._begin_trace(self.user_turn)
        self.user_turn_ms = 0.0
        self.respond_on_flush = False
        started = _turn_event(TurnType.USER_SPEECH_STARTED, self.user_turn, input_offset_ms=action.event.audio_ms)
        await self.emit(started)
        await self._set_state(SessionState.USER_SPEAKING)

    async def _send_speech(self, action: SpeechAudio) -> None:
        self.user_turn_ms += 1000 * action.samples.shape[0] / 16000
        chunk = encoder_pb2.EncodeAudioChunk(
            audio=float_to_pcm16(action.samples), turn_id=self.user_turn, trace_context=self._carrier(self.user_turn)
        )
        with contextlib.suppress(LinkLost):  # a lost encoder is reopened at the next turn
            await self.encoder.write(encoder_pb2.EncodeRequest(audio_chunk=chunk))

    async def _on_speech_stopped(self, action: SpeechStopped) -> None:
        turn_id = self.user_turn
        self.timings = TurnTimings(end_of_speech=now_ms())
        await self.emit(_turn_event(TurnType.USER_SPEECH_STOPPED, turn_id, input_offset_ms=action.event.audio_ms))
        self.respond_on_flush = self.respond_on_flush or not self._predictor_decides()
        end = encoder_pb2.EndOfUtterance(turn_id=turn_id, trace_context=self._carrier(turn_id))
        try:
            await self.encoder.write(encoder_pb2.EncodeRequest(end_of_utterance=end))
        except LinkLost as lost:
            log.warning("session %s turn %s: %s", self.session_id, turn_id, lost)
            self.respond_on_flush = False
            await self._fail_turn(turn_id, grpc.StatusCode.UNAVAILABLE, ENCODER_LOST, store=False)

    async def _on_encoder_lost(self, lost: LinkLost) -> None:
        """The encoder went away while a user turn waited for its flush: that turn ends, failed."""
        if self.respond_on_flush and self.response is None and self.user_turn is not None:
            self.respond_on_flush = False
            log.warning("session %s turn %s: %s", self.session_id, self.user_turn, lost)
            await self._fail_turn(self.user_turn, grpc.StatusCode.UNAVAILABLE, ENCODER_LOST, store=False)

    def _predictor_decides(self) -> bool:
        trained = self.llm.ready is not None and self.llm.ready.predictor_trained
        return self.config["mode"] == "PREDICTOR" and trained

    async def _on_embeddings(self, embeddings: encoder_pb2.Embeddings) -> None:
        request = llm_pb2.AudioInput(
            embeddings=embeddings.embeddings,
            start_position=embeddings.start_position,
            turn_id=embeddings.turn_id,
            trace_context=self._carrier(embeddings.turn_id),
        )
        with contextlib.suppress(LinkLost):
            await self.llm.write(llm_pb2.LlmRequest(audio_input=request))

    async def _on_predictor(self, signal: llm_pb2.PredictorSignal) -> None:
        if not self._predictor_decides():
            return
        if signal.backchannel > RESPOND_THRESHOLD:
            await self.emit(_turn_event(TurnType.BACKCHANNEL, signal.turn_id))
        if signal.respond > RESPOND_THRESHOLD and self.response is None and not self.respond_on_flush:
            self.respond_on_flush = True
            self.timings = self.timings or TurnTimings(end_of_speech=now_ms())
            end = encoder_pb2.EndOfUtterance(turn_id=signal.turn_id, trace_context=self._carrier(signal.turn_id))
            with contextlib.suppress(LinkLost):
                await self.encoder.write(encoder_pb2.EncodeRequest(end_of_utterance=end))

    async def _on_user_transcript(self, transcript: llm_pb2.UserTranscript) -> None:
        """The LLM transcribed a spoken user turn (after its reply): tell the client, complete the history."""
        await self.emit(
            conversation_pb2.ServerEvent(
                transcript=conversation_pb2.Transcript(
                    turn_id=transcript.turn_id, role=common_pb2.ROLE_USER, text=transcript.text, is_final=True
                )
            )
        )
        try:
            await self.store.set_turn_text(self.session_id, self.epoch, transcript.turn_id, transcript.text)
        except (RedisError, SessionError) as error:  # the transcript is a bonus: losing it costs the turn nothing
            log.warning("session %s: transcript of %s not stored: %s", self.session_id, transcript.turn_id, error)

    async def _on_context_trimmed(self, trimmed: common_pb2.ContextTrimmed) -> None:
        """The oldest turns left the model's context (the history keeps them): tell the client."""
        await self.emit(conversation_pb2.ServerEvent(context_trimmed=trimmed))

    async def _on_flush_done(self, flush: encoder_pb2.FlushDone) -> None:
        if not self.respond_on_flush or self.response is not None:
            return
        self.respond_on_flush = False
        timings = self.timings or TurnTimings(end_of_speech=now_ms())
        timings.encoder_flush_ms = flush.compute_ms
        timings.encoder_done = now_ms()
        user = Turn(turn_id=flush.turn_id, role=Role.USER, text="", audio_ms=round(self.user_turn_ms))
        try:
            await self.store.append_turn(self.session_id, self.epoch, user)
        except RedisError as error:
            log.warning("session %s turn %s: %s", self.session_id, flush.turn_id, error)
            await self._fail_turn(flush.turn_id, grpc.StatusCode.UNAVAILABLE, STORE_LOST, store=False)
            return
        await self._start_response(timings)

    async def _on_text(self, text_input: conversation_pb2.TextInput) -> None:
        self.policy.limits.check_text(text_input.text)
        check_trace_context("text_input.trace_context", text_input.trace_context)
        text = text_input.text.strip()
        if not text:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "text_input.text is empty")
        await self._interrupt()
        turn_id = _new_turn_id()
        self._begin_trace(turn_id, text_input.trace_context)
        timings = TurnTimings(end_of_speech=now_ms())
        await self.emit(
            conversation_pb2.ServerEvent(
                transcript=conversation_pb2.Transcript(
                    turn_id=turn_id, role=common_pb2.ROLE_USER, text=text, is_final=True
                )
            )
        )
        try:
            await self.store.append_turn(self.session_id, self.epoch, Turn(turn_id, Role.USER, text, 0))
        except RedisError as error:
            log.warning("session %s turn %s: %s", self.session_id, turn_id, error)
            await self._fail_turn(turn_id, grpc.StatusCode.UNAVAILABLE, STORE_LOST, store=False)
            return
        append = llm_pb2.AppendTurn(
            role=common_pb2.ROLE_USER, text=text, turn_id=turn_id, trace_context=self._carrier(turn_id)
        )
        try:
            if not self.encoder.usable:
                await self.encoder.open(self.session_id)
            if self.llm.usable:
                await self.llm.write(llm_pb2.LlmRequest(append_turn=append))
            else:  # the replica died since the last turn: rebuild, the history now holds this turn
                await self._open_llm(await self.store.history(self.session_id))
        except (LinkLost, ProtocolError, grpc.aio.AioRpcError, RedisError) as error:
            try:  # one more try: the write found the stream broken, a rebuild goes to a live replica
                await self._open_llm(await self.store.history(self.session_id))
            except (ProtocolError, RedisError):
                log.warning("session %s turn %s: %s", self.session_id, turn_id, error)
                await self._fail_turn(turn_id, grpc.StatusCode.UNAVAILABLE, LLM_LOST)
                return
        await self._start_response(timings)

    # --- responses ------------------------------------------------------------------------------

    def _begin_trace(self, turn_id: str, parent: Mapping[str, str] | None = None) -> TurnTrace:
        """A new user turn's trace; a turn still open (heard, never answered) ends first."""
        if self.trace is not None:
            self.trace.abandon("unanswered")
        self.trace = TurnTrace(self.telemetry, self.session_id, turn_id, parent)
        return self.trace

    def _carrier(self, turn_id: str) -> dict[str, str]:
        """The trace_context for a message of user turn `turn_id` (empty for a turn no longer traced)."""
        return self.trace.carrier if self.trace is not None and self.trace.turn_id == turn_id else {}

    def _end_trace(
        self,
        response: Response,
        report: conversation_pb2.LatencyReport,
        outcome: str = "ok",
        failure: tuple[grpc.StatusCode, str] | None = None,
    ) -> None:
        if self.trace is not None:
            self.trace.finish(response, report, outcome, failure)
            self.trace = None

    async def _start_response(self, timings: TurnTimings) -> None:
        speech = not self.config["text_only"]
        turn_id = _new_turn_id()
        trace = self.trace or self._begin_trace(turn_id)
        response = Response(
            session_id=self.session_id,
            turn_id=turn_id,
            llm=self.llm,
            voicelm=self.peers.voicelm if speech else None,
            vocoder=self.peers.vocoder if speech else None,
            emit=self.emit,
            output_rate=self.config["output_sample_rate_hz"],
            instruction=self.config["voice_instruction"],
            max_tokens=self.policy.max_response_tokens,
            timings=timings,
            timeout_s=self.policy.turn_timeout_s,
            trace_context=trace.respond(turn_id),
        )
        self.response = self.playing = response
        await self.emit(_turn_event(TurnType.RESPONSE_STARTED, response.turn_id))
        await self._set_state(SessionState.RESPONDING)
        self.response_task = asyncio.create_task(self._run_response(response), name=f"response-{response.turn_id}")

    async def _run_response(self, response: Response) -> None:
        """Run a response to its end; a failure costs this turn only, never the session's stream, and ends it
        with one RESPONSE_DONE (end_reason FAILED) whatever failed."""
        try:
            await self._complete_response(response)
        except RedisError as error:
            self.response = None
            log.warning("session %s turn %s: %s", self.session_id, response.turn_id, error)
            if not response.ended:
                await self._fail_turn(response.turn_id, grpc.StatusCode.UNAVAILABLE, STORE_LOST, response, store=False)

    async def _complete_response(self, response: Response) -> None:
        try:
            result = await response.run()
        except (LinkLost, grpc.aio.AioRpcError) as error:
            self.response = None
            log.warning("session %s turn %s: %s", self.session_id, response.turn_id, _describe(error))
            code = _downstream_code(error)
            await self._fail_turn(response.turn_id, code, _turn_failed_message(code), response)
            return
        self.response = None
        text = result.text
        turn = Turn(response.turn_id, Role.ASSISTANT, text, round(result.audio_ms))
        await self.store.append_turn(self.session_id, self.epoch, turn)
        await self._final_transcript(response.turn_id, text)
        end_reason = LLM_END_REASONS.get(result.end_reason, EndReason.COMPLETED)
        await self._finish_turn(response, TurnType.RESPONSE_DONE, end_reason=end_reason)

    async def _interrupt(self) -> None:
        """Barge-in or cancel: stop a response that is generating or whose audio is still playing."""
        response, generating = self.playing, self.response is not None
        if response is None or not (generating or self._still_playing(response)):
            return
        self.playing = self.response = None
        if generating:
            self.response_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.response_task
        await response.cancel()
        heard_ms, heard_text = response.heard(self._played_ms(response), self.schedule)
        if generating:
            turn = Turn(response.turn_id, Role.ASSISTANT, heard_text, round(response.audio_ms), True, round(heard_ms))
            await self.store.append_turn(self.session_id, self.epoch, turn)
        else:
            await self.store.truncate_last_assistant_turn(self.session_id, self.epoch, heard_text, round(heard_ms))
        append = llm_pb2.AppendTurn(
            role=common_pb2.ROLE_ASSISTANT,
            text=heard_text,
            turn_id=response.turn_id,
            trace_context=response.trace_context,
        )
        with contextlib.suppress(LinkLost):
            await self.llm.write(llm_pb2.LlmRequest(append_turn=append))
        interrupted = _turn_event(
            TurnType.RESPONSE_INTERRUPTED,
            response.turn_id,
            heard_ms=heard_ms,
            heard_text=heard_text,
            end_reason=EndReason.INTERRUPTED,
        )
        await self.emit(interrupted)
        if generating:
            await self._final_transcript(response.turn_id, heard_text)
            report = self._report(response)
            self._end_trace(response, report, "interrupted")
            await self.emit(conversation_pb2.ServerEvent(latency_report=report))
        await self._set_state(SessionState.INTERRUPTED)

    def _still_playing(self, response: Response) -> bool:
        started = response.timings.first_audio_sent
        return started is not None and now_ms() < started + response.audio_ms

    def _played_ms(self, response: Response) -> float | None:
        """What the client played: its own report, else the time since the first audio was sent."""
        if response.turn_id in self.played_ms:
            return self.played_ms[response.turn_id]
        started = response.timings.first_audio_sent
        return None if started is None else now_ms() - started

    async def _final_transcript(self, turn_id: str, text: str) -> None:
        await self.emit(
            conversation_pb2.ServerEvent(
                transcript=conversation_pb2.Transcript(
                    turn_id=turn_id, role=common_pb2.ROLE_ASSISTANT, text=text, is_final=True
                )
            )
        )

    async def _finish_turn(self, response: Response, event_type: int, end_reason: int = EndReason.COMPLETED) -> None:
        response.ended = True
        report = self._report(response)
        self._end_trace(response, report)
        await self.emit(_turn_event(event_type, response.turn_id, end_reason=end_reason))
        await self.emit(conversation_pb2.ServerEvent(latency_report=report))
        await self._set_state(SessionState.LISTENING)

    async def _fail_turn(
        self,
        turn_id: str,
        code: grpc.StatusCode,
        message: str,
        response: Response | None = None,
        store: bool = True,
    ) -> None:
        """End a failed turn the one way every failure ends: Error, the heard part of the reply (if any) as the
        assistant's final transcript, RESPONSE_DONE (end_reason FAILED, error_code) and a LatencyReport. The history
        gets an assistant turn with what the user heard, marked failed, so no user turn is left without an
        outcome; the LLM drops the response and gets the heard part instead (as after a barge-in). `store=False`
        when the user turn never reached the history (the encoder lost its audio) or the store is what failed."""
        heard_ms, heard_text = response.heard(None, self.schedule) if response is not None else (0.0, "")
        if response is not None:
            response.ended = True
            await response.cancel()
        await self._report_error(code, message, turn_id)
        if store:
            turn = Turn(turn_id, Role.ASSISTANT, heard_text, round(heard_ms), True, round(heard_ms), "failed")
            try:
                await self.store.append_turn(self.session_id, self.epoch, turn)
            except RedisError as error:
                log.warning("session %s turn %s: failed turn not stored: %s", self.session_id, turn_id, error)
            append = llm_pb2.AppendTurn(role=common_pb2.ROLE_ASSISTANT, text=heard_text, turn_id=turn_id)
            with contextlib.suppress(LinkLost):
                await self.llm.write(llm_pb2.LlmRequest(append_turn=append))
        await self._final_transcript(turn_id, heard_text)
        if response is not None:
            report = self._report(response)
            self._end_trace(response, report, "failed", (code, message))
        else:
            report = conversation_pb2.LatencyReport(turn_id=turn_id)
            if self.trace is not None and self.trace.turn_id == turn_id:
                report.trace_id = self.trace.trace_id
                self.trace.abandon("failed")
                self.trace = None
        done = _turn_event(
            TurnType.RESPONSE_DONE,
            turn_id,
            end_reason=EndReason.FAILED,
            error_code=code.name,
            heard_ms=heard_ms,
            heard_text=heard_text,
        )
        await self.emit(done)
        await self.emit(conversation_pb2.ServerEvent(latency_report=report))
        await self._set_state(SessionState.LISTENING)

    async def _set_state(self, state: SessionState) -> None:
        """The state in Redis is for observers; a store outage must not cost the conversation (StaleOwner still
        ends it: another connection owns the session)."""
        try:
            await self.store.set_state(self.session_id, self.epoch, state)
        except RedisError as error:
            log.warning("session %s: state %s not stored: %s", self.session_id, state, error)

    def _report(self, response: Response) -> conversation_pb2.LatencyReport:
        return response.timings.report(response.turn_id, self.trace.trace_id if self.trace is not None else "")

    async def _report_error(self, code: grpc.StatusCode, message: str, turn_id: str = "") -> None:
        self.telemetry.metrics.errors.labels(code=code.name).inc()
        await self.emit(
            conversation_pb2.ServerEvent(
                error=conversation_pb2.Error(
                    code=code.name, message=message, retryable=True, session_id=self.session_id, turn_id=turn_id
                )
            )
        )

    async def _shutdown(self) -> None:
        if self.response_task is not None and not self.response_task.done():
            self.response_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.response_task
        if self.response is not None:
            await self.response.cancel()
        if self.trace is not None:
            self.trace.abandon("cancelled")
            self.trace = None
        await self.encoder.close()
        await self.llm.close()


def _refusal(lost: LinkLost) -> ProtocolError:
    """The client's status for a hop that could not be opened: RESOURCE_EXHAUSTED with the retry hint when every
    replica was full, else UNAVAILABLE."""
    if isinstance(lost, ReplicasFull) and lost.retry_after_ms is not None:
        return ProtocolError(lost.code, str(lost), ((RETRY_AFTER_METADATA, str(lost.retry_after_ms)),))
    return ProtocolError(lost.code, str(lost))


def _new_turn_id() -> str:
    return uuid.uuid4().hex[:12]


def _turn_event(event_type: int, turn_id: str, **fields) -> conversation_pb2.ServerEvent:
    fields = {name: round(value) if isinstance(value, float) else value for name, value in fields.items()}
    return conversation_pb2.ServerEvent(
        turn_event=conversation_pb2.TurnEvent(type=event_type, turn_id=turn_id or "", **fields)
    )


def _as_session_config(config: dict) -> conversation_pb2.SessionConfig:
    return conversation_pb2.SessionConfig(
        input_sample_rate_hz=config["input_sample_rate_hz"], output_sample_rate_hz=config["output_sample_rate_hz"]
    )


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, LinkLost) else f"{error.code().name}: {error.details()}"


def _downstream_code(error: BaseException) -> grpc.StatusCode:
    """A failed hop's code as the client sees it: capacity and deadlines keep their meaning, the rest is
    UNAVAILABLE (retry), never the peer's INTERNAL or UNKNOWN."""
    if isinstance(error, ReplicasFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        return error.code()
    return grpc.StatusCode.UNAVAILABLE


def _turn_failed_message(code: grpc.StatusCode) -> str:
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "the assistant is at capacity and could not finish this reply; please retry shortly"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "the reply took longer than the turn deadline; please retry"
    return "a service producing the reply became unavailable; please retry this turn"
