"""Build the runtime a service calls, holding only the models that service serves."""

from __future__ import annotations

from collections.abc import Callable

from minmo.model.build import build_component
from minmo.model.config import MinMoConfig
from minmo.model.placement import CPU_FLOAT32, Placement
from minmo.runtime.base import ModelRuntime, RuntimeModel
from minmo.runtime.batching import BatchSettings
from minmo.runtime.llm_model import LlmModel
from minmo.runtime.local import STEADY_WAIT_S, LocalRuntime
from minmo.runtime.models import EncoderModel
from minmo.runtime.token2wav_model import Token2WavModel
from minmo.runtime.voicelm_model import VoiceLmModel

# name -> constructor(config, checkpoint, placement): the model on MINMO_DEVICE in MINMO_DTYPE.
MODEL_FACTORIES: dict[str, Callable[[MinMoConfig, str | None, Placement], RuntimeModel]] = {
    "encoder": lambda cfg, checkpoint, placement: EncoderModel(
        build_component(cfg, "speech_encoder", checkpoint, placement=placement)
    ),
    "llm": LlmModel.from_config,
    "token2wav": lambda cfg, checkpoint, placement: Token2WavModel(
        build_component(cfg, "token2wav", checkpoint, placement=placement)
    ),
    "voice_lm": VoiceLmModel.from_config,
}


def build_local_runtime(
    cfg: MinMoConfig,
    models: list[str],
    checkpoint: str | None = None,
    workers: int = 2,
    batching: BatchSettings | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    placement: Placement = CPU_FLOAT32,
    steady_wait_s: float = STEADY_WAIT_S,
) -> ModelRuntime:
    """An in-process runtime serving `models` (names from MODEL_FACTORIES), batching across sessions if asked;
    `steady_wait_s`: the longest a steady step waits for first-audio work (`LocalRuntime`)."""
    built = [MODEL_FACTORIES[name](cfg, checkpoint, placement) for name in models]
    return LocalRuntime(built, workers=workers, batching=batching, on_batch=on_batch, steady_wait_s=steady_wait_s)


RUNTIME_KINDS = ("local", "triton")


def build_runtime(
    kind: str,
    cfg: MinMoConfig,
    models: list[str],
    checkpoint: str | None = None,
    triton_url: str | None = None,
    batching: BatchSettings | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    placement: Placement = CPU_FLOAT32,
    steady_wait_s: float = STEADY_WAIT_S,
) -> ModelRuntime:
    """The runtime a service's configuration selects: `local` builds `models` in process on `placement`; `triton`
    talks to the Triton server at `triton_url` (HOST:PORT), whose repository holds the models (cfg, checkpoint and
    placement are its)."""
    if kind == "local":
        return build_local_runtime(
            cfg, models, checkpoint, batching=batching, on_batch=on_batch, placement=placement,
            steady_wait_s=steady_wait_s,
        )
    if kind != "triton":
        raise ValueError(f"runtime kind must be one of {RUNTIME_KINDS}, got {kind!r}")
    if not triton_url:
        raise ValueError("the triton runtime needs the Triton server's gRPC address (MINMO_TRITON_URL)")
    from minmo.runtime.triton import TritonRuntime  # tritonclient is only needed by services that use Triton

    return TritonRuntime(triton_url)


TRITON_READY_TIMEOUT_S = 120.0  # a service that starts before Triton waits this long for its models


async def open_runtime(
    kind: str,
    cfg: MinMoConfig,
    models: list[str],
    checkpoint: str | None = None,
    triton_url: str | None = None,
    batching: BatchSettings | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    placement: Placement = CPU_FLOAT32,
    steady_wait_s: float = STEADY_WAIT_S,
) -> ModelRuntime:
    """`build_runtime`, then wait until a Triton server has `models` loaded (a no-op for the local runtime)."""
    runtime = build_runtime(kind, cfg, models, checkpoint, triton_url, batching, on_batch, placement, steady_wait_s)
    wait_ready = getattr(runtime, "wait_ready", None)
    if wait_ready is not None:
        await wait_ready(models, TRITON_READY_TIMEOUT_S)
    return runtime
