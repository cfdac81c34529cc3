"""Telemetry tests run the five services in this process (tests/stack) and watch their spans and metrics.

Spans are caught by the SDK's in-memory exporter hung on the process's span pipeline, which every service's
tracer provider feeds, so the exporter sees all five `service.name`s.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from stack.conftest import full_stack, stack  # noqa: F401  (the in-process stack fixtures)

from minmo.telemetry import span_pipeline

SPAN_WAIT_S = 10.0


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    span_pipeline().add_span_processor(processor)
    try:
        yield exporter
    finally:
        span_pipeline().remove_span_processor(processor)


async def wait_for_spans(exporter: InMemorySpanExporter, names: set[str]) -> list[ReadableSpan]:
    """All finished spans, once spans with every one of `names` have ended (a service ends its span just after
    sending its last message, so it may trail the client by a moment)."""
    async with asyncio.timeout(SPAN_WAIT_S):
        while not names <= {span.name for span in exporter.get_finished_spans()}:
            await asyncio.sleep(0.05)
    return list(exporter.get_finished_spans())


async def scrape(url: str) -> dict[str, list]:
    """GET a /metrics page and parse it with prometheus_client's parser: {family name: samples}."""
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    return {family.name: family.samples for family in text_string_to_metric_families(text)}
