"""The one start-up of the four model services (encoder, llm, voicelm, vocoder).

Every model service starts the same way: telemetry, the gRPC host (NOT_SERVING), the model config, the runtime
(local or Triton; the batching worker for the batched models), the session limiter, the servicer, serving,
warm-up, and only then SERVING. `start_model_service` does that once; each `services/<name>/main.py` says only
what differs — its settings, a `ModelService` (models, servicer registration, warm-up input) and how its servicer
is built from the shared parts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from minmo.model.config import MinMoConfig, load_config
from minmo.runtime import batching
from minmo.runtime.base import ModelRuntime
from minmo.runtime.factory import open_runtime
from minmo.serving.server import ServiceHost, SessionLimiter
from minmo.serving.settings import ServerSettings
from minmo.telemetry import Telemetry, start_telemetry

log = logging.getLogger(__name__)
Settings = TypeVar("Settings")


@dataclass(frozen=True)
class ServiceParts:
    """What a model service's servicer is built from."""

    cfg: MinMoConfig
    runtime: ModelRuntime
    limiter: SessionLimiter
    telemetry: Telemetry


@dataclass(frozen=True)
class ModelService:
    """What differs between the model services. `batched`: requests of concurrent sessions are batched by the
    runtime (MINMO_BATCH_MAX_SIZE / MINMO_BATCH_WINDOW_MS); `warm_up` runs every op a session uses once, before
    SERVING, so the first user does not pay for lazy initialisation."""

    name: str  # "encoder": telemetry service "minmo-encoder"
    models: tuple[str, ...]  # runtime models it serves
    grpc_service: str  # full proto service name, e.g. "minmo.v1.AudioEncoder"
    register: Callable[[object, object], None]  # the generated add_<Service>Servicer_to_server
    warm_up: Callable[[ModelRuntime, MinMoConfig], Awaitable[None]]
    batched: bool = False


async def start_model_service(
    service: ModelService,
    server: ServerSettings,
    checkpoint: str | None,
    build_servicer: Callable[[ServiceParts], object],
    runtime: ModelRuntime | None = None,
    configure: Callable[[MinMoConfig], MinMoConfig] | None = None,
) -> ServiceHost:
    """Start `service` and return its host once it is SERVING. `runtime`: serve this one (a test inspects it)
    instead of opening the configured one; `configure`: this replica's changes to the preset (e.g. the encoder's
    left context)."""
    if server.torch_threads:
        torch.set_num_threads(server.torch_threads)
    telemetry = start_telemetry(f"minmo-{service.name}", server)
    host = ServiceHost(server, telemetry)
    cfg = load_config(server.model_config)
    if configure is not None:
        cfg = configure(cfg)
    if runtime is None:
        batch, on_batch = None, None
        if service.batched:
            batch = batching.BatchSettings(server.batch_max_size, server.batch_window_ms)

            def on_batch(model: str, size: int) -> None:
                telemetry.metrics.batch_size.labels(model=model).observe(size)

        runtime = await open_runtime(
            server.runtime, cfg, list(service.models), checkpoint, server.triton_url, batch, on_batch,
            placement=server.placement, steady_wait_s=server.steady_wait_ms / 1000,
        )
    host.on_stop(runtime.close)
    parts = ServiceParts(cfg, runtime, SessionLimiter(server.max_sessions), telemetry)
    host.add(service.register, build_servicer(parts), service.grpc_service)
    port = await host.start()
    await service.warm_up(runtime, cfg)
    await host.set_serving()
    log.info("%s serving on %s:%d", service.name, server.host, port)
    return host


async def run_model_service(start: Callable[[Settings], Awaitable[ServiceHost]], settings: Settings) -> None:
    """A service's `main`: `start(settings)`, then serve until SIGTERM / SIGINT (NOT_SERVING, drain, stop)."""
    host = await start(settings)
    await host.serve_until_signal()
