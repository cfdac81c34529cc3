"""One Converse stream: the thin async conductor of a duplex session.

Everything that happens in a session becomes an event for the session's `TurnPolicy` (minmo.duplex.turn_policy),
a synchronous state machine that owns every rule of turn taking; this module executes its decisions and moves
messages. Client audio goes through VAD + turn detection (`AudioInput`); only speech goes to the encoder, whose
embeddings go to the LLM, whose predictor signals (or, untrained, the VAD's end of speech) decide when to
respond. A response (`Response`) streams text tokens to voicelm, speech tokens to the vocoder and PCM to the
client. While its audio is still playing, user speech interrupts it (with a trained predictor deciding, the LLM
listens instead and its `stop_speaking` interrupts, a backchannel does not): the downstream calls are cancelled, the
client learns how much it heard, and `History` keeps only the words actually heard, in Redis and in the LLM
context together. The session's settings are one typed `SessionConfig`, checked when the session starts.

States written to Redis (for observers): listening -> user_speaking -> responding -> listening, with
interrupted when the user barges in.

Protocol errors end the stream with a gRPC status via `ProtocolError`; the servicer aborts with it.

Each user turn is one trace (`TurnTrace`); every turn-scoped message to a model service carries its context.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np
from redis.exceptions import RedisError

from minmo.audio.pcm import PCM16_BYTES, float_to_pcm16, pcm16_to_float
from minmo.audio.turn_detection import TurnDetectionConfig, TurnDetector
from minmo.audio.vad import StreamingVad
from minmo.duplex.audio_input import AudioInput, SpeechAudio, SpeechStarted, SpeechStopped
from minmo.duplex.failover import LlmFailover
from minmo.duplex.history import ContextLost, History
from minmo.duplex.latency import TurnTimings, now_ms
from minmo.duplex.limits import InputLimits, ProtocolError, check_id, check_trace_context
from minmo.duplex.links import EncoderLink, LinkLost, LlmLink, Replicas, ReplicasFull
from minmo.duplex.outbox import client_outbox
from minmo.duplex.response import Response
from minmo.duplex.session_config import SessionConfig
from minmo.duplex.turn_policy import (
    AnswerSpoken,
    AnswerTyped,
    CancelRequested,
    Decision,
    EncoderLost,
    FailSpokenTurn,
    Flushed,
    FlushEncoder,
    FlushLost,
    Interrupt,
    LlmOpened,
    OpenUserTurn,
    PatienceOver,
    Predicted,
    ResponseEnded,
    ResponseStarted,
    ShowBackchannel,
    TextTyped,
    TurnPolicy,
    UserSpeechAudio,
    UserSpeechStarted,
    UserSpeechStopped,
    WaitForMore,
)
from minmo.duplex.turn_trace import TurnTrace
from minmo.duplex.voice_control import session_conditioning
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ
from minmo.model.interleave import VoiceSchedule
from minmo.model.voice_prompt import VoicePromptModels
from minmo.serving.server import RETRY_AFTER_METADATA
from minmo.serving.stall_watch import StallWatch
from minmo.session.store import (
    PermissionDenied,
    SessionEnded,
    SessionNotFound,
    SessionState,
    SessionStore,
    StaleOwner,
    Turn,
)
from minmo.telemetry import Telemetry
from minmo.v1 import common_pb2, conversation_pb2, encoder_pb2, llm_pb2

log = logging.getLogger(__name__)
TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
LLM_END_REASONS = {"LENGTH": EndReason.MAX_TOKENS}  # ResponseEnd.Reason name -> the client's; otherwise COMPLETED
ENCODER_LOST = "the speech encoder became unavailable during this turn; please say it again"
LLM_LOST = "the language model is unavailable; please retry this turn"
STORE_LOST = "the session store is unavailable; please retry this turn"
TURN_DEFECT = "the reply failed on an internal error (logged by the duplex service); please retry this turn"
EVENT_STALL_S = 10.0  # a client event still being handled after this long is logged with where it waits
ENCODER_HOP = "encoder"  # a LatencyReport's name for a failover of the encoder stream


@dataclass(frozen=True)
class DuplexPolicy:
    """Service-wide behaviour; per-session turn detection comes from the client within these bounds."""

    replica_id: str
    max_chunk_ms: int = 1000
    max_response_tokens: int = 64
    turn_timeout_s: float = 300.0  # deadline of a response's downstream calls
    turn_detection: TurnDetectionConfig = field(default_factory=TurnDetectionConfig)
    predictor_silence_ms: float = 200.0  # the silence that ends a segment when a trained predictor decides
    limits: InputLimits = field(default_factory=InputLimits)
    voice_prompt_models: VoicePromptModels | None = None  # CosyVoice 2's prompt front end, when deployed
    first_audio_positions: int = 0  # text positions that complete the first audio chunk (0: no hold; response.py)
    first_audio_tokens: int = 0  # their speech tokens: the hold ends once the vocoder has them
    audio_lead_s: float = 0.0  # pacing: the vocoder's lead over real-time playback (0: none; speech_hops.py)


@dataclass(frozen=True)
class Peers:
    """Every replica of each downstream hop; streams open on one that admits them (see `Replicas`)."""

    encoder: Replicas
    llm: Replicas
    voicelm: Replicas
    vocoder: Replicas


class Conversation:
    """The async conductor of one session: turns what arrives (client events, audio actions, link callbacks)
    into `TurnPolicy` events and executes the decisions that come back; it moves messages and decides nothing."""

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
        self.response_trace: TurnTrace | None = None  # the answered turn's, while its response runs (a user turn
        # heard over the reply's audio has its own `trace` meanwhile)
        self.schedule = VoiceSchedule()
        self.outbox = client_outbox(slow_client_s)  # bounded: a client that stops reading fails its own session
        self.session_id = ""
        self.epoch = 0
        self.config: SessionConfig | None = None  # set by the first message
        self.history: History | None = None  # set once the session exists
        self.turns = TurnPolicy(predictor_mode=False)  # replaced with the session's once its config is known
        self.audio_input: AudioInput | None = None
        self.encoder = EncoderLink(peers.encoder, self._on_embeddings, self._on_flush_done, self._on_encoder_lost)
        self.encoder_failovers_reported = 0  # the encoder stream's failovers already told in a LatencyReport
        self.llm = LlmLink(peers.llm, self._on_predictor, self._on_user_transcript, self._on_context_trimmed)
        self.timings: TurnTimings | None = None
        self.response: Response | None = None  # the last response started (the policy says if it still generates)
        self.response_task: asyncio.Task | None = None
        self.patience: asyncio.Task | None = None  # the wait before a turn the predictor left open is answered
        self.llm_failover: LlmFailover | None = None  # set once the session exists
        self.played_ms: dict[str, float] = {}
        self.utterance_tail: np.ndarray | None = None  # the ended utterance's last samples, sent with its flush

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
            watch = StallWatch(EVENT_STALL_S, f"session {self.session_id}")
            async for event in requests:
                with watch.step(f"handling its {event.WhichOneof('event') or 'empty'} event"):
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
            await self._apply(self.turns.handle(CancelRequested(self._audio_playing())))
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

    async def _apply(self, decisions: list[Decision]) -> None:
        """Execute the policy's decisions, in order."""
        for decision in decisions:
            match decision:
                case Interrupt():
                    await self._interrupt(decision)
                case OpenUserTurn():
                    await self._open_user_turn(decision)
                case FlushEncoder():
                    await self._flush_encoder(decision)
                case ShowBackchannel(turn_id=turn_id):
                    await self.emit(_turn_event(TurnType.BACKCHANNEL, turn_id))
                case AnswerSpoken():
                    await self._answer_spoken(decision)
                case AnswerTyped():
                    await self._answer_typed(decision)
                case FailSpokenTurn(turn_id=turn_id):
                    await self._fail_turn(turn_id, grpc.StatusCode.UNAVAILABLE, ENCODER_LOST, store=False)
                case WaitForMore(turn_id=turn_id, ms=ms):
                    self._wait_for_more(turn_id, ms)

    def _wait_for_more(self, turn_id: str, ms: float) -> None:
        """PatienceOver(`turn_id`) for the policy after `ms`; one wait at a time (a newer turn's replaces it)."""
        if self.patience is not None:
            self.patience.cancel()

        async def wait() -> None:
            await asyncio.sleep(ms / 1000)
            await self._apply(self.turns.handle(PatienceOver(turn_id, self._audio_playing())))

        self.patience = asyncio.create_task(wait(), name=f"patience-{turn_id}")

    # --- session set-up -------------------------------------------------------------------------

    async def _start(self, first: conversation_pb2.ClientEvent | None) -> None:
        kind = first.WhichOneof("event") if first is not None else None
        if kind == "session_config":
            resumed, turns = False, []
            self.config = SessionConfig.from_proto(first.session_config, self.policy.turn_detection, self.policy.limits)
            record, token = await self.store.create(self.config.to_record())
            record = await self.store.claim(record.session_id, token, self.policy.replica_id)
        elif kind == "resume_session":
            resumed = True
            record, token = await self._resume(first.resume_session)
            turns = await self.store.history(record.session_id)
        else:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be session_config or resume_session"
            )
        self.session_id, self.epoch = record.session_id, record.epoch
        config = self.config
        self.history = History(
            self.store,
            self.llm,
            self.session_id,
            self.epoch,
            config.system_prompt,
            self.policy.max_response_tokens,
            self._open_llm,
        )
        self.llm_failover = LlmFailover(self.llm, self.history.rebuild_llm, self.session_id)
        self.turns = TurnPolicy(config.predictor_mode)
        self.voice = config.voice
        self.voice_conditioning = await session_conditioning(self.voice, self.policy.voice_prompt_models)
        try:
            await self._open_llm(turns)
            await self._open_encoder()
        except ProtocolError as refusal:  # refused before any work started: the session is not kept
            if refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.telemetry.metrics.errors.labels(code=refusal.code.name).inc()
                await self.store.end(self.session_id, self.epoch)
            raise
        # the LLM has said whether its predictor is trained: that decides how soon a silence ends a segment
        self.config = config.endpointing(self.turns.predictor_decides, self.policy.predictor_silence_ms)
        detector = TurnDetector(self.config.turn_detection)
        self.audio_input = AudioInput(self.vad, detector, config.input_sample_rate_hz)
        await self.emit(self._session_started(token, resumed, len(turns)))

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
        self.config = SessionConfig.resumed(record.config, resume, self.policy.turn_detection)
        return record, resume.resume_token

    def _session_started(self, token: str, resumed: bool, history_turns: int) -> conversation_pb2.ServerEvent:
        return conversation_pb2.ServerEvent(
            session_started=conversation_pb2.SessionStarted(
                session_id=self.session_id,
                resume_token=token,
                input_format=self.config.input_format(),
                output_format=self.config.output_format(),
                resumed=resumed,
                history_turns=history_turns,
                turn_detection=self.config.turn_detection_message(),
            )
        )

    async def _open_llm(self, turns: list[Turn]) -> None:
        """Open the LLM stream with the context rebuilt from the history (new replica or new session)."""
        try:
            ready = await self.llm.open(self.history.llm_config(turns))
        except LinkLost as lost:
            log.warning("session %s: %s", self.session_id, lost)
            cause = lost.__cause__
            if isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.INVALID_ARGUMENT:
                message = "the system prompt is too long for the model's context"
                raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, message) from lost
            if isinstance(lost, ReplicasFull):
                raise _refusal(lost) from lost
            raise ProtocolError(grpc.StatusCode.UNAVAILABLE, LLM_LOST) from lost
        self.turns.handle(LlmOpened(ready.predictor_trained))
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
                await self.history.rebuild_llm()
            if not self.encoder.usable:
                await self._open_encoder()
        except (ProtocolError, LinkLost, grpc.aio.AioRpcError, RedisError) as error:
            log.warning("session %s: a stream could not be reopened: %s", self.session_id, error)

    # --- user input -----------------------------------------------------------------------------

    async def _on_audio(self, audio: bytes) -> None:
        rate = self.config.input_sample_rate_hz
        limit = PCM16_BYTES * rate * self.policy.max_chunk_ms // 1000
        if len(audio) > limit:
            raise ProtocolError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"audio chunk of {len(audio)} bytes exceeds {limit} bytes ({self.policy.max_chunk_ms} ms at {rate} Hz)",
            )
        try:
            samples = pcm16_to_float(audio)
        except ValueError as error:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        actions = await asyncio.to_thread(self.audio_input.process, samples)
        for action, following in itertools.pairwise([*actions, None]):
            if isinstance(action, SpeechStarted):
                started = UserSpeechStarted(
                    _new_turn_id(), self._audio_playing(), action.event.audio_ms, self._llm_listening()
                )
                await self._apply(self.turns.handle(started))
            elif isinstance(action, SpeechAudio) and isinstance(following, SpeechStopped):
                self.turns.handle(UserSpeechAudio(_duration_ms(action)))
                self.utterance_tail = action.samples  # goes with the flush: one message, one encoder step
            elif isinstance(action, SpeechAudio):
                await self._send_speech(action)
            elif isinstance(action, SpeechStopped):
                self.timings = TurnTimings(end_of_speech=now_ms())
                stopped = _turn_event(
                    TurnType.USER_SPEECH_STOPPED, self.turns.user_turn, input_offset_ms=action.event.audio_ms
                )
                await self.emit(stopped)
                await self._apply(self.turns.handle(UserSpeechStopped()))

    async def _open_user_turn(self, decision: OpenUserTurn) -> None:
        """The user speaks: a wait for more of the last turn is over (its next flush starts another)."""
        if self.patience is not None:
            self.patience.cancel()
        await self._ensure_links()
        if not (decision.continued and self.trace is not None and self.trace.turn_id == decision.turn_id):
            self._begin_trace(decision.turn_id)
        started = _turn_event(TurnType.USER_SPEECH_STARTED, decision.turn_id, input_offset_ms=decision.input_offset_ms)
        await self.emit(started)
        await self._set_state(SessionState.USER_SPEAKING)

    async def _send_speech(self, action: SpeechAudio) -> None:
        self.turns.handle(UserSpeechAudio(_duration_ms(action)))
        turn_id = self.turns.user_turn
        chunk = encoder_pb2.EncodeAudioChunk(
            audio=float_to_pcm16(action.samples), turn_id=turn_id, trace_context=self._carrier(turn_id)
        )
        with contextlib.suppress(LinkLost):  # a lost encoder is reopened at the next turn
            await self.encoder.write(encoder_pb2.EncodeRequest(audio_chunk=chunk))

    async def _flush_encoder(self, decision: FlushEncoder) -> None:
        turn_id = decision.turn_id
        tail, self.utterance_tail = self.utterance_tail, None
        audio = b"" if tail is None else float_to_pcm16(tail)
        utterance_end = encoder_pb2.EndOfUtterance(turn_id=turn_id, trace_context=self._carrier(turn_id), audio=audio)
        end = encoder_pb2.EncodeRequest(end_of_utterance=utterance_end)
        if not decision.required:  # the predictor's early flush: the turn ends here, not at the VAD's silence
            self.timings = self.timings or TurnTimings(end_of_speech=now_ms())
            with contextlib.suppress(LinkLost):
                await self.encoder.write(end)
            return
        try:
            await self.encoder.write(end)
        except LinkLost as lost:
            log.warning("session %s turn %s: %s", self.session_id, turn_id, lost)
            await self._apply(self.turns.handle(FlushLost()))

    async def _on_encoder_lost(self, lost: LinkLost) -> None:
        """The encoder went away; a user turn waiting for its flush ends, failed."""
        decisions = self.turns.handle(EncoderLost())
        if decisions:
            log.warning("session %s turn %s: %s", self.session_id, self.turns.user_turn, lost)
        await self._apply(decisions)

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
        predicted = Predicted(
            signal.turn_id, signal.respond, signal.backchannel, signal.stop_speaking, self._audio_playing()
        )
        await self._apply(self.turns.handle(predicted))

    async def _on_user_transcript(self, transcript: llm_pb2.UserTranscript) -> None:
        """The LLM transcribed a spoken user turn (after its reply): tell the client, complete the history."""
        await self.emit(
            conversation_pb2.ServerEvent(
                transcript=conversation_pb2.Transcript(
                    turn_id=transcript.turn_id, role=common_pb2.ROLE_USER, text=transcript.text, is_final=True
                )
            )
        )
        await self.history.user_transcript(transcript.turn_id, transcript.text)

    async def _on_context_trimmed(self, trimmed: common_pb2.ContextTrimmed) -> None:
        """The oldest turns left the model's context (the history keeps them): tell the client."""
        await self.emit(conversation_pb2.ServerEvent(context_trimmed=trimmed))

    async def _on_flush_done(self, flush: encoder_pb2.FlushDone) -> None:
        await self._apply(self.turns.handle(Flushed(flush.turn_id, flush.compute_ms)))

    async def _answer_spoken(self, decision: AnswerSpoken) -> None:
        timings = self.timings or TurnTimings(end_of_speech=now_ms())
        timings.encoder_flush_ms = decision.encoder_flush_ms
        timings.encoder_done = now_ms()
        try:
            await self.history.user_spoke(decision.turn_id, decision.audio_ms, self.voice.instruction)
        except RedisError as error:
            log.warning("session %s turn %s: %s", self.session_id, decision.turn_id, error)
            await self._fail_turn(decision.turn_id, grpc.StatusCode.UNAVAILABLE, STORE_LOST, store=False)
            return
        await self._start_response(timings)

    async def _on_text(self, text_input: conversation_pb2.TextInput) -> None:
        self.policy.limits.check_text(text_input.text)
        check_trace_context("text_input.trace_context", text_input.trace_context)
        instruction = self.voice.turn_instruction(text_input.voice_instruction, self.policy.limits)
        text = text_input.text.strip()
        if not text:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "text_input.text is empty")
        typed = TextTyped(_new_turn_id(), text, self._audio_playing(), dict(text_input.trace_context), instruction)
        await self._apply(self.turns.handle(typed))

    async def _answer_typed(self, decision: AnswerTyped) -> None:
        turn_id = decision.turn_id
        self._begin_trace(turn_id, decision.trace_parent)
        timings = TurnTimings(end_of_speech=now_ms())
        await self.emit(
            conversation_pb2.ServerEvent(
                transcript=conversation_pb2.Transcript(
                    turn_id=turn_id, role=common_pb2.ROLE_USER, text=decision.text, is_final=True
                )
            )
        )
        try:
            await self.history.user_typed(turn_id, decision.text, self._carrier(turn_id), decision.voice_instruction)
        except RedisError as error:
            log.warning("session %s turn %s: %s", self.session_id, turn_id, error)
            await self._fail_turn(turn_id, grpc.StatusCode.UNAVAILABLE, STORE_LOST, store=False)
            return
        except ContextLost as error:
            log.warning("session %s turn %s: %s", self.session_id, turn_id, error)
            await self._fail_turn(turn_id, grpc.StatusCode.UNAVAILABLE, LLM_LOST)
            return
        if not self.encoder.usable:  # ready for the user's next spoken turn
            with contextlib.suppress(LinkLost, grpc.aio.AioRpcError):
                await self.encoder.open(self.session_id)
        await self._start_response(timings, decision.voice_instruction)

    # --- responses ------------------------------------------------------------------------------

    def _begin_trace(self, turn_id: str, parent: Mapping[str, str] | None = None) -> TurnTrace:
        """A new user turn's trace; a turn still open (heard, never answered) ends first."""
        if self.trace is not None and self.trace is not self.response_trace:
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
        trace = self.response_trace
        if trace is not None:
            trace.finish(response, report, outcome, failure)
            self.response_trace = None
            if self.trace is trace:
                self.trace = None

    async def _start_response(self, timings: TurnTimings, instruction: str | None = None) -> None:
        speech = not self.config.text_only
        turn_id = _new_turn_id()
        trace = self.trace or self._begin_trace(turn_id)
        self.response_trace = trace
        response = Response(
            session_id=self.session_id,
            turn_id=turn_id,
            llm=self.llm,
            voicelm=self.peers.voicelm if speech else None,
            vocoder=self.peers.vocoder if speech else None,
            emit=self.emit,
            output_rate=self.config.output_sample_rate_hz,
            instruction=self.voice.instruction if instruction is None else instruction,
            voice=self.voice_conditioning,
            first_audio_positions=self.policy.first_audio_positions,
            first_audio_tokens=self.policy.first_audio_tokens,
            audio_lead_s=self.policy.audio_lead_s,
            max_tokens=self.policy.max_response_tokens,
            timings=timings,
            timeout_s=self.policy.turn_timeout_s,
            trace_context=trace.respond(turn_id),
            resume_llm=self.llm_failover.resume,
        )
        self.response = response
        self.turns.handle(ResponseStarted(turn_id))
        await self.emit(_turn_event(TurnType.RESPONSE_STARTED, response.turn_id))
        await self._set_state(SessionState.RESPONDING)
        self.response_task = asyncio.create_task(self._run_response(response), name=f"response-{response.turn_id}")

    async def _run_response(self, response: Response) -> None:
        """Run a response to its end; a failure costs this turn only, never the session's stream, and ends it
        with one RESPONSE_DONE (end_reason FAILED) whatever failed."""
        try:
            await self._complete_response(response)
        except RedisError as error:
            self.turns.handle(ResponseEnded(response.turn_id))
            log.warning("session %s turn %s: %s", self.session_id, response.turn_id, error)
            if not response.ended:
                await self._fail_turn(response.turn_id, grpc.StatusCode.UNAVAILABLE, STORE_LOST, response, store=False)
        except Exception:  # a defect, not a lost peer: the session goes on, this turn says it failed
            log.exception("session %s turn %s failed", self.session_id, response.turn_id)
            self.turns.handle(ResponseEnded(response.turn_id))
            if not response.ended:
                await self._fail_turn(response.turn_id, grpc.StatusCode.INTERNAL, TURN_DEFECT, response)

    async def _complete_response(self, response: Response) -> None:
        try:
            result = await response.run()
        except (LinkLost, grpc.aio.AioRpcError) as error:
            self.turns.handle(ResponseEnded(response.turn_id))
            log.warning("session %s turn %s: %s", self.session_id, response.turn_id, _describe(error))
            code = _downstream_code(error)
            await self._fail_turn(response.turn_id, code, _turn_failed_message(code), response)
            return
        self.turns.handle(ResponseEnded(response.turn_id))
        await self.history.reply_completed(response.turn_id, result.text, result.audio_ms)
        await self._final_transcript(response.turn_id, result.text)
        end_reason = LLM_END_REASONS.get(result.end_reason, EndReason.COMPLETED)
        await self._finish_turn(response, TurnType.RESPONSE_DONE, end_reason=end_reason)

    async def _interrupt(self, decision: Interrupt) -> None:
        """Barge-in or cancel: stop the response; history and LLM context keep what the user heard."""
        response, generating = self.response, decision.generating
        assert response is not None and response.turn_id == decision.turn_id, "the policy interrupts the last response"
        if generating:
            self.response_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.response_task
        await response.cancel()
        heard_ms, heard_text = response.heard(self._played_ms(response), self.schedule)
        await self.history.reply_interrupted(
            response.turn_id, heard_text, heard_ms, response.audio_ms, generating, response.trace_context
        )
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

    def _generating(self) -> Response | None:
        response = self.response
        return response if response is not None and self.turns.generating == response.turn_id else None

    def _llm_listening(self) -> bool:
        """No reply text is being generated: the LLM takes user audio now (the reply's speech may go on)."""
        return self.response is None or self.response.text_done or self._generating() is None

    def _audio_playing(self) -> bool:
        """The last response's audio is still playing at the client (by the time since its first audio)."""
        response = self.response
        if response is None or response.timings.first_audio_sent is None:
            return False
        return now_ms() < response.timings.first_audio_sent + response.audio_ms

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
            await self.history.reply_failed(turn_id, heard_text, heard_ms)
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
        """The turn's LatencyReport; the encoder's failovers since the last report that replayed an utterance (the
        encoder stream is the session's: one that broke between turns cost no turn) go before the reply's own."""
        new_encoder_failovers = self.encoder.utterance_failovers - self.encoder_failovers_reported
        self.encoder_failovers_reported = self.encoder.utterance_failovers
        response.timings.failovers[:0] = [ENCODER_HOP] * new_encoder_failovers
        trace = self.response_trace or self.trace
        return response.timings.report(response.turn_id, trace.trace_id if trace is not None else "")

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
        if self.patience is not None:
            self.patience.cancel()
        if self.response_task is not None and not self.response_task.done():
            self.response_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.response_task
        if (generating := self._generating()) is not None:
            await generating.cancel()
        if self.response_trace is not None:
            self.response_trace.abandon("cancelled")
        if self.trace is not None and self.trace is not self.response_trace:
            self.trace.abandon("cancelled")
        self.trace = self.response_trace = None
        await self.encoder.close()
        await self.llm.close()


def _refusal(lost: LinkLost) -> ProtocolError:
    """The client's status for a hop that could not be opened: RESOURCE_EXHAUSTED with the retry hint when every
    replica was full, else UNAVAILABLE."""
    if isinstance(lost, ReplicasFull) and lost.retry_after_ms is not None:
        return ProtocolError(lost.code, str(lost), ((RETRY_AFTER_METADATA, str(lost.retry_after_ms)),))
    return ProtocolError(lost.code, str(lost))


def _duration_ms(audio: SpeechAudio) -> float:
    return 1000 * audio.samples.shape[0] / ENCODER_SAMPLE_RATE_HZ


def _new_turn_id() -> str:
    return uuid.uuid4().hex[:12]


def _turn_event(event_type: int, turn_id: str, **fields) -> conversation_pb2.ServerEvent:
    fields = {name: round(value) if isinstance(value, float) else value for name, value in fields.items()}
    return conversation_pb2.ServerEvent(
        turn_event=conversation_pb2.TurnEvent(type=event_type, turn_id=turn_id or "", **fields)
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
