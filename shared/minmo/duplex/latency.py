"""One turn's timestamps and the latency report built from them (DESIGN.md §3, paper eq. 1).

Everything is measured at duplex on one monotonic clock, from the moment the end of the user's
speech was confirmed (VAD) or the typed text arrived. Each hop's share is what duplex waited for it;
the hop's own compute time (reported by the hop) is subtracted to give the network + queue overhead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from minmo.v1 import common_pb2, conversation_pb2

FIVE_TOKENS = 5


def now_ms() -> float:
    return time.monotonic() * 1000


@dataclass
class TurnTimings:
    end_of_speech: float | None = None  # user speech stopped (VAD) or text input received
    encoder_flush_ms: float | None = None  # encoder compute of the last partial chunk
    encoder_done: float | None = None
    generate_sent: float | None = None
    token_times: list[float] = field(default_factory=list)
    llm_first_token_compute_ms: float | None = None
    first_positions_sent: float | None = None
    first_speech_tokens: float | None = None
    voicelm_first_tokens_compute_ms: float | None = None
    first_tokens_to_vocoder: float | None = None
    first_pcm: float | None = None
    vocoder_first_chunk_compute_ms: float | None = None
    first_audio_sent: float | None = None
    failovers: list[str] = field(default_factory=list)  # hops reopened on another replica during the turn, in order

    def report(self, turn_id: str, trace_id: str = "") -> conversation_pb2.LatencyReport:
        report = conversation_pb2.LatencyReport(turn_id=turn_id, trace_id=trace_id, failovers=self.failovers)
        _set(report, "duplex_decision_ms", _between(self.end_of_speech, self.generate_sent))
        _set(report, "encoder_ms", self.encoder_flush_ms)
        first_token = self.token_times[0] if self.token_times else None
        fifth_token = self.token_times[FIVE_TOKENS - 1] if len(self.token_times) >= FIVE_TOKENS else None
        _set(report, "llm_first_token_ms", _between(self.generate_sent, first_token))
        _set(report, "llm_five_tokens_ms", _between(self.generate_sent, fifth_token))
        _set(report, "voicelm_first_tokens_ms", _between(self.first_positions_sent, self.first_speech_tokens))
        _set(report, "vocoder_first_chunk_ms", _between(self.first_tokens_to_vocoder, self.first_pcm))
        _set(report, "first_audio_ms", _between(self.end_of_speech, self.first_audio_sent))
        voicelm_waited = _between(self.first_positions_sent, self.first_speech_tokens)
        hops = [
            ("encoder", self.encoder_flush_ms, _between(self.end_of_speech, self.encoder_done)),
            ("llm", self.llm_first_token_compute_ms, report.llm_first_token_ms if first_token else None),
            ("voicelm", self.voicelm_first_tokens_compute_ms, voicelm_waited),
            ("vocoder", self.vocoder_first_chunk_compute_ms, _between(self.first_tokens_to_vocoder, self.first_pcm)),
        ]
        for hop, compute_ms, waited_ms in hops:
            if compute_ms is not None and waited_ms is not None:
                report.hops.append(
                    common_pb2.HopLatency(hop=hop, compute_ms=compute_ms, network_ms=max(waited_ms - compute_ms, 0.0))
                )
        if report.hops:
            report.network_ms = sum(hop.network_ms for hop in report.hops)
        return report


def _between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def _set(report: conversation_pb2.LatencyReport, name: str, value: float | None) -> None:
    if value is not None:
        setattr(report, name, value)
