"""Entry point of the vocoder service: `minmo serve vocoder` or `python -m minmo.services.vocoder.main`."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import torch

from minmo.model.config import MinMoConfig
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.services.vocoder.servicer import VocoderServicer
from minmo.serving.model_service import ModelService, ServiceParts, run_model_service, start_model_service
from minmo.serving.server import ServiceHost
from minmo.serving.settings import ServerSettings, env_int, env_str
from minmo.v1 import vocoder_pb2_grpc

DEFAULT_PORT = 50055


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


async def _warm_up(runtime: ModelRuntime, cfg: MinMoConfig) -> None:
    """A first chunk with its lookahead, then a flush that ends the sequence: step, kept state and flush all run
    once before the first turn, so it does not pay for lazy initialisation."""
    tokens = torch.zeros(cfg.flow.first_chunk_tokens + cfg.flow.lookahead_tokens, dtype=torch.int64)
    turn = f"warm-up-{uuid.uuid4().hex}"  # unique: replicas may share one Triton
    await runtime.infer("token2wav", {"tokens": tokens, "flush": torch.tensor([False])}, Sequence(turn, start=True))
    await runtime.infer("token2wav", {"tokens": tokens[:0], "flush": torch.tensor([True])}, Sequence(turn, end=True))


SERVICE = ModelService(
    name="vocoder",
    models=("token2wav",),
    grpc_service="minmo.v1.Vocoder",
    register=vocoder_pb2_grpc.add_VocoderServicer_to_server,
    warm_up=_warm_up,
    batched=True,
)


async def start(settings: VocoderSettings, runtime: ModelRuntime | None = None) -> ServiceHost:
    """Load the model (or use `runtime`, e.g. one a test inspects), start serving, warm up, then report SERVING;
    returns the running host."""

    def servicer(parts: ServiceParts) -> VocoderServicer:
        return VocoderServicer(parts.runtime, parts.limiter, settings.max_tokens_per_message, parts.telemetry)

    return await start_model_service(SERVICE, settings.server, settings.checkpoint, servicer, runtime)


def main() -> None:
    asyncio.run(run_model_service(start, VocoderSettings.from_env()))


if __name__ == "__main__":
    main()
