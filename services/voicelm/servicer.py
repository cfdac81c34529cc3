"""VoiceDecoder servicer: one stream per response turn; LLM text positions in, 15 speech tokens per 5 out.
The turn's voice instruction (SynthesizeConfig.voice_instruction) opens the sequence with the sampling settings, and
so do a failover's prefix_speech_tokens: the turn's text positions are then sent again from the start, and only the
speech tokens after the prefix come out.

After TextEnd the model speaks the rest of the turn in parts (`interleave.TailParts`: the tokens a short reply
still needs for its first audio, then one token2wav chunk at a time), each its own runtime call sent on as it comes:
a long tail neither holds a compute thread from other turns' steps for its whole length nor keeps its first tokens
back until its last is made. With SynthesizeConfig.audio_lead_ms the parts are paced:
each waits until the audio already sent is less than the lead ahead of real time (from the stream's first tokens).

The turn's voice-LM state lives in the runtime under a sequence id unique to the stream; whatever way the
stream ends (TextEnd, client cancel, barge-in, an error) the sequence is ended, so no state outlives its turn.
The stream is one `voicelm.synthesize` span, a child of the response context in SynthesizeConfig.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import torch

from minmo.api.speech_tokens import split_speech_tokens
from minmo.api.tensors import tensor_from_proto
from minmo.model.config import SPEECH_TOKEN_RATE_HZ
from minmo.model.interleave import TailParts
from minmo.runtime.base import InvalidInput, ModelRuntime, PlaybackLead, Sequence, TensorMap
from minmo.runtime.llm_model import text_tensor
from minmo.serving.read_ahead import ReadAhead
from minmo.serving.server import SessionLimiter
from minmo.telemetry import HopSpan, Telemetry
from minmo.v1 import common_pb2, voicelm_pb2, voicelm_pb2_grpc

MODEL = "voice_lm"
MAX_AUDIO_LEAD_MS = 60_000
INT64_WRAP = 1 << 64  # a uint64 seed travels to the model as the int64 with the same bits


@dataclass(frozen=True)
class SamplingDefaults:
    """What an unset SamplingParams field means: CosyVoice 2's repetition-aware sampling settings."""

    temperature: float = 1.0
    top_p: float = 0.8
    top_k: int = 25

    def resolve(self, params: common_pb2.SamplingParams) -> TensorMap:
        """The model's sampling inputs; an unset seed gets a fresh random one (nondeterministic, as documented)."""
        seed = params.seed if params.HasField("seed") else secrets.randbits(64)
        return {
            "temperature": torch.tensor([params.temperature if params.HasField("temperature") else self.temperature]),
            "top_p": torch.tensor([params.top_p if params.HasField("top_p") else self.top_p]),
            "top_k": torch.tensor([params.top_k if params.HasField("top_k") else self.top_k], dtype=torch.int64),
            "seed": torch.tensor([seed - INT64_WRAP if seed >= INT64_WRAP // 2 else seed], dtype=torch.int64),
        }


class VoiceDecoderServicer(voicelm_pb2_grpc.VoiceDecoderServicer):
    def __init__(
        self,
        runtime: ModelRuntime,
        limiter: SessionLimiter,
        llm_dim: int,
        max_positions_per_message: int,
        sampling: SamplingDefaults,
        telemetry: Telemetry,
        tail: TailParts,
    ) -> None:
        """`tail`: how the tail is cut into calls, and (`first_audio`) the speech tokens that make a turn's first
        audio; the calls after them, while the stream is ahead of its listener, are steady work, which the runtime runs
        after other sessions' first audio."""
        self.runtime = runtime
        self.limiter = limiter
        self.llm_dim = llm_dim
        self.max_positions_per_message = max_positions_per_message
        self.sampling = sampling
        self.telemetry = telemetry
        self.tail = tail

    async def Synthesize(
        self, request_iterator: AsyncIterator[voicelm_pb2.SynthesizeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[voicelm_pb2.SynthesizeResponse]:
        async with self.limiter.admit(context):
            requests = ReadAhead(request_iterator)
            try:
                async for response in self._synthesize(requests, context):
                    yield response
            finally:
                await requests.close()

    async def _synthesize(
        self, requests: ReadAhead[voicelm_pb2.SynthesizeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[voicelm_pb2.SynthesizeResponse]:
        config = await self._read_config(requests, context)
        turn = _Turn(self.runtime, context, self.llm_dim, self.tail)
        ids = {"session_id": config.session_id, "turn_id": config.turn_id, "grpc_context": context}
        try:
            with self.telemetry.hop("voicelm.synthesize", config.trace_context, **ids) as hop:
                if not 0 <= config.audio_lead_ms <= MAX_AUDIO_LEAD_MS:
                    message = f"audio_lead_ms must be in [0, {MAX_AUDIO_LEAD_MS}], got {config.audio_lead_ms}"
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
                sampling = self.sampling.resolve(config.sampling)
                await turn.start({**sampling, **_instruction(config), **_prefix(config)})
                async for request in requests:
                    kind = request.WhichOneof("request")
                    if kind == "text_positions":
                        for response in await self._feed_positions(request.text_positions, requests, turn, context):
                            yield response
                    elif kind == "text_end":
                        await _check_total(request.text_end, turn.positions, context)
                        while not turn.finished:
                            await turn.pace(config.audio_lead_ms / 1000)
                            for response in await turn.feed(turn.no_positions, turn.no_positions, text_end=True):
                                yield response
                        self._record(hop, turn)
                        yield turn.done()
                        return
                    else:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind or 'empty'} message")
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before TextEnd")
        finally:
            await self.runtime.end_sequence(MODEL, turn.sequence.id)

    async def _feed_positions(
        self,
        first: voicelm_pb2.TextPositions,
        requests: ReadAhead[voicelm_pb2.SynthesizeRequest],
        turn: _Turn,
        context: grpc.aio.ServicerContext,
    ) -> list[voicelm_pb2.SynthesizeResponse]:
        """`first` and the TextPositions that arrived while the last call computed, as one model call (at most
        max_positions_per_message positions): the speech tokens are the same however positions are grouped."""
        room = self.max_positions_per_message - _count(first) if _groupable(first, first) else 0

        def fits(request: voicelm_pb2.SynthesizeRequest) -> bool:
            nonlocal room
            message, kind = request.text_positions, request.WhichOneof("request")
            if kind != "text_positions" or not _groupable(message, first) or _count(message) > room:
                return False
            room -= _count(message)
            return True

        decoded, index = [], turn.positions
        for message in [first, *(request.text_positions for request in requests.take_ready(fits))]:
            decoded.append(await self._positions(message, index, context))
            index += _count(message)
        hidden, token_embedding = (torch.cat(parts) for parts in zip(*decoded, strict=True))
        return await turn.feed(hidden, token_embedding)

    def _record(self, hop: HopSpan, turn: _Turn) -> None:
        hop.set(
            first_tokens_ms=turn.first_tokens_ms if turn.tokens else None,
            positions=turn.positions,
            tokens=turn.tokens,
            compute_ms=turn.compute_ms,
        )
        if turn.tokens:
            self.telemetry.metrics.time_to_first_speech_tokens.observe(turn.first_tokens_ms / 1000)

    @staticmethod
    async def _read_config(
        requests: AsyncIterator[voicelm_pb2.SynthesizeRequest], context: grpc.aio.ServicerContext
    ) -> voicelm_pb2.SynthesizeConfig:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("request") != "config":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a Synthesize stream must start with config")
        return first.config

    async def _positions(
        self, message: voicelm_pb2.TextPositions, expected_index: int, context: grpc.aio.ServicerContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the tensors, bound the work one message can ask for, and refuse gaps (a lost message would
        be text that is never spoken). Dtypes and shapes are the model's to check."""
        try:
            hidden = tensor_from_proto(message.hidden)
            token_embedding = tensor_from_proto(message.token_embedding)
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"text_positions: {error}")
        count = hidden.shape[0] if hidden.dim() == 2 else 0  # any other rank is the model's to refuse
        if count > self.max_positions_per_message:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{count} text positions in one message exceed the limit of {self.max_positions_per_message}; "
                "send smaller messages",
            )
        if message.first_index != expected_index:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"text positions out of order: first_index {message.first_index}, "
                f"but {expected_index} positions came before",
            )
        return hidden, token_embedding


class _Turn:
    """One stream's sequence in the runtime, its counts and its timings."""

    def __init__(
        self, runtime: ModelRuntime, context: grpc.aio.ServicerContext, llm_dim: int, tail: TailParts
    ) -> None:
        self.runtime = runtime
        self.context = context
        self.sequence = Sequence(uuid.uuid4().hex)
        self.no_positions = torch.zeros(0, llm_dim)  # (0, llm_dim)
        self.positions = 0
        self.tokens = 0
        self.compute_ms = 0.0
        self.first_positions_at: float | None = None
        self.first_tokens_ms = 0.0
        self.finished = False  # the model spoke the whole turn
        self.prefix_tokens = 0  # a failover's tokens, counted in `tokens` but made by another stream
        self.tail = tail  # past its first audio's tokens, and ahead of the listener: steady work
        self.lead = PlaybackLead(1 / SPEECH_TOKEN_RATE_HZ)  # this stream's tokens as audio, against real time

    async def start(self, sampling: TensorMap) -> None:
        """Open the sequence with the sampling settings and no positions yet (the model checks the settings); a
        failover's prefix tokens count as sent."""
        self.tokens = self.prefix_tokens = len(sampling.get("prefix_tokens", ()))
        start = Sequence(self.sequence.id, start=True)
        empty = {"hidden": self.no_positions, "token_embedding": self.no_positions, "text_end": torch.tensor([False])}
        await self._infer({**sampling, **empty}, start)

    async def feed(
        self, hidden: torch.Tensor, token_embedding: torch.Tensor, text_end: bool = False
    ) -> list[voicelm_pb2.SynthesizeResponse]:
        """Run the model on new positions, or (`text_end`) on the next part of the tail; the speech tokens that came
        out, split into messages of bounded size (`split_speech_tokens`)."""
        if self.first_positions_at is None and not text_end:
            self.first_positions_at = time.perf_counter()
        inputs = {"hidden": hidden, "token_embedding": token_embedding, "text_end": torch.tensor([text_end])}
        made = self.tokens - self.prefix_tokens  # this stream's own tokens (a failover's prefix came before it)
        if text_end:
            inputs["max_tail_tokens"] = torch.tensor([self.tail.next_part(made)])
        steady = made >= self.tail.first_audio and self.lead.steady(made)
        outputs = await self._infer(inputs, Sequence(self.sequence.id), steady)  # ended by the stream's end_sequence
        ids, self.finished = outputs["speech_tokens"], bool(outputs["finished"])
        self.positions += hidden.shape[0]
        if ids.numel() == 0:
            return []
        if not self.first_tokens_ms and self.first_positions_at is not None:
            self.first_tokens_ms = 1000 * (time.perf_counter() - self.first_positions_at)
        self.lead.start()
        first, self.tokens = self.tokens, self.tokens + ids.numel()
        messages = split_speech_tokens(ids.tolist(), first)
        return [voicelm_pb2.SynthesizeResponse(speech_tokens=message) for message in messages]

    async def pace(self, lead_s: float) -> None:
        """Wait until the audio this stream sent is at most `lead_s` ahead of real time (0: no pacing)."""
        too_far_s = self.lead.ahead_s(self.tokens - self.prefix_tokens) - lead_s
        if lead_s > 0 and too_far_s > 0:
            await asyncio.sleep(too_far_s)

    def done(self) -> voicelm_pb2.SynthesizeResponse:
        return voicelm_pb2.SynthesizeResponse(
            synthesis_done=voicelm_pb2.SynthesisDone(
                token_count=self.tokens, first_tokens_ms=self.first_tokens_ms, compute_ms=self.compute_ms
            )
        )

    async def _infer(self, inputs: TensorMap, sequence: Sequence, steady: bool = False) -> TensorMap:
        started = time.perf_counter()
        try:
            outputs = await self.runtime.infer(MODEL, inputs, sequence, steady=steady)
        except InvalidInput as error:
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        self.compute_ms += 1000 * (time.perf_counter() - started)
        return outputs


def _instruction(config: voicelm_pb2.SynthesizeConfig) -> TensorMap:
    """The turn's voice instruction as the model's `instruction` input (none when empty; the model checks it)."""
    return {"instruction": text_tensor(config.voice_instruction)} if config.voice_instruction else {}


def _prefix(config: voicelm_pb2.SynthesizeConfig) -> TensorMap:
    """A failover's speech tokens so far as the model's `prefix_tokens` input (none for a new turn)."""
    tokens = config.prefix_speech_tokens
    return {"prefix_tokens": torch.tensor(list(tokens), dtype=torch.int64)} if tokens else {}


def _count(message: voicelm_pb2.TextPositions) -> int:
    """Positions a message says it carries (its hidden tensor's first dimension; checked when decoded)."""
    return message.hidden.shape[0] if message.hidden.shape else 0


def _groupable(message: voicelm_pb2.TextPositions, first: voicelm_pb2.TextPositions) -> bool:
    """Whether `message` can join `first` in one call: both 2-D, of the same dtypes and widths (anything else goes
    alone, and the model's checks answer it)."""
    return all(
        len(mine.shape) == 2 and (mine.dtype, mine.shape[1]) == (theirs.dtype, theirs.shape[1])
        for mine, theirs in ((message.hidden, first.hidden), (message.token_embedding, first.token_embedding))
    )


async def _check_total(text_end: voicelm_pb2.TextEnd, received: int, context: grpc.aio.ServicerContext) -> None:
    if text_end.total_positions != received:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"TextEnd says {text_end.total_positions} text positions were sent, but {received} arrived",
        )
