"""Entry point of the llm (Reasoner) service: `minmo serve llm` or `python -m minmo.services.llm.main`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import torch

from minmo.model.config import MinMoConfig, load_config
from minmo.model.tokenizer import load_tokenizer
from minmo.runtime import batching
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.runtime.factory import open_runtime
from minmo.runtime.llm_model import OP_APPEND_AUDIO, OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, text_tensor
from minmo.services.llm.servicer import MODEL, ReasonerOptions, ReasonerServicer, predictor_is_trained
from minmo.serving.server import ServiceHost, SessionLimiter
from minmo.serving.settings import ServerSettings, env_int, env_str
from minmo.telemetry import start_telemetry
from minmo.v1 import llm_pb2_grpc

DEFAULT_PORT = 50053
WARMUP_FRAMES = 4  # audio frames (12.5 Hz) in the warm-up turn
WARMUP_TOKENS = 4
DEFAULT_PREFILL_TOKENS = 128  # one slice of a long prefill: ~10 ms on the tiny model, about a decode step's worth
log = logging.getLogger("minmo.llm")


@dataclass(frozen=True)
class LlmSettings:
    """MINMO_CHECKPOINT: trained weights directory; MINMO_MAX_RESPONSE_TOKENS: default cap per response
    (0 or unset: the model config's max_response_tokens); MINMO_PREFILL_TOKENS: positions per prefill slice of a
    long text turn or rebuilt context (0: at once). Session limit: MINMO_MAX_SESSIONS (ServerSettings)."""

    server: ServerSettings
    checkpoint: str | None
    max_response_tokens: int  # 0: the model config's default
    # A long prompt is prefilled in slices of this many positions, each its own compute task, so other sessions'
    # steps run in between and a cancel stops within one slice (0: one task however long)
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS

    def __post_init__(self) -> None:
        if self.prefill_tokens < 0:
            raise ValueError(f"MINMO_PREFILL_TOKENS must be >= 0 (0: at once), got {self.prefill_tokens}")

    @classmethod
    def from_env(cls) -> LlmSettings:
        return cls(
            server=ServerSettings.from_env(DEFAULT_PORT),
            checkpoint=env_str("MINMO_CHECKPOINT", "") or None,
            max_response_tokens=env_int("MINMO_MAX_RESPONSE_TOKENS", 0),
            prefill_tokens=env_int("MINMO_PREFILL_TOKENS", DEFAULT_PREFILL_TOKENS),
        )


async def start(settings: LlmSettings, runtime: ModelRuntime | None = None) -> ServiceHost:
    """Load the model (or serve the given runtime's "llm"), start serving, warm up, then report SERVING."""
    cfg: MinMoConfig = load_config(settings.server.model_config)
    telemetry = start_telemetry("minmo-llm", settings.server)
    host = ServiceHost(settings.server, telemetry)
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
    options = ReasonerOptions(
        hidden_size=cfg.llm.hidden_size,
        max_response_tokens=settings.max_response_tokens or cfg.max_response_tokens,
        predictor_trained=predictor_is_trained(settings.checkpoint),
        max_positions=cfg.llm.max_positions,
        prefill_tokens=settings.prefill_tokens,
    )
    limiter = SessionLimiter(settings.server.max_sessions)
    servicer = ReasonerServicer(runtime, load_tokenizer(cfg.llm), limiter, options, telemetry)
    host.add(llm_pb2_grpc.add_ReasonerServicer_to_server, servicer, "minmo.v1.Reasoner")
    port = await host.start()
    await warm_up(runtime, cfg.llm.hidden_size)
    await host.set_serving()
    log.info("llm serving on %s:%d (predictor trained: %s)", settings.server.host, port, options.predictor_trained)
    return host


async def warm_up(runtime: ModelRuntime, hidden_size: int) -> None:
    """One short turn through every op a session uses, on a throw-away sequence."""
    sequence_id = f"warmup-{uuid.uuid4().hex}"
    try:
        for op, inputs in [
            (OP_START, {"system_prompt": text_tensor("warm up")}),
            (OP_APPEND_AUDIO, {"embeddings": torch.zeros(WARMUP_FRAMES, hidden_size)}),
            (OP_BEGIN_RESPONSE, {}),
        ]:
            await runtime.infer(MODEL, {"op": torch.tensor([op]), **inputs}, Sequence(sequence_id, op == OP_START))
        generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([WARMUP_TOKENS])}
        async for _ in runtime.infer_stream(MODEL, generate, Sequence(sequence_id)):
            pass
    finally:
        await runtime.end_sequence(MODEL, sequence_id)


async def serve(settings: LlmSettings) -> None:
    host = await start(settings)
    await host.serve_until_signal()


def main() -> None:
    asyncio.run(serve(LlmSettings.from_env()))


if __name__ == "__main__":
    main()
