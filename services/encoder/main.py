"""Entry point of the encoder service: `minmo serve encoder` or `python -m minmo.services.encoder.main`."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass

import torch

from minmo.model.config import ENCODER_SAMPLE_RATE_HZ, MinMoConfig
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.services.encoder.servicer import AudioEncoderServicer
from minmo.serving.model_service import ModelService, ServiceParts, run_model_service, start_model_service
from minmo.serving.server import ServiceHost
from minmo.serving.settings import ServerSettings, SettingsError, env_int, env_str
from minmo.v1 import encoder_pb2_grpc

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class EncoderSettings:
    """MINMO_MAX_CHUNK_MS: largest audio chunk accepted; MINMO_CHECKPOINT: trained weights directory;
    MINMO_ENCODER_LEFT_CHUNKS: the encoder's attention left context in chunks, which bounds each session's cache
    (unset: the config's `voice_encoder.left_chunks`; the local runtime only: a Triton repository has its own)."""

    server: ServerSettings
    max_chunk_ms: int
    checkpoint: str | None
    left_chunks: int | None = None

    @classmethod
    def from_env(cls) -> EncoderSettings:
        left_chunks = env_str("MINMO_ENCODER_LEFT_CHUNKS", "")
        return cls(
            server=ServerSettings.from_env(DEFAULT_PORT),
            max_chunk_ms=env_int("MINMO_MAX_CHUNK_MS", 2000),
            checkpoint=env_str("MINMO_CHECKPOINT", "") or None,
            left_chunks=env_int("MINMO_ENCODER_LEFT_CHUNKS", 0) if left_chunks else None,
        )

    def __post_init__(self) -> None:
        if self.left_chunks is not None and self.left_chunks < 0:
            raise SettingsError(
                f"MINMO_ENCODER_LEFT_CHUNKS must be >= 0 chunks of left context (bounded), got {self.left_chunks}"
            )

    def model_config(self, cfg: MinMoConfig) -> MinMoConfig:
        """`cfg` with this replica's encoder left context."""
        if self.left_chunks is None:
            return cfg
        return dataclasses.replace(
            cfg, voice_encoder=dataclasses.replace(cfg.voice_encoder, left_chunks=self.left_chunks)
        )


async def _warm_up(runtime: ModelRuntime, cfg: MinMoConfig) -> None:
    """One second of silence, flushed, on a sequence of its own that the call opens and closes (unique: replicas
    may share one Triton)."""
    warm_up = Sequence(f"warm-up-{uuid.uuid4().hex}", start=True, end=True)
    pcm = torch.zeros(ENCODER_SAMPLE_RATE_HZ)
    await runtime.infer("encoder", {"pcm": pcm, "flush": torch.tensor([True])}, warm_up)


SERVICE = ModelService(
    name="encoder",
    models=("encoder",),
    grpc_service="minmo.v1.AudioEncoder",
    register=encoder_pb2_grpc.add_AudioEncoderServicer_to_server,
    warm_up=_warm_up,
    batched=True,
)


async def start(settings: EncoderSettings) -> ServiceHost:
    """Load the model, start serving, warm up, then report SERVING; returns the running host."""

    def servicer(parts: ServiceParts) -> AudioEncoderServicer:
        return AudioEncoderServicer(parts.runtime, parts.limiter, settings.max_chunk_ms, parts.telemetry)

    return await start_model_service(
        SERVICE, settings.server, settings.checkpoint, servicer, configure=settings.model_config
    )


def main() -> None:
    asyncio.run(run_model_service(start, EncoderSettings.from_env()))


if __name__ == "__main__":
    main()
