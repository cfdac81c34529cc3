"""Spans: one pipeline per process, one TracerProvider per service, W3C context in messages' `trace_context` maps.

A process holds one `SpanPipeline`; every service's TracerProvider (each with its own Resource, so its own
`service.name`) hands its finished spans to it, and the exporters hang off it: the ones OTEL_TRACES_EXPORTER
and the OTLP endpoint variables ask for, plus whatever a test adds (an in-memory exporter).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import threading
from collections.abc import Mapping

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from minmo.serving.settings import TelemetrySettings

W3C = TraceContextTextMapPropagator()  # the proto's trace_context maps hold W3C "traceparent" / "tracestate"


class SpanPipeline(SpanProcessor):
    """Fans every span of every service in the process out to the exporting processors (added and removed at
    any time, so a test can watch spans of services that are already running)."""

    def __init__(self) -> None:
        self._processors: tuple[SpanProcessor, ...] = ()
        self._lock = threading.Lock()
        self._configured = False

    def configure(self, settings: TelemetrySettings) -> None:
        """Add the exporters the settings name; only the first call in a process does anything."""
        with self._lock:
            if self._configured:
                return
            self._configured = True
        for processor in exporting_processors(settings):
            self.add_span_processor(processor)

    def add_span_processor(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors += (processor,)

    def remove_span_processor(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = tuple(item for item in self._processors if item is not processor)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self._processors:
            processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all([processor.force_flush(timeout_millis) for processor in self._processors])


@functools.cache
def span_pipeline() -> SpanPipeline:
    """The process's span pipeline; it flushes its exporters when the process exits."""
    pipeline = SpanPipeline()
    atexit.register(pipeline.shutdown)
    return pipeline


def exporting_processors(settings: TelemetrySettings) -> list[SpanProcessor]:
    """Batching OTLP/gRPC export (endpoint, headers, TLS from the standard OTEL_EXPORTER_OTLP_* variables) and/or
    spans printed to stdout, as OTEL_TRACES_EXPORTER says."""
    processors: list[SpanProcessor] = []
    if "otlp" in settings.traces_exporters:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in settings.traces_exporters:
        processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
    return processors


def tracer_provider(service: str, instance_id: str, pipeline: SpanPipeline) -> TracerProvider:
    """A provider of its own per service (its Resource names the service) feeding the shared pipeline; the
    pipeline, not the provider, is shut down at exit, since several providers share it."""
    attributes = {SERVICE_NAME: service} | ({SERVICE_INSTANCE_ID: instance_id} if instance_id else {})
    return TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False, active_span_processor=pipeline)


def inject(span: trace.Span) -> dict[str, str]:
    """The span's W3C context as a `trace_context` map for the next hop's message."""
    carrier: dict[str, str] = {}
    W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def extract(carrier: Mapping[str, str]) -> Context:
    """The parent context a message's `trace_context` map names (an empty context when it names none)."""
    return W3C.extract(dict(carrier))


def trace_id_of(span: trace.Span) -> str:
    """32 hex characters, as LatencyReport.trace_id and tracing backends show it."""
    return trace.format_trace_id(span.get_span_context().trace_id)


def status_of(
    error: BaseException, grpc_context: grpc.aio.ServicerContext | None = None
) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a failure ends with: a cancel is CANCELLED, an abort has the code the servicer gave,
    our own errors carry a `code`, a failed call has its status, anything else is UNKNOWN (as grpc reports it)."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED, "cancelled"
    if grpc_context is not None and grpc_context.code() not in (None, grpc.StatusCode.OK):
        return grpc_context.code(), grpc_context.details() or ""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code(), error.details() or ""
    code = getattr(error, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code, str(error)
    return grpc.StatusCode.UNKNOWN, repr(error)
