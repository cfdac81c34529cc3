"""One user turn's trace in duplex, and the turn's latency metrics (the design is in `minmo.telemetry`).

`duplex.turn` runs from the start of the user's speech (or the typed text) to the end of the response; the
response is its child `duplex.response`. Messages of the listening phase (encoder audio, LLM audio, typed text)
carry the turn's context; the response's messages (GenerateResponse, Synthesize, Vocode, cancels) carry the
response's, so every model service's span lands under the duplex span of the phase that asked for it.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from opentelemetry.trace import SpanKind

from minmo.duplex.latency import TurnTimings
from minmo.duplex.response import Response
from minmo.telemetry import HopSpan, Telemetry
from minmo.v1 import conversation_pb2

REPORT_FIELDS = (
    "duplex_decision_ms",
    "encoder_ms",
    "llm_first_token_ms",
    "llm_five_tokens_ms",
    "voicelm_first_tokens_ms",
    "vocoder_first_chunk_ms",
    "first_audio_ms",
    "network_ms",
)


class TurnTrace:
    def __init__(
        self, telemetry: Telemetry, session_id: str, turn_id: str, parent: Mapping[str, str] | None = None
    ) -> None:
        """`parent`: the client's own trace context for the turn (TextInput.trace_context), if it sent one."""
        self.telemetry = telemetry
        self.turn_id = turn_id
        self.turn = telemetry.begin("duplex.turn", parent, session_id=session_id, turn_id=turn_id, kind=SpanKind.SERVER)
        self.carrier = self.turn.carrier  # the listening phase's trace_context
        self.response: HopSpan | None = None

    @property
    def trace_id(self) -> str:
        return self.turn.trace_id

    def respond(self, response_turn_id: str) -> dict[str, str]:
        """Open `duplex.response`; returns the trace_context for the response's messages."""
        self.turn.set(response_turn_id=response_turn_id)
        self.response = self.telemetry.begin(
            "duplex.response",
            self.turn,
            session_id=self.turn.session_id,
            turn_id=response_turn_id,
            kind=SpanKind.INTERNAL,
        )
        return self.response.carrier

    def finish(
        self,
        response: Response,
        report: conversation_pb2.LatencyReport,
        outcome: str = "ok",
        failure: tuple[grpc.StatusCode, str] | None = None,
    ) -> None:
        """End the turn with its latency report as attributes (and metrics); `failure` marks both spans ERROR."""
        numbers = {name: getattr(report, name) for name in REPORT_FIELDS if report.HasField(name)}
        self.turn.set(**numbers)
        if self.response is not None:
            self.response.set(
                tokens=len(response.pieces),
                speech_tokens=response.speech_tokens,
                audio_ms=response.audio_ms,
                end_reason=response.end_reason,
                first_token_ms=numbers.get("llm_first_token_ms"),
                first_audio_ms=numbers.get("first_audio_ms"),
            )
        self._observe(report, response.timings)
        for hop in (self.response, self.turn):
            if hop is None:
                continue
            if failure is not None:
                hop.fail(*failure)
            else:
                hop.end(outcome)

    def abandon(self, outcome: str) -> None:
        """The turn ended with no response (the next turn began first, or the session ended)."""
        if self.response is not None:
            self.response.end(outcome)
        self.turn.end(outcome)

    def _observe(self, report: conversation_pb2.LatencyReport, timings: TurnTimings) -> None:
        metrics = self.telemetry.metrics
        start = timings.end_of_speech
        if start is not None and timings.token_times:
            metrics.time_to_first_token.observe((timings.token_times[0] - start) / 1000)
        if start is not None and timings.first_speech_tokens is not None:
            metrics.time_to_first_speech_tokens.observe((timings.first_speech_tokens - start) / 1000)
        if report.HasField("first_audio_ms"):
            metrics.time_to_first_audio.observe(report.first_audio_ms / 1000)
        for hop in report.hops:
            metrics.hop_latency.labels(hop=hop.hop, part="compute").observe(hop.compute_ms / 1000)
            metrics.hop_latency.labels(hop=hop.hop, part="network").observe(hop.network_ms / 1000)
