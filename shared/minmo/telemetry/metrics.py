"""Prometheus metrics: one registry per service, served on the service's own port.

Every service exposes the same families (names below); each fills those it measures. Latencies are seconds,
measured by the service itself: in duplex from the end of the user's speech, in a model service from the
request that started the work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


class ServiceMetrics:
    """A service's metric families in a registry of its own, so services sharing a process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.turns = Counter(
            "minmo_turns",
            "Turns this service worked on, by operation (span name) and outcome (ok, cancelled, error)",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "minmo_errors",
            "Errors by gRPC status code: RPCs served that ended with it, and (duplex) hop failures sent to the client",
            ["code"],
            registry=self.registry,
        )
        self.active_sessions = Gauge(
            "minmo_active_sessions",
            "Streams served now: sessions (duplex, encoder, llm) or response turns (voicelm, vocoder)",
            registry=self.registry,
        )
        self.session_capacity = Gauge(
            "minmo_session_capacity",
            "Session slots of this replica (MINMO_MAX_SESSIONS, its measured capacity); past it new streams are "
            "refused with RESOURCE_EXHAUSTED. Autoscale on minmo_active_sessions / minmo_session_capacity",
            registry=self.registry,
        )
        self.time_to_first_token = self._latency("minmo_time_to_first_token_seconds", "Time to the first text token")
        self.time_to_first_speech_tokens = self._latency(
            "minmo_time_to_first_speech_tokens_seconds", "Time to the first speech tokens"
        )
        self.time_to_first_audio = self._latency("minmo_time_to_first_audio_seconds", "Time to the first audio")
        self.hop_latency = Histogram(
            "minmo_hop_latency_seconds",
            "A hop's share of a turn's first-audio latency (DESIGN.md section 3): the hop's compute, and the "
            "network + queue time duplex waited on top of it",
            ["hop", "part"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.rtf = Histogram(
            "minmo_rtf",
            "Real-time factor of a turn's audio work: compute time / audio duration (below 1 keeps up)",
            buckets=RTF_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "minmo_batch_size",
            "Session steps run as one batched forward by the local runtime's batching worker, per model",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = self._latency(
            "minmo_queue_seconds", "Time a request waited behind earlier work of its session before compute"
        )

    def _latency(self, name: str, what: str) -> Histogram:
        return Histogram(name, what + ", in seconds", buckets=LATENCY_BUCKETS_S, registry=self.registry)


class MetricsServer:
    """The registry's /metrics over HTTP on `host:port` (port 0: an ephemeral one; `port` says which)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, host, registry=registry)
        self.host = host
        self.port: int = self._httpd.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
