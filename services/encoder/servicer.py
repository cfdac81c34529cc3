"""AudioEncoder servicer: one stream per session; audio chunks in, embeddings out as chunks complete.

The session's encoder caches live in the runtime under a sequence id unique to the stream (the stream is the
affinity; each runtime call carries only the new chunk). Whatever way the stream ends (the client closes it,
cancels, disconnects, or sends bad input) the sequence is ended, so no state outlives its session.

Each user turn's audio (its chunks up to the EndOfUtterance) is one `encoder.utterance` span, a child of the
turn context the chunks carry, with the turn's chunk count, audio and frames, compute and RTF.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping

import grpc
import torch

from minmo.api.tensors import tensor_to_proto
from minmo.audio.pcm import PCM16_BYTES, pcm16_to_float
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ
from minmo.runtime.base import InvalidInput, ModelRuntime, Sequence
from minmo.serving.server import SessionLimiter
from minmo.telemetry import HopSpan, Telemetry
from minmo.v1 import encoder_pb2, encoder_pb2_grpc

ENCODER_SAMPLE_RATE = ENCODER_SAMPLE_RATE_HZ
MODEL = "encoder"


class AudioEncoderServicer(encoder_pb2_grpc.AudioEncoderServicer):
    def __init__(self, runtime: ModelRuntime, limiter: SessionLimiter, max_chunk_ms: int, telemetry: Telemetry) -> None:
        self.runtime = runtime
        self.limiter = limiter
        self.max_chunk_bytes = PCM16_BYTES * ENCODER_SAMPLE_RATE * max_chunk_ms // 1000
        self.telemetry = telemetry

    async def Encode(
        self, request_iterator: AsyncIterator[encoder_pb2.EncodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[encoder_pb2.EncodeResponse]:
        async with self.limiter.admit(context):
            config = await self._read_config(request_iterator, context)
            stream = _EncoderStream(self.runtime, config.start_position)
            utterance = _Utterance(self.telemetry, config.session_id)
            try:
                async for request in request_iterator:
                    for response in await self._handle(request, stream, utterance, context):
                        yield response
            except BaseException as error:
                utterance.fail(error, context)
                raise
            finally:
                await stream.end()
            utterance.close()

    async def _handle(
        self,
        request: encoder_pb2.EncodeRequest,
        stream: _EncoderStream,
        utterance: _Utterance,
        context: grpc.aio.ServicerContext,
    ) -> list[encoder_pb2.EncodeResponse]:
        kind = request.WhichOneof("request")
        if kind == "audio_chunk":
            chunk = request.audio_chunk
            pcm = await self._decode(chunk.audio, context)
            utterance.enter(chunk.turn_id, chunk.trace_context)
            response = await stream.encode(pcm, chunk.turn_id, False, context)
            utterance.add(pcm.shape[0], response)
            return [response] if response is not None else []
        if kind == "end_of_utterance":
            end = request.end_of_utterance
            pcm = await self._decode(end.audio, context)
            utterance.enter(end.turn_id, end.trace_context)
            started = time.perf_counter()
            response = await stream.encode(pcm, end.turn_id, True, context)
            utterance.add(pcm.shape[0], response)
            flush_ms = 1000 * (time.perf_counter() - started)
            utterance.finish(flush_ms)
            flush_done = encoder_pb2.FlushDone(turn_id=end.turn_id, end_position=stream.position, compute_ms=flush_ms)
            return [*([response] if response is not None else []), encoder_pb2.EncodeResponse(flush_done=flush_done)]
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind or 'empty'} message")

    @staticmethod
    async def _read_config(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> encoder_pb2.EncodeConfig:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("request") != "config":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an Encode stream must start with config")
        if first.config.sample_rate_hz != ENCODER_SAMPLE_RATE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"sample_rate_hz must be {ENCODER_SAMPLE_RATE} (duplex resamples), got {first.config.sample_rate_hz}",
            )
        return first.config

    async def _decode(self, audio: bytes, context: grpc.aio.ServicerContext) -> torch.Tensor:
        if len(audio) > self.max_chunk_bytes:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"audio chunk of {len(audio)} bytes exceeds the {self.max_chunk_bytes}-byte limit; send smaller chunks",
            )
        try:
            return torch.from_numpy(pcm16_to_float(audio))
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


class _EncoderStream:
    """One session's position and its sequence in the runtime (which keeps the encoder caches)."""

    def __init__(self, runtime: ModelRuntime, start_position: int) -> None:
        self.runtime = runtime
        self.position = start_position
        self.sequence_id = uuid.uuid4().hex
        self.started = False

    async def end(self) -> None:
        """Drop the session's caches (idempotent; a sequence never started has none)."""
        if self.started:
            await self.runtime.end_sequence(MODEL, self.sequence_id)

    async def encode(
        self, pcm: torch.Tensor, turn_id: str, flush: bool, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse | None:
        started = time.perf_counter()
        try:
            sequence = Sequence(self.sequence_id, start=not self.started)
            self.started = True  # from here on the runtime may hold state for it: `end` drops it
            outputs = await self.runtime.infer(MODEL, {"pcm": pcm.float(), "flush": torch.tensor([flush])}, sequence)
        except InvalidInput as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        embeddings = outputs["embeddings"]
        if embeddings.shape[0] == 0:
            return None
        start, self.position = self.position, self.position + embeddings.shape[0]
        return encoder_pb2.EncodeResponse(
            embeddings=encoder_pb2.Embeddings(
                embeddings=tensor_to_proto(embeddings),
                start_position=start,
                turn_id=turn_id,
                compute_ms=1000 * (time.perf_counter() - started),
            )
        )


class _Utterance:
    """The span of the user turn being encoded and its running counts (one open turn at a time per stream)."""

    def __init__(self, telemetry: Telemetry, session_id: str) -> None:
        self.telemetry = telemetry
        self.session_id = session_id
        self.hop: HopSpan | None = None
        self.samples = 0
        self.chunks = 0
        self.frames = 0
        self.compute_ms = 0.0

    def enter(self, turn_id: str, trace_context: Mapping[str, str]) -> None:
        """Open the turn's span at its first message; a new turn ends the previous one unflushed."""
        if self.hop is not None and self.hop.turn_id == turn_id:
            return
        self.close()
        self.hop = self.telemetry.begin("encoder.utterance", trace_context, session_id=self.session_id, turn_id=turn_id)
        self.samples = self.chunks = self.frames = 0
        self.compute_ms = 0.0

    def add(self, samples: int, response: encoder_pb2.EncodeResponse | None) -> None:
        self.samples += samples
        self.chunks += 1 if samples else 0
        if response is not None:
            self.frames += response.embeddings.embeddings.shape[0]
            self.compute_ms += response.embeddings.compute_ms
        audio_ms = 1000 * self.samples / ENCODER_SAMPLE_RATE
        rtf = self.compute_ms / audio_ms if audio_ms else None
        self.hop.set(chunks=self.chunks, audio_ms=audio_ms, frames=self.frames, compute_ms=self.compute_ms, rtf=rtf)

    def finish(self, flush_ms: float) -> None:
        self.hop.set(flush_ms=flush_ms)
        if self.samples:
            self.telemetry.metrics.rtf.observe(self.compute_ms / (1000 * self.samples / ENCODER_SAMPLE_RATE))
        self.hop.end()
        self.hop = None

    def close(self) -> None:
        """The stream ended (or the next turn began) with this turn not flushed."""
        if self.hop is not None:
            self.hop.end("cancelled")
            self.hop = None

    def fail(self, error: BaseException, context: grpc.aio.ServicerContext) -> None:
        if self.hop is not None:
            self.hop.fail_with(error, context)
            self.hop = None
