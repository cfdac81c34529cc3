"""One service's telemetry: its tracer (own `service.name`), metrics (own registry and port) and JSON logs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from minmo.serving.errors import HANDLER_FACTORIES
from minmo.serving.settings import ServerSettings
from minmo.telemetry.hops import HopSpan
from minmo.telemetry.logs import configure_logging
from minmo.telemetry.metrics import MetricsServer, ServiceMetrics
from minmo.telemetry.tracing import extract, span_pipeline, status_of, tracer_provider

log = logging.getLogger("minmo.telemetry")
FLUSH_TIMEOUT_MS = 5_000


@dataclass
class Telemetry:
    service: str  # the OpenTelemetry service.name, e.g. "minmo-llm"
    provider: TracerProvider
    metrics: ServiceMetrics
    metrics_server: MetricsServer

    @property
    def metrics_url(self) -> str:
        return self.metrics_server.url

    def begin(
        self,
        name: str,
        parent: Mapping[str, str] | HopSpan | None,
        *,
        session_id: str,
        turn_id: str,
        kind: SpanKind = SpanKind.SERVER,
    ) -> HopSpan:
        """Start a hop span under `parent`: a message's `trace_context` map, a span of this service, or None (a
        new trace)."""
        context = parent.carrier if isinstance(parent, HopSpan) else (parent or {})
        span = self.provider.get_tracer("minmo").start_span(name, context=extract(context), kind=kind)
        return HopSpan(self.service, name, span, self.metrics, session_id, turn_id)

    @contextlib.contextmanager
    def hop(
        self,
        name: str,
        parent: Mapping[str, str] | None,
        *,
        session_id: str,
        turn_id: str,
        grpc_context: grpc.aio.ServicerContext | None = None,
    ) -> Iterator[HopSpan]:
        """A hop span for a block: ended when the block ends, failed with the block's gRPC status if it raises."""
        hop = self.begin(name, parent, session_id=session_id, turn_id=turn_id)
        try:
            yield hop
        except BaseException as error:
            hop.fail_with(error, grpc_context)
            raise
        hop.end()

    def error_counter(self) -> grpc.aio.ServerInterceptor:
        return ErrorCounter(self.metrics)

    async def close(self) -> None:
        """Stop serving metrics and flush this service's spans (the process's exporters stay up for the others)."""
        await asyncio.to_thread(self.metrics_server.close)
        await asyncio.to_thread(self.provider.force_flush, FLUSH_TIMEOUT_MS)


def start_telemetry(service: str, server: ServerSettings) -> Telemetry:
    """The one set-up call of a service's main: JSON logs, a tracer provider named `service` feeding the process's
    exporters, and a metrics registry served on MINMO_METRICS_PORT."""
    configure_logging()
    pipeline = span_pipeline()
    pipeline.configure(server.telemetry)
    metrics = ServiceMetrics()
    telemetry = Telemetry(
        service=service,
        provider=tracer_provider(service, server.replica_id, pipeline),
        metrics=metrics,
        metrics_server=MetricsServer(metrics.registry, server.host, server.telemetry.metrics_port),
    )
    log.info("%s metrics on %s", service, telemetry.metrics_url, extra={"service": service})
    return telemetry


class ErrorCounter(grpc.aio.ServerInterceptor):
    """Counts RPCs that end with a non-OK status in minmo_errors_total{code} (stream handlers included, which is
    why it wraps the handler's behaviour rather than the call)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], object],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for kind, factory in HANDLER_FACTORIES.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return factory(self._wrap(behaviour), handler.request_deserializer, handler.response_serializer)
        return handler

    def _wrap(self, behaviour: Callable) -> Callable:
        count = self._count
        if not inspect.iscoroutinefunction(behaviour) and not inspect.isasyncgenfunction(behaviour):
            return behaviour  # a sync handler runs in grpc's thread pool; ours and grpc's own are all async
        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request, context: grpc.aio.ServicerContext):
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as error:
                    count(error, context)
                    raise

            return streaming

        async def unary(request, context: grpc.aio.ServicerContext):
            try:
                return await behaviour(request, context)
            except BaseException as error:
                count(error, context)
                raise

        return unary

    def _count(self, error: BaseException, context: grpc.aio.ServicerContext) -> None:
        code, _ = status_of(error, context)
        self.metrics.errors.labels(code=code.name).inc()
