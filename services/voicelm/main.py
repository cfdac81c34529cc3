"""Entry point of the voicelm service: `minmo serve voicelm` or `python -m minmo.services.voicelm.main`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch

from minmo.model.config import MinMoConfig
from minmo.model.interleave import TailParts
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.services.voicelm.servicer import MODEL, SamplingDefaults, VoiceDecoderServicer
from minmo.serving.model_service import ModelService, ServiceParts, run_model_service, start_model_service
from minmo.serving.server import ServiceHost
from minmo.serving.settings import ServerSettings, env_float, env_int, env_str
from minmo.v1 import common_pb2, voicelm_pb2_grpc

DEFAULT_PORT = 50054
WARM_UP_SEQUENCE = "warm-up"


@dataclass(frozen=True)
class VoiceLmSettings:
    """MINMO_MAX_POSITIONS_PER_MESSAGE: most text positions accepted in one message (bounds one step's compute);
    MINMO_CHECKPOINT: trained weights directory; MINMO_VOICELM_TEMPERATURE: the speech-token sampling temperature
    when a turn's SamplingParams leaves it unset (default 1.0, CosyVoice 2's; 0: greedy, reproducible)."""

    server: ServerSettings
    max_positions_per_message: int
    checkpoint: str | None
    temperature: float = SamplingDefaults.temperature

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # NaN fails too
            raise ValueError(f"MINMO_VOICELM_TEMPERATURE must be >= 0 (0: greedy), got {self.temperature}")

    @classmethod
    def from_env(cls) -> VoiceLmSettings:
        return cls(
            server=ServerSettings.from_env(DEFAULT_PORT),
            max_positions_per_message=env_int("MINMO_MAX_POSITIONS_PER_MESSAGE", 64),
            checkpoint=env_str("MINMO_CHECKPOINT", "") or None,
            temperature=env_float("MINMO_VOICELM_TEMPERATURE", SamplingDefaults.temperature),
        )


async def _warm_up(runtime: ModelRuntime, cfg: MinMoConfig) -> None:
    """One sampled block of 5 positions, so the first turn pays for no lazy initialisation."""
    positions = torch.zeros(cfg.voice_token_lm.text_block, cfg.output_projector.llm_dim)  # (5, llm_dim)
    sampling = SamplingDefaults().resolve(common_pb2.SamplingParams(seed=0))
    inputs = {"hidden": positions, "token_embedding": positions, "text_end": torch.tensor([False]), **sampling}
    try:
        await runtime.infer(MODEL, inputs, Sequence(WARM_UP_SEQUENCE, start=True))
    finally:
        await runtime.end_sequence(MODEL, WARM_UP_SEQUENCE)


SERVICE = ModelService(
    name="voicelm",
    models=(MODEL,),
    grpc_service="minmo.v1.VoiceDecoder",
    register=voicelm_pb2_grpc.add_VoiceDecoderServicer_to_server,
    warm_up=_warm_up,
    batched=True,
)


async def start(settings: VoiceLmSettings, runtime: ModelRuntime | None = None) -> ServiceHost:
    """Load the model (or use `runtime`, e.g. one a test inspects), start serving, warm up, then report SERVING."""

    def servicer(parts: ServiceParts) -> VoiceDecoderServicer:
        return VoiceDecoderServicer(
            parts.runtime,
            parts.limiter,
            parts.cfg.output_projector.llm_dim,
            settings.max_positions_per_message,
            SamplingDefaults(temperature=settings.temperature),
            parts.telemetry,
            TailParts.from_config(parts.cfg),
        )

    return await start_model_service(SERVICE, settings.server, settings.checkpoint, servicer, runtime)


def main() -> None:
    asyncio.run(run_model_service(start, VoiceLmSettings.from_env()))


if __name__ == "__main__":
    main()
