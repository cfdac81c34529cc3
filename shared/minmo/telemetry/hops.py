"""A service's work on one turn: its span, its count in minmo_turns_total, and one summary log line."""

from __future__ import annotations

import logging

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from minmo.telemetry.metrics import ServiceMetrics
from minmo.telemetry.tracing import inject, status_of, trace_id_of

log = logging.getLogger("minmo.turns")
Number = int | float | str | bool


class HopSpan:
    """Set the hop's numbers as they become known (`set`), then end it once: `end` (ok or cancelled) or `fail`.

    Cancelled work (a barge-in, a closed stream) is not an error: its span status stays unset.
    """

    def __init__(
        self, service: str, name: str, span: trace.Span, metrics: ServiceMetrics, session_id: str, turn_id: str
    ) -> None:
        self.service = service
        self.name = name
        self.span = span
        self.metrics = metrics
        self.session_id = session_id
        self.turn_id = turn_id
        self.numbers: dict[str, Number] = {}
        self.ended = False
        span.set_attributes({"minmo.session_id": session_id, "minmo.turn_id": turn_id})

    @property
    def carrier(self) -> dict[str, str]:
        """This span's W3C context, for the `trace_context` of messages whose work belongs under it."""
        return inject(self.span)

    @property
    def trace_id(self) -> str:
        return trace_id_of(self.span)

    def set(self, **numbers: Number | None) -> None:
        """Record numbers as `minmo.<name>` span attributes and summary-log fields (None: not measured); numbers
        that arrive after the end (work that raced the end of the turn) are dropped."""
        if self.ended:
            return
        known = {name: value for name, value in numbers.items() if value is not None}
        self.numbers |= known
        self.span.set_attributes({f"minmo.{name}": value for name, value in known.items()})

    def end(self, outcome: str = "ok") -> None:
        if self.ended:
            return
        self.ended = True
        self.span.set_attribute("minmo.outcome", outcome)
        self.span.end()
        self.metrics.turns.labels(operation=self.name, outcome=outcome).inc()
        self._log_summary(outcome)

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """End with status ERROR and the gRPC code; CANCELLED ends as cancelled instead."""
        if self.ended:
            return
        if code == grpc.StatusCode.CANCELLED:
            self.end("cancelled")
            return
        self.span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        self.set(error_code=code.name, error=message)
        self.end("error")

    def fail_with(self, error: BaseException, grpc_context: grpc.aio.ServicerContext | None = None) -> None:
        self.fail(*status_of(error, grpc_context))

    def _log_summary(self, outcome: str) -> None:
        context = self.span.get_span_context()
        duration_ms = _duration_ms(self.span)
        ids = {
            "service": self.service,
            "session_id": self.session_id,
            "turn_id": self.turn_id,
            "trace_id": trace.format_trace_id(context.trace_id),
            "span_id": trace.format_span_id(context.span_id),
        }
        summary = {"operation": self.name, "outcome": outcome, "duration_ms": duration_ms, **self.numbers}
        level = logging.WARNING if outcome == "error" else logging.INFO
        log.log(level, "%s %s", self.name, outcome, extra=ids | {"summary": summary})


def _duration_ms(span: trace.Span) -> float | None:
    start, end = getattr(span, "start_time", None), getattr(span, "end_time", None)
    return None if start is None or end is None else round((end - start) / 1e6, 3)
