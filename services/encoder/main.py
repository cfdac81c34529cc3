"""Entry point of the encoder service: `minmo serve encoder` or `python -m minmo.services.encoder.main`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch

from minmo.model.config import ENCODER_SAMPLE_RATE_HZ, MinMoConfig
from minmo.runtime.base import ModelRuntime
from minmo.services.encoder.servicer import AudioEncoderServicer
from minmo.serving.model_service import ModelService, ServiceParts, run_model_service, start_model_service
from minmo.serving.server import ServiceHost
from minmo.serving.settings import ServerSettings, env_int, env_str
from minmo.v1 import encoder_pb2_grpc

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class EncoderSettings:
    """MINMO_MAX_CHUNK_MS: largest audio chunk accepted; MINMO_CHECKPOINT: trained weights directory."""

    server: ServerSettings
    max_chunk_ms: int
    checkpoint: str | None

    @classmethod
    def from_env(cls) -> EncoderSettings:
        return cls(
            server=ServerSettings.from_env(DEFAULT_PORT),
            max_chunk_ms=env_int("MINMO_MAX_CHUNK_MS", 2000),
            checkpoint=env_str("MINMO_CHECKPOINT", "") or None,
        )


async def _warm_up(runtime: ModelRuntime, cfg: MinMoConfig) -> None:
    """One second of silence, flushed."""
    await runtime.infer("encoder", {"pcm": torch.zeros(ENCODER_SAMPLE_RATE_HZ), "flush": torch.tensor([True])})


SERVICE = ModelService(
    name="encoder",
    models=("encoder",),
    grpc_service="minmo.v1.AudioEncoder",
    register=encoder_pb2_grpc.add_AudioEncoderServicer_to_server,
    warm_up=_warm_up,
)


async def start(settings: EncoderSettings) -> ServiceHost:
    """Load the model, start serving, warm up, then report SERVING; returns the running host."""

    def servicer(parts: ServiceParts) -> AudioEncoderServicer:
        return AudioEncoderServicer(parts.runtime, parts.limiter, settings.max_chunk_ms, parts.telemetry)

    return await start_model_service(SERVICE, settings.server, settings.checkpoint, servicer)


def main() -> None:
    asyncio.run(run_model_service(start, EncoderSettings.from_env()))


if __name__ == "__main__":
    main()
