"""What one load level measured: HdrHistogram percentiles, errors by code, and Locust-compatible CSV.

Latencies are recorded in HdrHistograms (integer microseconds, 3 significant digits) so percentiles are exact to
0.1 % however many turns a level runs, and histograms of several workers could be added together.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from minmo.load.user import SessionRecord, TurnRecord

HISTOGRAM_MAX_US = 3_600_000_000  # one hour: nothing a user waits for is longer
SIGNIFICANT_DIGITS = 3
US_PER_MS = 1000
LOCUST_PERCENTILES = (0.5, 0.66, 0.75, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0)
LOCUST_STATS_HEADER = (
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
    "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
    *(f"{100 * p:g}%" for p in LOCUST_PERCENTILES),
)  # fmt: skip


class Latencies:
    """One metric's samples in ms, kept in an HdrHistogram."""

    def __init__(self) -> None:
        self.histogram = HdrHistogram(1, HISTOGRAM_MAX_US, SIGNIFICANT_DIGITS)

    def record(self, ms: float) -> None:
        self.histogram.record_value(min(HISTOGRAM_MAX_US, max(1, round(ms * US_PER_MS))))

    @property
    def count(self) -> int:
        return self.histogram.get_total_count()

    def percentile(self, fraction: float) -> float | None:
        if not self.count:
            return None
        return round(self.histogram.get_value_at_percentile(100 * fraction) / US_PER_MS, 1)

    def summary(self, fractions: tuple[float, ...]) -> dict[str, float | None]:
        return {f"p{round(100 * f)}": self.percentile(f) for f in fractions}

    @property
    def mean(self) -> float:
        return self.histogram.get_mean_value() / US_PER_MS if self.count else 0.0

    @property
    def min(self) -> float:
        return self.histogram.get_min_value() / US_PER_MS if self.count else 0.0

    @property
    def max(self) -> float:
        return self.histogram.get_max_value() / US_PER_MS if self.count else 0.0


def _failure(record: SessionRecord, turn: TurnRecord) -> dict[str, Any]:
    return {
        "session_id": record.session_id,
        "turn": turn.index,
        "typed": turn.typed,
        "barge_in": turn.barge_in,
        "code": turn.failure or "UNKNOWN",
    }


@dataclass
class LevelResult:
    """One level of a sweep: `sessions` concurrent users, each running the scenario's turns."""

    sessions: int
    duration_s: float = 0.0
    turns_ok: int = 0
    turns_failed: Counter = field(default_factory=Counter)  # status code -> turns
    sessions_refused: Counter = field(default_factory=Counter)  # status code -> sessions that never started
    first_audio: Latencies = field(default_factory=Latencies)
    server_first_audio: Latencies = field(default_factory=Latencies)
    barge_in_stop: Latencies = field(default_factory=Latencies)
    underrun_ms: float = 0.0
    audio_ms: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)  # each failed turn: where to look in the logs

    @classmethod
    def from_sessions(cls, sessions: int, records: list[SessionRecord], duration_s: float) -> LevelResult:
        result = cls(sessions=sessions, duration_s=duration_s)
        for record in records:
            if record.refused:
                result.sessions_refused[record.refused] += 1
            for turn in record.turns:
                result.add(turn)
                if not turn.ok:
                    result.failures.append(_failure(record, turn))
        return result

    def add(self, turn: TurnRecord) -> None:
        if turn.barge_in_stop_ms is not None:
            self.barge_in_stop.record(turn.barge_in_stop_ms)
        if not turn.ok:
            self.turns_failed[turn.failure or "UNKNOWN"] += 1
            return
        self.turns_ok += 1
        self.first_audio.record(turn.first_audio_ms)
        if turn.server_first_audio_ms is not None:
            self.server_first_audio.record(turn.server_first_audio_ms)
        self.underrun_ms += turn.underrun_ms
        self.audio_ms += turn.audio_ms

    @property
    def underrun_ms_per_min(self) -> float:
        """Dry-speaker time per minute of reply audio played."""
        return round(self.underrun_ms / (self.audio_ms / 60_000), 1) if self.audio_ms else 0.0

    def p95_first_audio(self) -> float | None:
        return self.first_audio.percentile(0.95)

    def to_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "turns_ok": self.turns_ok,
            "turns_failed": dict(self.turns_failed),
            "sessions_refused": dict(self.sessions_refused),
            "first_audio_ms": self.first_audio.summary((0.5, 0.95, 0.99)),
            "server_first_audio_ms": self.server_first_audio.summary((0.5, 0.95, 0.99)),
            "underrun_ms_per_min": self.underrun_ms_per_min,
            "barge_in_stop_ms": self.barge_in_stop.summary((0.5, 0.95)),
            "barge_ins": self.barge_in_stop.count,
            "duration_s": round(self.duration_s, 2),
            "failures": self.failures,
        }

    def write_locust_csv(self, prefix: Path) -> list[Path]:
        """`{prefix}_stats.csv` and `{prefix}_failures.csv` in the columns Locust writes with `--csv`, so the
        tools that read Locust's reports read these. A "request" is a turn; its response time the first audio."""
        stats_path = prefix.with_name(prefix.name + "_stats.csv")
        failures_path = prefix.with_name(prefix.name + "_failures.csv")
        failed = sum(self.turns_failed.values())
        rows = [
            ("grpc", "first_audio", self.first_audio, self.turns_ok + failed, failed),
            ("grpc", "barge_in_stop", self.barge_in_stop, self.barge_in_stop.count, 0),
            ("", "Aggregated", self.first_audio, self.turns_ok + failed, failed),
        ]
        with stats_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LOCUST_STATS_HEADER)
            for kind, name, latencies, requests, failures in rows:
                writer.writerow(self._locust_row(kind, name, latencies, requests, failures))
        with failures_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("Method", "Name", "Error", "Occurrences"))
            for code, count in sorted(self.turns_failed.items()):
                writer.writerow(("grpc", "first_audio", code, count))
            for code, count in sorted(self.sessions_refused.items()):
                writer.writerow(("grpc", "session_start", code, count))
        return [stats_path, failures_path]

    def _locust_row(self, kind: str, name: str, latencies: Latencies, requests: int, failures: int) -> list:
        rate = requests / self.duration_s if self.duration_s else 0.0
        failure_rate = failures / self.duration_s if self.duration_s else 0.0
        percentiles = [latencies.percentile(p) if latencies.count else "N/A" for p in LOCUST_PERCENTILES]
        median = latencies.percentile(0.5) or 0
        return [
            kind, name, requests, failures, median, round(latencies.mean, 1), round(latencies.min, 1),
            round(latencies.max, 1), 0, round(rate, 3), round(failure_rate, 3), *percentiles,
        ]  # fmt: skip
