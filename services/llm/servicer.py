"""Reasoner servicer: one Session stream per conversation; the LLM context lives as long as the stream.

Behaviour of a stream (after LlmSessionConfig -> LlmSessionReady):
- Work on the context runs in request order, one request at a time (AudioInput -> one PredictorSignal,
  GenerateResponse -> TextTokens then ResponseEnd, AppendTurn -> nothing). Requests are read by their own
  task, so a CancelGeneration is seen while a response is generating: generation stops within one token,
  the response is dropped from the context and ResponseEnd(CANCELLED) follows.
- A finished response stays in the context. A CancelGeneration naming the LAST finished response also
  drops it (duplex does this when the user barges in while that response's audio is still playing), as
  long as nothing but user audio was appended after it: that audio (the barge-in) is kept, re-run after the
  cut, and a following AppendTurn (the heard text) goes before it. The drop is confirmed by a second
  ResponseEnd(CANCELLED) for that turn. A CancelGeneration for any other turn (unknown, already dropped, or
  followed by a text turn or another response) changes nothing and gets no answer: cancels race with
  responses ending, so a late one is not an error.
- A GenerateResponse while another response is generating (and not cancelled) fails the stream with
  FAILED_PRECONDITION (after a CancelGeneration it is queued behind the cancelled one's ResponseEnd); a
  request before the config, embeddings that are not float32 (T>0, hidden size), or an unset role fail it
  with INVALID_ARGUMENT; a stream past MINMO_MAX_SESSIONS is refused with RESOURCE_EXHAUSTED.
- Failover: a GenerateResponse with prefix_token_ids (the tokens a lost replica had sent for this turn) feeds them
  as the start of the reply and continues after them: TextTokens go on at index len(prefix), and ResponseEnd counts
  and decodes the whole reply. With greedy sampling the continuation is what the lost replica would have said.
- First audio first: a GenerateResponse with pause_after_tokens N sends N TextTokens, then waits for its
  ResumeGeneration (or its cancel, or PAUSE_LIMIT_S) before generating more; the transcript of the user turn comes
  after the whole reply, so it waits too. The runtime computes the next token while this one is being sent.
- Sampling: temperature and top_k from LlmSessionConfig.sampling (unset: greedy); top_p and seed are ignored.
- The stream ending (or being cancelled) ends the runtime sequence, freeing the KV cache.
- Context length never exceeds the model's max_positions: the config's history is trimmed oldest first to half of it
  (LlmSessionReady.dropped_history_turns); when, between turns, the context passes 3/4 of it, it is rebuilt from the
  system prompt (its KV entries kept) and the newest turns that fit in half (their text; a spoken turn by its
  transcript) and a ContextTrimmed says so; a response is capped to the room left; a system prompt over half of it
  is INVALID_ARGUMENT and a single turn that cannot fit is RESOURCE_EXHAUSTED.
- A text turn and a (re)built context are prefilled in slices of MINMO_PREFILL_TOKENS positions, each its own compute
  task: other sessions' steps run between a long prompt's slices, and a stream ending mid-prefill stops within one.

Spans (children of the context each request carries): a user turn's AudioInputs are one `llm.audio` span
(ended when a response, a text turn or another turn's audio comes next), a response is `llm.generate` (from the
request being read, so it includes the queue behind earlier work), and AppendTurn and a drop of a finished
response get `llm.append_turn` and `llm.drop_response`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc
import torch

from minmo.api.tensors import tensor_from_proto, tensor_to_proto
from minmo.model.build import checkpoint_folder
from minmo.model.config import SPEECH_BLOCK, SPEECH_TOKEN_RATE_HZ, TEXT_BLOCK, MinMoConfig
from minmo.model.detokenizer import IncrementalDetokenizer
from minmo.model.tokenizer import Tokenizer
from minmo.runtime.base import InvalidInput, ModelRuntime, PlaybackLead, Sequence
from minmo.runtime.llm_model import (
    OP_APPEND_AUDIO,
    OP_APPEND_TEXT_TURN,
    OP_BEGIN_RESPONSE,
    OP_DROP_RESPONSE,
    OP_GENERATE,
    OP_REBUILD,
    OP_START,
    OP_TRANSCRIBE,
    history_tensors,
    text_tensor,
)
from minmo.serving.backpressure import Outbox, slow_reader_message
from minmo.serving.errors import status_for
from minmo.serving.server import SessionLimiter
from minmo.telemetry import HopSpan, Telemetry
from minmo.v1 import common_pb2, llm_pb2, llm_pb2_grpc

MODEL = "llm"
QUEUED_JOBS = 256  # requests read ahead of the worker; past it the reader waits (backpressure on the caller)
QUEUED_RESPONSES = 1024  # responses the caller has not read yet; past it the worker waits, then the session fails
PAUSE_LIMIT_S = 2.0  # longest a response waits for its ResumeGeneration (GenerateResponse.pause_after_tokens)
FIVE_TOKENS = 5  # ResponseEnd.five_tokens_ms: the paper's latency budget counts 5 text tokens per speech block
SECONDS_PER_TEXT_TOKEN = SPEECH_BLOCK / TEXT_BLOCK / SPEECH_TOKEN_RATE_HZ  # a text token's share of a reply's speech
log = logging.getLogger("minmo.llm")

Job = Callable[[], Awaitable[None]]
TURN_MARKUP_POSITIONS = 8  # chat-format markers around a text turn (role header, end of turn), generously
RESPONSE_END_POSITIONS = 8  # what closing a response appends after its last token
RESPONSE_ROOM = 64  # positions a new turn must leave for at least a short reply


@dataclass(frozen=True)
class ReasonerOptions:
    """What the servicer needs to know besides the runtime: sizes, defaults and the predictor's provenance."""

    hidden_size: int
    max_response_tokens: int
    predictor_trained: bool
    max_positions: int = 4096  # the model's context limit, in positions
    slow_caller_s: float = 5.0  # MINMO_SLOW_CLIENT_S: how long a full queue may wait before the session fails
    prefill_tokens: int = 0  # positions per prefill slice of a text turn or a (re)built context; 0: at once

    @property
    def trim_at(self) -> int:
        """Context length past which the oldest turns are dropped between turns."""
        return self.max_positions * 3 // 4

    @property
    def trimmed_size(self) -> int:
        """What a trimmed context (system prompt + newest turns) may take."""
        return self.max_positions // 2


class SessionFailed(Exception):
    """End the stream with this status (raised in the handler, so the status reaches the client)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _slow(capacity: int, stall_s: float) -> SessionFailed:
    message = slow_reader_message("the caller", f"{capacity} queued responses", stall_s)
    return SessionFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def _behind(capacity: int, stall_s: float) -> SessionFailed:
    return SessionFailed(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the llm is {capacity} requests behind this session and none was taken for {stall_s:g} s: send audio no "
        "faster than real time",
    )


class ReasonerServicer(llm_pb2_grpc.ReasonerServicer):
    def __init__(
        self,
        runtime: ModelRuntime,
        tokenizer: Tokenizer,
        limiter: SessionLimiter,
        options: ReasonerOptions,
        telemetry: Telemetry,
    ) -> None:
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.limiter = limiter
        self.options = options
        self.telemetry = telemetry

    async def Session(
        self, request_iterator: AsyncIterator[llm_pb2.LlmRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.LlmResponse]:
        async with self.limiter.admit(context):
            session: _Session | None = None
            try:
                session = _Session(self, await _read_config(request_iterator))
                yield llm_pb2.LlmResponse(session_ready=await session.start())
                async for response in session.run(request_iterator):
                    yield response
            except InvalidInput as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except SessionFailed as failure:
                await context.abort(failure.code, failure.details)
            finally:
                if session is not None:
                    await session.close()


async def _read_config(requests: AsyncIterator[llm_pb2.LlmRequest]) -> llm_pb2.LlmSessionConfig:
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("request") != "config":
        raise SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, "a Session stream must start with config")
    if first.config.max_response_tokens < 0:
        raise SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, "max_response_tokens must be >= 0 (0: default)")
    for turn in first.config.history:
        _check_role(turn.role, "history turn")
    return first.config


@dataclass
class _Generation:
    """A GenerateResponse from the moment it is read until its ResponseEnd."""

    turn_id: str
    received: float  # perf_counter when read
    max_tokens: int
    instruction: str
    hop: HopSpan
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    pause_after_tokens: int = 0  # tokens sent before it waits for `resumed` (0: never)
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    prefix: list[int] = field(default_factory=list)  # token ids a lost replica generated (failover): fed, not sent
    token_ids: list[int] = field(default_factory=list)  # the response's tokens, the prefix's first
    detokenizer: IncrementalDetokenizer | None = None  # set when the generation starts: this session's tokenizer
    first_token_ms: float = 0.0
    five_tokens_ms: float = 0.0
    lead: PlaybackLead = field(default_factory=lambda: PlaybackLead(SECONDS_PER_TEXT_TOKEN))

    def steady(self) -> bool:
        """Whether the next token is steady work: past the tokens the first audio needs (the caller's pause point),
        with the reply ahead of its listener (a text token is about 0.12 s of speech: 5 positions per 15 tokens)."""
        return self.generated_here >= self.pause_after_tokens and self.lead.steady(self.generated_here)

    @property
    def generated_here(self) -> int:
        """Tokens this replica generated (a failover's prefix is not among them): its timings and pause count these."""
        return len(self.token_ids) - len(self.prefix)

    @property
    def text(self) -> str:
        """The response text sent so far (a character still cut at the end is not)."""
        return self.detokenizer.text if self.detokenizer is not None else ""


class _Session:
    """One stream: a reader task (requests -> jobs; cancels at once), a worker task running the jobs in order,
    and the responses in between."""

    def __init__(self, servicer: ReasonerServicer, config: llm_pb2.LlmSessionConfig) -> None:
        self.runtime = servicer.runtime
        self.tokenizer = servicer.tokenizer
        self.options = servicer.options
        self.telemetry = servicer.telemetry
        self.config = config
        self.sequence_id = f"{config.session_id}-{uuid.uuid4().hex}"
        self.max_tokens = config.max_response_tokens or self.options.max_response_tokens
        self.sampling = _sampling(config.sampling)
        stall_s = servicer.options.slow_caller_s
        self.jobs: Outbox[Job] = Outbox(QUEUED_JOBS, stall_s, lambda: _behind(QUEUED_JOBS, stall_s))
        self.out: Outbox[llm_pb2.LlmResponse] = Outbox(
            QUEUED_RESPONSES, stall_s, lambda: _slow(QUEUED_RESPONSES, stall_s)
        )
        self.generation: _Generation | None = None  # read and not yet ended
        self.last_finished: _Generation | None = None  # the last response that finished (not cancelled)
        self.audio_inputs = 0
        self.audio: _AudioTurn | None = None  # the user turn whose audio is being appended
        self.tasks: list[asyncio.Task] = []
        self.turns: list[list] = []  # [role, text] of the turns in the context, oldest first (for trimming)
        self.position = 0  # context length, in positions, after the last request
        self.user_turn_open = False  # user audio was appended and no response has begun since

    async def start(self) -> llm_pb2.LlmSessionReady:
        started = time.perf_counter()
        prompt_tokens = self._cost(self.config.system_prompt)
        if prompt_tokens > self.options.trimmed_size:
            raise SessionFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the system prompt is {prompt_tokens} tokens; at most {self.options.trimmed_size} fit this model",
            )
        history = [[turn.role, turn.text] for turn in self.config.history]
        dropped = await self._rebuild(history)
        return llm_pb2.LlmSessionReady(
            session_id=self.config.session_id,
            context_tokens=self.position,
            predictor_trained=self.options.predictor_trained,
            compute_ms=_ms_since(started),
            max_context_tokens=self.options.max_positions,
            dropped_history_turns=dropped,
        )

    def _cost(self, text: str) -> int:
        """Positions a text turn takes (its tokens and the chat format's markers around them)."""
        return len(self.tokenizer.encode(text)) + TURN_MARKUP_POSITIONS

    async def _rebuild(self, turns: list[list], started: bool = False) -> int:
        """Start the context over from the system prompt and the newest of `turns` that fit in half the model's
        limit; returns how many of the oldest were left out. Once `started`, the system prompt's KV entries are kept
        (OP_REBUILD) and only the kept turns are prefilled again."""
        budget = self.options.trimmed_size - self._cost(self.config.system_prompt)
        keep = len(turns)
        while keep and sum(self._cost(text) for _, text in turns[len(turns) - keep :]) > budget:
            keep -= 1
        while True:
            kept = turns[len(turns) - keep :] if keep else []
            inputs = {**history_tensors(kept), "prefill_tokens": torch.tensor([self.options.prefill_tokens])}
            if started:
                outputs = await self._infer(OP_REBUILD, inputs)
            else:
                inputs["system_prompt"] = text_tensor(self.config.system_prompt)
                outputs = await self._infer(OP_START, inputs, start=True)
            self.position = int(outputs["position"][0])
            if self.position <= self.options.trimmed_size or not keep:
                break
            keep -= 1  # the estimate was short (a tokenizer that merges differently in context): one fewer
        self.turns = [list(turn) for turn in kept]
        self.last_finished = None  # the rebuilt context has no droppable response
        return len(turns) - keep

    async def _trim_if_full(self, force: bool = False) -> None:
        """Between turns: past 3/4 of the limit (or when `force`d), drop the oldest turns (system prompt kept) and
        say so. Runs between jobs (no response is in flight then), never while a user turn's audio is open."""
        if (self.position <= self.options.trim_at and not force) or self.user_turn_open:
            return
        dropped = await self._rebuild(self.turns, started=True)
        trimmed = common_pb2.ContextTrimmed(
            dropped_turns=dropped, context_tokens=self.position, max_context_tokens=self.options.max_positions
        )
        log.info("session %s: context trimmed by %d turns to %d positions", self.sequence_id, dropped, self.position)
        await self.out.put(llm_pb2.LlmResponse(context_trimmed=trimmed))

    async def run(self, requests: AsyncIterator[llm_pb2.LlmRequest]) -> AsyncIterator[llm_pb2.LlmResponse]:
        self.tasks = [asyncio.create_task(self._read(requests)), asyncio.create_task(self._work())]
        while (item := await self.out.get()) is not None:  # raises the SessionFailed that ended the session
            yield item

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self._end_audio()
        if self.generation is not None:  # read, but the stream ended before it ran
            self.generation.hop.end("cancelled")
        await self.runtime.end_sequence(MODEL, self.sequence_id)

    async def _read(self, requests: AsyncIterator[llm_pb2.LlmRequest]) -> None:
        try:
            async for request in requests:
                await self._dispatch(request)
            self.jobs.close()
        except SessionFailed as failure:
            self.out.close(failure)
        except Exception as error:  # a dead task must end the stream, not leave it waiting for responses
            self.out.close(SessionFailed(*status_for(error, "the llm's request reader")))

    async def _dispatch(self, request: llm_pb2.LlmRequest) -> None:
        """Queue the request's job (waiting while the worker is QUEUED_JOBS behind: backpressure on the caller);
        a cancel of the running generation takes effect at once."""
        kind = request.WhichOneof("request")
        if kind == "audio_input":
            index, self.audio_inputs = self.audio_inputs, self.audio_inputs + 1
            embeddings = self._embeddings(request.audio_input)
            audio = self._audio_turn(request.audio_input)
            received = time.perf_counter()
            await self.jobs.put(lambda: self._audio(audio, index, embeddings, received))
        elif kind == "generate_response":
            await self.jobs.put(self._generate_job(request.generate_response))
        elif kind == "cancel_generation":
            cancel = request.cancel_generation
            if self.generation is not None and self.generation.turn_id == cancel.turn_id:
                self.generation.cancelled.set()
            else:
                await self.jobs.put(lambda: self._drop_finished(cancel.turn_id, cancel.trace_context))
        elif kind == "resume_generation":
            if self.generation is not None and self.generation.turn_id == request.resume_generation.turn_id:
                self.generation.resumed.set()
        elif kind == "append_turn":
            turn = request.append_turn
            _check_role(turn.role, "AppendTurn")
            await self.jobs.put(lambda: self._append_turn(turn))
        else:
            raise SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind or 'empty'} message after config")

    def _embeddings(self, audio: llm_pb2.AudioInput) -> torch.Tensor:
        try:
            embeddings = tensor_from_proto(audio.embeddings)
        except ValueError as error:
            raise SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, f"AudioInput.embeddings: {error}") from error
        expected = self.options.hidden_size
        if embeddings.dtype != torch.float32 or embeddings.dim() != 2 or embeddings.shape[1] != expected:
            raise SessionFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"AudioInput.embeddings must be float32 (T, {expected}), "
                f"got {embeddings.dtype} {tuple(embeddings.shape)}",
            )
        if embeddings.shape[0] == 0:
            raise SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, "AudioInput.embeddings has no frames")
        return embeddings

    def _generate_job(self, request: llm_pb2.GenerateResponse) -> Job:
        if self.generation is not None and not self.generation.cancelled.is_set():
            raise SessionFailed(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"GenerateResponse for turn {request.turn_id!r} while turn {self.generation.turn_id!r} is still "
                "generating; cancel it or wait for its ResponseEnd",
            )
        if request.max_tokens < 0:
            raise SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be >= 0 (0: session default)")
        if request.pause_after_tokens < 0:
            raise SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, "pause_after_tokens must be >= 0 (0: never pause)")
        max_tokens = request.max_tokens or self.max_tokens
        if len(request.prefix_token_ids) >= max_tokens:
            raise SessionFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"prefix_token_ids has {len(request.prefix_token_ids)} tokens; a response continued after failover "
                f"needs fewer than its max_tokens ({max_tokens})",
            )
        self.generation = _Generation(
            turn_id=request.turn_id,
            received=time.perf_counter(),
            max_tokens=max_tokens,
            instruction=request.instruction,
            hop=self._begin("llm.generate", request.trace_context, request.turn_id),
            prefix=list(request.prefix_token_ids),
            pause_after_tokens=request.pause_after_tokens,
        )
        generation = self.generation
        return lambda: self._generate(generation)

    async def _work(self) -> None:
        try:
            while (job := await self.jobs.get()) is not None:
                await job()
                await self._trim_if_full()
            self.out.close()
        except SessionFailed as failure:  # the caller stopped reading: its responses overflowed their queue
            self.out.close(failure)
            # The stream ends once the caller reads up to the status, which may be never: free the context now.
            await self.runtime.end_sequence(MODEL, self.sequence_id)
        except InvalidInput as error:
            self.out.close(SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, str(error)))
        except Exception as error:  # a dead task must end the stream, not leave it waiting for responses
            self.out.close(SessionFailed(*status_for(error, "the llm")))

    def _begin(self, name: str, trace_context: Mapping[str, str], turn_id: str) -> HopSpan:
        return self.telemetry.begin(name, trace_context, session_id=self.config.session_id, turn_id=turn_id)

    def _audio_turn(self, audio: llm_pb2.AudioInput) -> _AudioTurn:
        """The span of the user turn this audio belongs to; audio of a new turn ends the previous one."""
        if self.audio is None or self.audio.hop.turn_id != audio.turn_id:
            self._end_audio()
            self.audio = _AudioTurn(self._begin("llm.audio", audio.trace_context, audio.turn_id))
        return self.audio

    def _end_audio(self) -> None:
        if self.audio is not None:
            self.audio.hop.end()
            self.audio = None

    async def _audio(self, audio: _AudioTurn, index: int, embeddings: torch.Tensor, received: float) -> None:
        started = time.perf_counter()
        self.telemetry.metrics.queue_time.observe(started - received)
        if self.position + embeddings.shape[0] + RESPONSE_ROOM > self.options.max_positions:
            raise SessionFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this user turn is too long for the model's context of {self.options.max_positions} positions",
            )
        self.user_turn_open = True
        try:
            outputs = await self._infer(OP_APPEND_AUDIO, {"embeddings": embeddings})
        except BaseException as error:
            audio.hop.fail_with(error)
            raise
        keep_listening, respond, stop_speaking, backchannel = outputs["probs"].tolist()
        audio.add(embeddings.shape[0], _ms_since(started), respond)
        signal = llm_pb2.PredictorSignal(
            turn_id=audio.hop.turn_id,
            chunk_index=index,
            keep_listening=keep_listening,
            respond=respond,
            stop_speaking=stop_speaking,
            backchannel=backchannel,
            compute_ms=_ms_since(started),
        )
        await self.out.put(llm_pb2.LlmResponse(predictor_signal=signal))

    async def _generate(self, generation: _Generation) -> None:
        """Begin, stream tokens until the end, the cap or a cancel, then send ResponseEnd — and then, off the
        reply's critical path, the transcript of the spoken user turn it answered."""
        spoken_turn = self.audio.hop.turn_id if self.audio is not None else None
        self._end_audio()
        queue_s = time.perf_counter() - generation.received
        self.telemetry.metrics.queue_time.observe(queue_s)
        generation.hop.set(queue_ms=1000 * queue_s, max_tokens=generation.max_tokens)
        try:
            reason = llm_pb2.ResponseEnd.CANCELLED
            if not generation.cancelled.is_set():
                self.last_finished = None  # a new response makes the previous one impossible to drop
                if self.user_turn_open:
                    self.turns.append([common_pb2.ROLE_USER, ""])  # its transcript fills it in
                    self.user_turn_open = False
                await self._begin_response(generation)
                reason = await self._stream_tokens(generation)
                if reason == llm_pb2.ResponseEnd.CANCELLED:
                    await self._infer(OP_DROP_RESPONSE, {})
            await self._send_end(generation, reason)
        except BaseException as error:
            generation.hop.fail_with(error)
            raise
        finally:
            if self.generation is generation:  # a cancelled one may already have a successor queued
                self.generation = None
        self._record(generation, reason)
        if reason != llm_pb2.ResponseEnd.CANCELLED:
            self.last_finished = generation
            self.turns.append([common_pb2.ROLE_ASSISTANT, generation.text])
        if spoken_turn is not None:
            await self._transcribe(spoken_turn)

    async def _begin_response(self, generation: _Generation) -> None:
        """Open the reply; one continued after failover starts with the tokens the lost replica sent (its prefix)."""
        room = self.options.max_positions - self.position - self._cost(generation.instruction) - RESPONSE_END_POSITIONS
        if len(generation.prefix) > room:
            raise SessionFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"prefix_token_ids has {len(generation.prefix)} tokens; the context has room for {max(room, 0)}",
            )
        inputs = {"instruction": text_tensor(generation.instruction)}
        if generation.prefix:
            inputs["prefix_ids"] = torch.tensor(generation.prefix, dtype=torch.int64)
        await self._infer(OP_BEGIN_RESPONSE, inputs)  # the model checks the prefix's ids
        if generation.prefix:
            generation.detokenizer = IncrementalDetokenizer(self.tokenizer)
            for token_id in generation.prefix:
                generation.token_ids.append(token_id)
                generation.detokenizer.push(token_id)

    async def _transcribe(self, turn_id: str) -> None:
        started = time.perf_counter()
        # Steady work: the reply it follows is still being voiced, and its audio goes first on these CPUs.
        outputs = await self._infer(OP_TRANSCRIBE, {"max_tokens": torch.tensor([self.max_tokens])}, steady=True)
        text = bytes(outputs["transcript"].numpy()).decode("utf-8", errors="replace")
        spoken = [turn for turn in self.turns if turn[0] == common_pb2.ROLE_USER and not turn[1]]
        if spoken:
            spoken[-1][1] = text
        transcript = llm_pb2.UserTranscript(turn_id=turn_id, text=text, compute_ms=_ms_since(started))
        await self.out.put(llm_pb2.LlmResponse(user_transcript=transcript))

    def _record(self, generation: _Generation, reason: llm_pb2.ResponseEnd.Reason) -> None:
        tokens = generation.generated_here
        generation.hop.set(
            first_token_ms=generation.first_token_ms if tokens else None,
            five_tokens_ms=generation.five_tokens_ms if tokens >= FIVE_TOKENS else None,
            tokens=tokens,
            end_reason=llm_pb2.ResponseEnd.Reason.Name(reason),
        )
        if tokens:
            self.telemetry.metrics.time_to_first_token.observe(generation.first_token_ms / 1000)
        generation.hop.end("cancelled" if reason == llm_pb2.ResponseEnd.CANCELLED else "ok")

    async def _stream_tokens(self, generation: _Generation) -> llm_pb2.ResponseEnd.Reason:
        room = self.options.max_positions - self.position - RESPONSE_END_POSITIONS
        wanted = generation.max_tokens - len(generation.prefix)
        inputs = {"max_tokens": torch.tensor([max(1, min(wanted, room))]), **self.sampling}
        generate = {"op": torch.tensor([OP_GENERATE]), **inputs}
        stream = self.runtime.infer_stream(MODEL, generate, self._sequence(), steady=generation.steady)
        async with contextlib.aclosing(stream) as tokens:
            async for outputs in tokens:
                self.position = int(outputs["position"][0])
                if generation.cancelled.is_set():
                    return llm_pb2.ResponseEnd.CANCELLED
                if outputs["is_end"][0]:
                    return llm_pb2.ResponseEnd.EOS
                await self._send_token(generation, outputs)
                if generation.generated_here == generation.pause_after_tokens:
                    await _paused(generation)
                if outputs["finished"][0]:
                    return llm_pb2.ResponseEnd.LENGTH
        return llm_pb2.ResponseEnd.CANCELLED  # the stream ended without a finished token

    async def _send_token(self, generation: _Generation, outputs: dict[str, torch.Tensor]) -> None:
        generation.token_ids.append(int(outputs["token_id"][0]))
        token = llm_pb2.TextToken(
            turn_id=generation.turn_id,
            token_id=generation.token_ids[-1],
            text=self._text_piece(generation),
            hidden=tensor_to_proto(outputs["hidden"]),
            token_embedding=tensor_to_proto(outputs["token_embedding"]),
            index=len(generation.token_ids) - 1,
        )
        await self.out.put(llm_pb2.LlmResponse(text_token=token))
        generation.lead.start()
        count = generation.generated_here
        if count == 1:
            generation.first_token_ms = _ms_since(generation.received)
        if count == FIVE_TOKENS:
            generation.five_tokens_ms = _ms_since(generation.received)

    def _text_piece(self, generation: _Generation) -> str:
        """The text the newest token completes (never a cut character), decoded incrementally."""
        if generation.detokenizer is None:
            generation.detokenizer = IncrementalDetokenizer(self.tokenizer)
        return generation.detokenizer.push(generation.token_ids[-1])

    async def _send_end(self, generation: _Generation, reason: llm_pb2.ResponseEnd.Reason) -> None:
        end = llm_pb2.ResponseEnd(
            turn_id=generation.turn_id,
            reason=reason,
            token_count=len(generation.token_ids),
            first_token_ms=generation.first_token_ms,
            five_tokens_ms=generation.five_tokens_ms,
            text=self.tokenizer.decode(generation.token_ids),
        )
        await self.out.put(llm_pb2.LlmResponse(response_end=end))

    async def _append_turn(self, turn: llm_pb2.AppendTurn) -> None:
        cost = self._cost(turn.text)
        if self.position + cost + RESPONSE_ROOM > self.options.max_positions:
            await self._trim_if_full(force=True)  # make room first
        if self.position + cost + RESPONSE_ROOM > self.options.max_positions:
            raise SessionFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a turn of {cost} tokens does not fit the model's context of {self.options.max_positions} positions",
            )
        with self.telemetry.hop(
            "llm.append_turn", turn.trace_context, session_id=self.config.session_id, turn_id=turn.turn_id
        ) as hop:
            inputs = {
                "role": torch.tensor([turn.role]),
                "text": text_tensor(turn.text),
                "prefill_tokens": torch.tensor([self.options.prefill_tokens]),
            }
            outputs = await self._infer(OP_APPEND_TEXT_TURN, inputs)
            self.turns.append([turn.role, turn.text])  # an open user turn joins the log when its response begins
            hop.set(role=common_pb2.Role.Name(turn.role), context_tokens=int(outputs["position"][0]))

    async def _drop_finished(self, turn_id: str, trace_context: Mapping[str, str]) -> None:
        last = self.last_finished
        if last is None or last.turn_id != turn_id:
            log.info("session %s: CancelGeneration for turn %r, which is not droppable", self.sequence_id, turn_id)
            return
        self.last_finished = None
        with self.telemetry.hop(
            "llm.drop_response", trace_context, session_id=self.config.session_id, turn_id=turn_id
        ) as hop:
            outputs = await self._infer(OP_DROP_RESPONSE, {})
            hop.set(dropped=bool(outputs["dropped"][0]))
        if outputs["dropped"][0]:
            assistant = [index for index, turn in enumerate(self.turns) if turn[0] == common_pb2.ROLE_ASSISTANT]
            if assistant:
                del self.turns[assistant[-1]]
            await self._send_end(last, llm_pb2.ResponseEnd.CANCELLED)
        else:
            log.info("session %s: turn %r was followed by other turns; it stays", self.sequence_id, turn_id)

    async def _infer(
        self, op: int, inputs: dict[str, torch.Tensor], start: bool = False, steady: bool = False
    ) -> dict[str, torch.Tensor]:
        outputs = await self.runtime.infer(MODEL, {"op": torch.tensor([op]), **inputs}, self._sequence(start), steady)
        self.position = int(outputs["position"][0])
        return outputs

    def _sequence(self, start: bool = False) -> Sequence:
        return Sequence(self.sequence_id, start=start)


class _AudioTurn:
    """A user turn's audio in this session: its span and running counts."""

    def __init__(self, hop: HopSpan) -> None:
        self.hop = hop
        self.chunks = 0
        self.frames = 0
        self.compute_ms = 0.0

    def add(self, frames: int, compute_ms: float, respond: float) -> None:
        self.chunks += 1
        self.frames += frames
        self.compute_ms += compute_ms
        self.hop.set(chunks=self.chunks, frames=self.frames, compute_ms=self.compute_ms, respond=respond)


def _check_role(role: int, what: str) -> None:
    if role not in (common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_SYSTEM):
        raise SessionFailed(grpc.StatusCode.INVALID_ARGUMENT, f"{what} needs a role (user, assistant or system)")


def _sampling(params: common_pb2.SamplingParams) -> dict[str, torch.Tensor]:
    """The runtime's sampling inputs; unset fields keep the model's defaults (greedy). top_p and seed are not
    supported by the runtime's sampler and are ignored."""
    inputs = {}
    if params.HasField("temperature"):
        inputs["temperature"] = torch.tensor([params.temperature], dtype=torch.float32)
    if params.HasField("top_k"):
        inputs["top_k"] = torch.tensor([params.top_k], dtype=torch.int64)
    return inputs


async def _paused(generation: _Generation) -> None:
    """Wait for the response's ResumeGeneration, its cancel, or PAUSE_LIMIT_S (a duplex that never resumes it)."""
    started = time.perf_counter()
    waits = [asyncio.create_task(event.wait()) for event in (generation.resumed, generation.cancelled)]
    try:
        await asyncio.wait(waits, timeout=PAUSE_LIMIT_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    generation.hop.set(paused_ms=_ms_since(started))


def _ms_since(started: float) -> float:
    return 1000 * (time.perf_counter() - started)


def predictor_is_trained(checkpoint: str | None, cfg: MinMoConfig) -> bool:
    """Whether the duplex predictor loads trained weights (otherwise duplex falls back to VAD endpointing): from
    `checkpoint`, or with none given from the preset's own (nano's shipped weights), as `build_component` loads."""
    folder = checkpoint_folder(cfg, checkpoint)
    return folder is not None and (folder / "duplex_predictor.safetensors").is_file()
