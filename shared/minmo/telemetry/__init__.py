"""Logs, traces and metrics for every MinMo service: one set-up, `start_telemetry(service, server_settings)`.

Tracing a turn
--------------
One trace per conversation turn. Duplex opens the root span `duplex.turn` when the user starts speaking (or a
typed TextInput arrives; a `traceparent` in TextInput.trace_context makes it a child of the client's span) and
ends it when the response is done, interrupted or failed. The response is its child span `duplex.response`.

The hops between services are long bidi streams (one per session to encoder and llm, one per response to
voicelm and vocoder), so a W3C context in the call's gRPC metadata would name the session, not the turn.
The context travels inside the messages instead: every turn-scoped request carries
`map<string, string> trace_context` with the W3C `traceparent` (and `tracestate`) of the duplex span it belongs
to, and the service makes its span a child of that context:

    duplex.turn                    minmo-duplex   speech start / text in -> response done
    |- encoder.utterance           minmo-encoder  EncodeAudioChunk, EndOfUtterance  (turn context)
    |- llm.audio                   minmo-llm      AudioInput                        (turn context)
    |- llm.append_turn             minmo-llm      AppendTurn of typed text          (turn context)
    '- duplex.response             minmo-duplex   GenerateResponse sent -> done
       |- llm.generate             minmo-llm      GenerateResponse                  (response context)
       |- voicelm.synthesize       minmo-voicelm  SynthesizeConfig                  (response context)
       '- vocoder.vocode           minmo-vocoder  VocodeConfig                      (response context)

A barge-in's CancelGeneration and the AppendTurn of the words heard carry the interrupted response's context.
LatencyReport.trace_id is the turn's trace id. Spans carry `minmo.session_id`, `minmo.turn_id` and the hop's
own numbers (first token, first audio, chunks, RTF) as `minmo.*` attributes; a hop that fails gets status
ERROR with its gRPC code (`rpc.grpc.status_code`); a cancelled one (barge-in) is not an error.

Services in one process (the in-process tests) stay apart: each has its own TracerProvider (its own
`service.name`) and its own Prometheus registry and port, and all providers feed one span pipeline whose
exporters come from the OTEL_* variables (`minmo.telemetry.tracing`).
"""

from minmo.telemetry.hops import HopSpan
from minmo.telemetry.service import Telemetry, start_telemetry
from minmo.telemetry.tracing import extract, inject, span_pipeline

__all__ = ["HopSpan", "Telemetry", "extract", "inject", "span_pipeline", "start_telemetry"]
