"""Entry point of the voicelm service: `minmo serve voicelm` or `python -m minmo.services.voicelm.main`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import torch

from minmo.model.config import MinMoConfig, load_config
from minmo.runtime import batching
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.runtime.factory import open_runtime
from minmo.services.voicelm.servicer import MODEL, SamplingDefaults, VoiceDecoderServicer
from minmo.serving.server import ServiceHost, SessionLimiter
from minmo.serving.settings import ServerSettings, env_int, env_str
from minmo.telemetry import start_telemetry
from minmo.v1 import common_pb2, voicelm_pb2_grpc

DEFAULT_PORT = 50054
WARM_UP_SEQUENCE = "warm-up"
log = logging.getLogger("minmo.voicelm")


@dataclass(frozen=True)
class VoiceLmSettings:
    """MINMO_MAX_POSITIONS_PER_MESSAGE: most text positions accepted in one message (bounds one step's compute);
    MINMO_CHECKPOINT: trained weights directory."""

    server: ServerSettings
    max_positions_per_message: int
    checkpoint: str | None

    @classmethod
    def from_env(cls) -> VoiceLmSettings:
        return cls(
            server=ServerSettings.from_env(DEFAULT_PORT),
            max_positions_per_message=env_int("MINMO_MAX_POSITIONS_PER_MESSAGE", 64),
            checkpoint=env_str("MINMO_CHECKPOINT", "") or None,
        )


async def start(settings: VoiceLmSettings, runtime: ModelRuntime | None = None) -> ServiceHost:
    """Load the model (or use `runtime`, e.g. one a test inspects), start serving, warm up, then report SERVING."""
    telemetry = start_telemetry("minmo-voicelm", settings.server)
    host = ServiceHost(settings.server, telemetry)
    cfg = load_config(settings.server.model_config)
    server = settings.server
    runtime = runtime or await open_runtime(
        server.runtime,
        cfg,
        [MODEL],
        settings.checkpoint,
        server.triton_url,
        batching.BatchSettings(server.batch_max_size, server.batch_window_ms),
        lambda model, size: telemetry.metrics.batch_size.labels(model=model).observe(size),
        placement=server.placement,
    )
    host.on_stop(runtime.close)
    servicer = VoiceDecoderServicer(
        runtime,
        SessionLimiter(settings.server.max_sessions),
        cfg.output_projector.llm_dim,
        settings.max_positions_per_message,
        SamplingDefaults(),
        telemetry,
    )
    host.add(voicelm_pb2_grpc.add_VoiceDecoderServicer_to_server, servicer, "minmo.v1.VoiceDecoder")
    port = await host.start()
    await _warm_up(runtime, cfg)
    await host.set_serving()
    log.info("voicelm serving on %s:%d", settings.server.host, port)
    return host


async def _warm_up(runtime: ModelRuntime, cfg: MinMoConfig) -> None:
    """One sampled block of 5 positions, so the first turn pays for no lazy initialisation."""
    positions = torch.zeros(cfg.voice_token_lm.text_block, cfg.output_projector.llm_dim)  # (5, llm_dim)
    sampling = SamplingDefaults().resolve(common_pb2.SamplingParams(seed=0))
    inputs = {"hidden": positions, "token_embedding": positions, "text_end": torch.tensor([False]), **sampling}
    try:
        await runtime.infer(MODEL, inputs, Sequence(WARM_UP_SEQUENCE, start=True))
    finally:
        await runtime.end_sequence(MODEL, WARM_UP_SEQUENCE)


async def serve(settings: VoiceLmSettings) -> None:
    host = await start(settings)
    await host.serve_until_signal()


def main() -> None:
    asyncio.run(serve(VoiceLmSettings.from_env()))


if __name__ == "__main__":
    main()
