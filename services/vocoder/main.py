"""Entry point of the vocoder service: `minmo serve vocoder` or `python -m minmo.services.vocoder.main`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import torch

from minmo.model.config import MinMoConfig, load_config
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.runtime.factory import open_runtime
from minmo.services.vocoder.servicer import VocoderServicer
from minmo.serving.server import ServiceHost, SessionLimiter
from minmo.serving.settings import ServerSettings, env_int, env_str
from minmo.telemetry import start_telemetry
from minmo.v1 import vocoder_pb2_grpc

DEFAULT_PORT = 50055
log = logging.getLogger("minmo.vocoder")


@dataclass(frozen=True)
class VocoderSettings:
    """MINMO_MAX_TOKENS_PER_MESSAGE: most speech tokens accepted in one message (bounds one chunk's compute);
    MINMO_CHECKPOINT: trained weights directory."""

    server: ServerSettings
    max_tokens_per_message: int
    checkpoint: str | None

    @classmethod
    def from_env(cls) -> VocoderSettings:
        return cls(
            server=ServerSettings.from_env(DEFAULT_PORT),
            max_tokens_per_message=env_int("MINMO_MAX_TOKENS_PER_MESSAGE", 500),
            checkpoint=env_str("MINMO_CHECKPOINT", "") or None,
        )


async def start(settings: VocoderSettings) -> ServiceHost:
    """Load the model, start serving, warm up, then report SERVING; returns the running host."""
    telemetry = start_telemetry("minmo-vocoder", settings.server)
    host = ServiceHost(settings.server, telemetry)
    cfg = load_config(settings.server.model_config)
    runtime = await open_runtime(
        settings.server.runtime, cfg, ["token2wav"], settings.checkpoint, settings.server.triton_url
    )
    host.on_stop(runtime.close)
    limiter = SessionLimiter(settings.server.max_sessions)
    servicer = VocoderServicer(runtime, limiter, settings.max_tokens_per_message, telemetry)
    host.add(vocoder_pb2_grpc.add_VocoderServicer_to_server, servicer, "minmo.v1.Vocoder")
    port = await host.start()
    await _warm_up(runtime, cfg)
    await host.set_serving()
    log.info("vocoder serving on %s:%d", settings.server.host, port)
    return host


async def _warm_up(runtime: ModelRuntime, cfg: MinMoConfig) -> None:
    """A first chunk with its lookahead, then a flush that ends the sequence: step, kept state and flush all run
    once before the first turn, so it does not pay for lazy initialisation."""
    tokens = torch.zeros(cfg.flow.first_chunk_tokens + cfg.flow.lookahead_tokens, dtype=torch.int64)
    turn = f"warm-up-{uuid.uuid4().hex}"  # unique: replicas may share one Triton
    await runtime.infer("token2wav", {"tokens": tokens, "flush": torch.tensor([False])}, Sequence(turn, start=True))
    await runtime.infer("token2wav", {"tokens": tokens[:0], "flush": torch.tensor([True])}, Sequence(turn, end=True))


async def serve(settings: VocoderSettings) -> None:
    host = await start(settings)
    await host.serve_until_signal()


def main() -> None:
    asyncio.run(serve(VocoderSettings.from_env()))


if __name__ == "__main__":
    main()
