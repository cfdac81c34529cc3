"""Vocoder servicer: one stream per response turn; speech tokens in, 24 kHz PCM16 chunks out as they complete.

The turn's token2wav caches live in the runtime under a sequence id unique to the stream (each runtime call
carries only the new tokens); whatever way the stream ends (Flush, client cancel, barge-in, disconnect, an error)
the sequence is ended, so no state outlives its turn.

The stream is one `vocoder.vocode` span, a child of the response context in VocodeConfig, with the turn's
first-chunk latency, chunks, audio and RTF.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import grpc
import torch

from minmo.api.tensors import tensor_from_proto
from minmo.audio.pcm import float_to_pcm16
from minmo.model.config import SPEECH_TOKEN_RATE_HZ, VOCODER_SAMPLE_RATE_HZ
from minmo.runtime.base import InvalidInput, ModelRuntime, PlaybackLead, Sequence, TensorMap
from minmo.serving.server import SessionLimiter
from minmo.telemetry import HopSpan, Telemetry
from minmo.v1 import common_pb2, vocoder_pb2, vocoder_pb2_grpc

VOCODER_SAMPLE_RATE = VOCODER_SAMPLE_RATE_HZ
SAMPLES_PER_TOKEN = VOCODER_SAMPLE_RATE_HZ // SPEECH_TOKEN_RATE_HZ
MODEL = "token2wav"


class VocoderServicer(vocoder_pb2_grpc.VocoderServicer):
    def __init__(
        self, runtime: ModelRuntime, limiter: SessionLimiter, max_tokens_per_message: int, telemetry: Telemetry
    ) -> None:
        self.runtime = runtime
        self.limiter = limiter
        self.max_tokens_per_message = max_tokens_per_message
        self.telemetry = telemetry

    async def Vocode(
        self, request_iterator: AsyncIterator[vocoder_pb2.VocodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vocoder_pb2.VocodeResponse]:
        async with self.limiter.admit(context):
            config = await self._read_config(request_iterator, context)
            turn_start = {**await _voice_inputs(config.voice, context), **_resume_input(config)}
            stream = _VocoderStream(self.runtime, context, turn_start, config.resume_at_sample)
            ids = {"session_id": config.session_id, "turn_id": config.turn_id, "grpc_context": context}
            try:
                with self.telemetry.hop("vocoder.vocode", config.trace_context, **ids) as hop:
                    async for request in request_iterator:
                        kind = request.WhichOneof("request")
                        if kind == "speech_tokens":
                            await self._check_tokens(request.speech_tokens, stream.tokens, context)
                            response = await stream.vocode(list(request.speech_tokens.ids), False)
                            if response is not None:
                                yield response
                        elif kind == "flush":
                            await self._check_total(request.flush, stream.tokens, context)
                            response = await stream.vocode([], True)
                            if response is not None:
                                yield response
                            self._record(hop, stream)
                            yield stream.done()
                            return
                        else:
                            message = f"unexpected {kind or 'empty'} message"
                            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            finally:
                await stream.end()

    def _record(self, hop: HopSpan, stream: _VocoderStream) -> None:
        audio_ms = 1000 * (stream.samples - stream.first_sample) / VOCODER_SAMPLE_RATE  # what this stream made
        rtf = stream.compute_ms / audio_ms if audio_ms else None
        hop.set(
            first_chunk_ms=stream.first_chunk_ms if stream.chunks else None,
            chunks=stream.chunks,
            tokens=stream.tokens,
            audio_ms=audio_ms,
            compute_ms=stream.compute_ms,
            rtf=rtf,
        )
        if stream.chunks:
            self.telemetry.metrics.time_to_first_audio.observe(stream.first_chunk_ms / 1000)
        if rtf is not None:
            self.telemetry.metrics.rtf.observe(rtf)

    @staticmethod
    async def _read_config(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> vocoder_pb2.VocodeConfig:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("request") != "config":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a Vocode stream must start with config")
        if first.config.sample_rate_hz not in (0, VOCODER_SAMPLE_RATE):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"sample_rate_hz must be {VOCODER_SAMPLE_RATE} (or 0 for {VOCODER_SAMPLE_RATE}; duplex resamples), "
                f"got {first.config.sample_rate_hz}",
            )
        if first.config.resume_at_sample < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"resume_at_sample must be >= 0 (0: a new turn), got {first.config.resume_at_sample}",
            )
        return first.config

    async def _check_tokens(
        self, message: common_pb2.SpeechTokens, received: int, context: grpc.aio.ServicerContext
    ) -> None:
        """Bound the work one message can ask for, and refuse gaps: a lost message would be a hole in the audio."""
        if len(message.ids) > self.max_tokens_per_message:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(message.ids)} speech tokens in one message exceed the limit of {self.max_tokens_per_message}; "
                "send smaller messages",
            )
        if message.first_index != received:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"speech tokens out of order: first_index {message.first_index}, but {received} tokens came before",
            )

    @staticmethod
    async def _check_total(flush: vocoder_pb2.Flush, received: int, context: grpc.aio.ServicerContext) -> None:
        if flush.total_tokens != received:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"flush says {flush.total_tokens} speech tokens were sent, but {received} arrived",
            )


async def _voice_inputs(voice: vocoder_pb2.VoiceConditioning, context: grpc.aio.ServicerContext) -> TensorMap:
    """VocodeConfig.voice as the model's turn-start inputs (`speaker`, `prompt_tokens`, `prompt_mel`); the model
    checks their shapes against its config. Unset fields are left out (the default voice)."""
    inputs: TensorMap = {}
    try:
        if voice.HasField("speaker_embedding"):
            inputs["speaker"] = tensor_from_proto(voice.speaker_embedding).float()
        if voice.prompt_speech_tokens or voice.HasField("prompt_mel"):
            inputs["prompt_tokens"] = torch.tensor(list(voice.prompt_speech_tokens), dtype=torch.int64)
            inputs["prompt_mel"] = tensor_from_proto(voice.prompt_mel).float()
    except ValueError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"voice: {error}")
    return inputs


def _resume_input(config: vocoder_pb2.VocodeConfig) -> TensorMap:
    """A failover's resume point as the model's `resume_samples` input (none for a new turn)."""
    return {"resume_samples": torch.tensor([config.resume_at_sample])} if config.resume_at_sample else {}


class _VocoderStream:
    """One turn's token count, sample position, timings and its sequence in the runtime (which keeps the caches).
    The turn's start inputs (voice conditioning, a failover's resume point) go with the first chunk only: the
    runtime's state carries them after that.

    A resumed stream (a failover) is sent every token of the turn again, in many messages at once, and must run the
    flow over all of them before its first new audio. The tokens whose audio lies wholly before the resume point
    are held and go to the model in one call with the first message that reaches past it: when several streams
    fail over onto this replica together, each then rebuilds in one call, in turn, instead of all of them in
    alternating pieces, each waiting for the others' rebuilds before its first audio."""

    def __init__(
        self, runtime: ModelRuntime, context: grpc.aio.ServicerContext, turn_start: TensorMap, first_sample: int
    ) -> None:
        """`first_sample`: where the stream's audio starts in the turn (a resumed stream's resume point, else 0)."""
        self.runtime = runtime
        self.context = context
        self.turn_start = turn_start
        self.sequence_id = uuid.uuid4().hex
        self.started = False
        self.ended = False
        self.tokens = 0
        self.first_sample = first_sample
        self.samples = first_sample  # the turn's samples before the next chunk
        self.chunks = 0
        self.compute_ms = 0.0
        self.first_tokens_at: float | None = None
        self.first_chunk_ms = 0.0
        self.lead = PlaybackLead(1 / VOCODER_SAMPLE_RATE)  # how far this stream's audio is ahead of its listener
        self.held: list[int] = []  # a resumed stream's tokens before its resume point, not yet run (class docstring)

    async def vocode(self, ids: list[int], flush: bool) -> vocoder_pb2.VocodeResponse | None:
        """Run one token2wav chunk; a response only when samples came out (chunks complete every 25 tokens)."""
        started = time.perf_counter()
        if self.first_tokens_at is None and ids:
            self.first_tokens_at = started
        if not flush and (self.tokens + len(ids)) * SAMPLES_PER_TOKEN <= self.first_sample:
            self.held += ids
            self.tokens += len(ids)
            return None
        received, (ids, self.held) = len(ids), ([*self.held, *ids], [])
        try:
            sequence = Sequence(self.sequence_id, start=not self.started, end=flush)
            turn_start = self.turn_start if not self.started else {}
            self.started = True  # from here on the runtime may hold state for it: `end` drops it
            inputs = {"tokens": torch.tensor(ids, dtype=torch.int64), "flush": torch.tensor([flush]), **turn_start}
            # after the stream's first audio, a chunk is steady work while the stream is ahead of its listener
            steady = self.chunks > 0 and self.lead.steady(self.samples - self.first_sample)
            outputs = await self.runtime.infer(MODEL, inputs, sequence, steady=steady)
        except InvalidInput as error:
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        self.ended = flush  # a completed flush ended the sequence in the runtime
        compute_ms = 1000 * (time.perf_counter() - started)
        self.tokens += received
        self.compute_ms += compute_ms
        pcm = outputs["pcm"]
        if pcm.shape[0] == 0:
            return None
        if self.chunks == 0 and self.first_tokens_at is not None:
            self.first_chunk_ms = 1000 * (time.perf_counter() - self.first_tokens_at)
        self.lead.start()
        start, self.samples = self.samples, self.samples + pcm.shape[0]
        self.chunks += 1
        return vocoder_pb2.VocodeResponse(
            pcm_chunk=vocoder_pb2.PcmChunk(audio=float_to_pcm16(pcm.numpy()), start_sample=start, compute_ms=compute_ms)
        )

    async def end(self) -> None:
        """Drop the turn's caches unless its flush already ended the sequence (a cancelled flush may not have)."""
        if self.started and not self.ended:
            await self.runtime.end_sequence(MODEL, self.sequence_id)

    def done(self) -> vocoder_pb2.VocodeResponse:
        return vocoder_pb2.VocodeResponse(
            vocode_done=vocoder_pb2.VocodeDone(
                total_samples=self.samples, first_chunk_ms=self.first_chunk_ms, compute_ms=self.compute_ms
            )
        )
