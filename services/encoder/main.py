"""Entry point of the encoder service: `minmo serve encoder` or `python -m minmo.services.encoder.main`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from dataclasses import dataclass

import torch

from minmo.model.config import MinMoConfig, load_config
from minmo.runtime.base import Sequence
from minmo.runtime.factory import open_runtime
from minmo.services.encoder.servicer import ENCODER_SAMPLE_RATE, AudioEncoderServicer
from minmo.serving.server import ServiceHost, SessionLimiter
from minmo.serving.settings import ServerSettings, SettingsError, env_int, env_str
from minmo.telemetry import start_telemetry
from minmo.v1 import encoder_pb2_grpc

DEFAULT_PORT = 50052
log = logging.getLogger("minmo.encoder")


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


async def start(settings: EncoderSettings) -> ServiceHost:
    """Load the model, start serving, warm up, then report SERVING; returns the running host."""
    telemetry = start_telemetry("minmo-encoder", settings.server)
    host = ServiceHost(settings.server, telemetry)
    cfg = settings.model_config(load_config(settings.server.model_config))
    runtime = await open_runtime(
        settings.server.runtime, cfg, ["encoder"], settings.checkpoint, settings.server.triton_url
    )
    host.on_stop(runtime.close)
    limiter = SessionLimiter(settings.server.max_sessions)
    servicer = AudioEncoderServicer(runtime, limiter, settings.max_chunk_ms, telemetry)
    host.add(encoder_pb2_grpc.add_AudioEncoderServicer_to_server, servicer, "minmo.v1.AudioEncoder")
    port = await host.start()
    warm_up = Sequence(f"warm-up-{uuid.uuid4().hex}", start=True, end=True)  # opens and closes its sequence
    await runtime.infer("encoder", {"pcm": torch.zeros(ENCODER_SAMPLE_RATE), "flush": torch.tensor([True])}, warm_up)
    await host.set_serving()
    log.info("encoder serving on %s:%d", settings.server.host, port)
    return host


async def serve(settings: EncoderSettings) -> None:
    host = await start(settings)
    await host.serve_until_signal()


def main() -> None:
    asyncio.run(serve(EncoderSettings.from_env()))


if __name__ == "__main__":
    main()
