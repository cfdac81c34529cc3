"""Entry point of the llm (Reasoner) service: `minmo serve llm` or `python -m minmo.services.llm.main`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import torch

from minmo.model.config import MinMoConfig
from minmo.model.tokenizer import load_tokenizer
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.runtime.llm_model import OP_APPEND_AUDIO, OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, text_tensor
from minmo.services.llm.servicer import MODEL, ReasonerOptions, ReasonerServicer, predictor_is_trained
from minmo.serving.model_service import ModelService, ServiceParts, run_model_service, start_model_service
from minmo.serving.server import ServiceHost
from minmo.serving.settings import ServerSettings, env_int, env_str
from minmo.v1 import llm_pb2_grpc

DEFAULT_PORT = 50053
WARMUP_FRAMES = 4  # audio embeddings (LLM frames, 12.5 Hz for SAN-M) in the warm-up turn
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


async def warm_up(runtime: ModelRuntime, cfg: MinMoConfig) -> None:
    """One short turn through every op a session uses, on a throw-away sequence."""
    sequence_id = f"warmup-{uuid.uuid4().hex}"
    try:
        for op, inputs in [
            (OP_START, {"system_prompt": text_tensor("warm up")}),
            (OP_APPEND_AUDIO, {"embeddings": torch.zeros(WARMUP_FRAMES, cfg.llm.hidden_size)}),
            (OP_BEGIN_RESPONSE, {}),
        ]:
            await runtime.infer(MODEL, {"op": torch.tensor([op]), **inputs}, Sequence(sequence_id, op == OP_START))
        generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([WARMUP_TOKENS])}
        async for _ in runtime.infer_stream(MODEL, generate, Sequence(sequence_id)):
            pass
    finally:
        await runtime.end_sequence(MODEL, sequence_id)


SERVICE = ModelService(
    name="llm",
    models=(MODEL,),
    grpc_service="minmo.v1.Reasoner",
    register=llm_pb2_grpc.add_ReasonerServicer_to_server,
    warm_up=warm_up,
    batched=True,
)


async def start(settings: LlmSettings, runtime: ModelRuntime | None = None) -> ServiceHost:
    """Load the model (or serve the given runtime's "llm"), start serving, warm up, then report SERVING."""

    def servicer(parts: ServiceParts) -> ReasonerServicer:
        cfg = parts.cfg
        options = ReasonerOptions(
            hidden_size=cfg.llm.hidden_size,
            max_response_tokens=settings.max_response_tokens or cfg.max_response_tokens,
            predictor_trained=predictor_is_trained(settings.checkpoint, cfg),
            max_positions=cfg.llm.max_positions,
            slow_caller_s=settings.server.slow_client_s,
            prefill_tokens=settings.prefill_tokens,
        )
        log.info("llm predictor trained: %s", options.predictor_trained)
        return ReasonerServicer(parts.runtime, load_tokenizer(cfg.llm), parts.limiter, options, parts.telemetry)

    return await start_model_service(SERVICE, settings.server, settings.checkpoint, servicer, runtime)


def main() -> None:
    asyncio.run(run_model_service(start, LlmSettings.from_env()))


if __name__ == "__main__":
    main()
