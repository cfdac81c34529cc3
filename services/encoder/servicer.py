"""AudioEncoder servicer: one stream per session; audio chunks in, embeddings out as chunks complete."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import torch

from minmo.api.tensors import tensor_to_proto
from minmo.audio.pcm import pcm16_to_float
from minmo.runtime.base import InvalidInput, ModelRuntime
from minmo.serving.server import SessionLimiter
from minmo.v1 import encoder_pb2, encoder_pb2_grpc

ENCODER_SAMPLE_RATE = 16000


class AudioEncoderServicer(encoder_pb2_grpc.AudioEncoderServicer):
    def __init__(self, runtime: ModelRuntime, limiter: SessionLimiter, max_chunk_ms: int) -> None:
        self.runtime = runtime
        self.limiter = limiter
        self.max_chunk_bytes = 2 * ENCODER_SAMPLE_RATE * max_chunk_ms // 1000

    async def Encode(
        self, request_iterator: AsyncIterator[encoder_pb2.EncodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[encoder_pb2.EncodeResponse]:
        async with self.limiter.admit(context):
            config = await self._read_config(request_iterator, context)
            stream = _EncoderStream(self.runtime, config.start_position)
            async for request in request_iterator:
                kind = request.WhichOneof("request")
                if kind == "audio_chunk":
                    pcm = await self._decode(request.audio_chunk.audio, context)
                    response = await stream.encode(pcm, request.audio_chunk.turn_id, False, context)
                    if response is not None:
                        yield response
                elif kind == "end_of_utterance":
                    turn_id = request.end_of_utterance.turn_id
                    started = time.perf_counter()
                    response = await stream.encode(torch.zeros(0), turn_id, True, context)
                    if response is not None:
                        yield response
                    yield encoder_pb2.EncodeResponse(
                        flush_done=encoder_pb2.FlushDone(
                            turn_id=turn_id,
                            end_position=stream.position,
                            compute_ms=1000 * (time.perf_counter() - started),
                        )
                    )
                else:
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
    """One session's position and streaming state (a uint8 blob the runtime hands back each chunk)."""

    def __init__(self, runtime: ModelRuntime, start_position: int) -> None:
        self.runtime = runtime
        self.position = start_position
        self.state = torch.zeros(0, dtype=torch.uint8)

    async def encode(
        self, pcm: torch.Tensor, turn_id: str, flush: bool, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse | None:
        started = time.perf_counter()
        try:
            outputs = await self.runtime.infer(
                "encoder", {"pcm": pcm.float(), "state": self.state, "flush": torch.tensor([flush])}
            )
        except InvalidInput as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        self.state = outputs["state"]
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
