"""Spans leave the process over OTLP/gRPC to the collector OTEL_EXPORTER_OTLP_ENDPOINT names.

The collector is a remote peer, so the test plays it: a real gRPC server on loopback implementing
opentelemetry-proto's TraceService, receiving what the SDK's OTLP exporter really sends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from minmo.audio.synthetic import utterance
from minmo.client.chat import ChatRequest, run_chat
from minmo.client.wav import InputAudio
from minmo.serving.settings import TelemetrySettings
from minmo.telemetry import span_pipeline
from minmo.telemetry.tracing import exporting_processors

from .test_tracing import SERVICES, SPOKEN_TURN

EXPORT_WAIT_S = 15.0


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with its resource's service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context) -> object:
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {item.key: item.value.string_value for item in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((attributes["service.name"], span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def names(self) -> set[str]:
        with self.lock:
            return {span.name for _, span in self.spans}


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


async def test_a_turns_spans_reach_the_collector_from_the_environment(collector, full_stack, monkeypatch):
    servicer, port = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    settings = TelemetrySettings.from_env(grpc_port=0)
    assert settings.traces_exporters == ("otlp",)
    [processor] = exporting_processors(settings)  # what a service process builds from the same environment
    span_pipeline().add_span_processor(processor)
    try:
        request = ChatRequest(audio=InputAudio(utterance(seed=3), 16000), realtime=False, timeout_s=120)
        assert (await run_chat(full_stack.address("duplex"), request)).problems() == []
        async with asyncio.timeout(EXPORT_WAIT_S):
            while not servicer.names() >= SPOKEN_TURN:
                await asyncio.to_thread(processor.force_flush)
                await asyncio.sleep(0.1)
    finally:
        span_pipeline().remove_span_processor(processor)
        await asyncio.to_thread(processor.shutdown)

    [(_, turn)] = [(service, span) for service, span in servicer.spans if span.name == "duplex.turn"]
    in_trace = {span.name: (service, span) for service, span in servicer.spans if span.trace_id == turn.trace_id}
    assert set(in_trace) == SPOKEN_TURN
    assert {service for service, _ in in_trace.values()} == SERVICES
    response = in_trace["duplex.response"][1]
    assert response.parent_span_id == turn.span_id
    for name in ("llm.generate", "voicelm.synthesize", "vocoder.vocode"):
        assert in_trace[name][1].parent_span_id == response.span_id, name
    for name in ("encoder.utterance", "llm.audio"):
        assert in_trace[name][1].parent_span_id == turn.span_id, name
