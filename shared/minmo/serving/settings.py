"""Typed settings read from environment variables — the only place services read `os.environ`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from minmo.model.placement import CPU_FLOAT32, Placement, PlacementError


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and what it expects."""


def env_str(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    value = (os.environ if environ is None else environ).get(name, default)
    if value is None:
        raise SettingsError(f"{name} is required but not set")
    return value


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    raw = env_str(name, str(default), environ)
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    raw = env_str(name, str(default), environ)
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


METRICS_PORT_OFFSET = 100  # a service's metrics port, by default: its gRPC port + this
TRACES_EXPORTERS = ("otlp", "console", "none")


@dataclass(frozen=True)
class TelemetrySettings:
    """Where a service's spans and metrics go. MINMO_METRICS_PORT: the Prometheus /metrics port (0: an ephemeral
    port; default: the gRPC port + 100, or ephemeral when the gRPC port is). OTEL_TRACES_EXPORTER: comma-separated
    otlp, console, none (default: otlp when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is
    set, else none); the OTLP exporter reads its other OTEL_EXPORTER_OTLP_* variables itself, as the SDK documents."""

    metrics_port: int = 0
    traces_exporters: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, grpc_port: int, environ: Mapping[str, str] | None = None) -> TelemetrySettings:
        endpoint = env_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", environ) or env_str(
            "OTEL_EXPORTER_OTLP_ENDPOINT", "", environ
        )
        raw = env_str("OTEL_TRACES_EXPORTER", "otlp" if endpoint else "none", environ)
        exporters = tuple(name.strip() for name in raw.split(",") if name.strip() and name.strip() != "none")
        unknown = [name for name in exporters if name not in TRACES_EXPORTERS]
        if unknown:
            raise SettingsError(f"OTEL_TRACES_EXPORTER={raw!r}: use a comma-separated list of {TRACES_EXPORTERS}")
        default_metrics_port = grpc_port + METRICS_PORT_OFFSET if grpc_port else 0
        return cls(
            metrics_port=env_int("MINMO_METRICS_PORT", default_metrics_port, environ), traces_exporters=exporters
        )


@dataclass(frozen=True)
class TlsSettings:
    """Transport security from PEM files (README "Security"). MINMO_TLS_CERT + MINMO_TLS_KEY: this service's
    certificate chain and private key (both or neither; with them the service serves TLS only). MINMO_TLS_CA:
    the CA that signs the services' certificates; with it, mTLS between services: internal services refuse
    callers without a client certificate signed by it, and duplex presents its own certificate to its peers
    and verifies theirs. The files are re-read when they change (new handshakes use the new ones)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise SettingsError("MINMO_TLS_CERT and MINMO_TLS_KEY go together: set both or neither")
        if self.ca and not self.cert:
            raise SettingsError("MINMO_TLS_CA (mTLS) needs this service's own MINMO_TLS_CERT and MINMO_TLS_KEY")
        for path in (self.cert, self.key, self.ca):
            if path and not os.path.isfile(path):
                raise SettingsError(f"TLS file {path!r} does not exist")

    @property
    def enabled(self) -> bool:
        return self.cert is not None

    @property
    def mutual(self) -> bool:
        return self.ca is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TlsSettings:
        return cls(
            cert=env_str("MINMO_TLS_CERT", "", environ) or None,
            key=env_str("MINMO_TLS_KEY", "", environ) or None,
            ca=env_str("MINMO_TLS_CA", "", environ) or None,
        )


def env_flag(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    raw = env_str(name, "1" if default else "0", environ).strip().lower()
    if raw not in ("1", "0", "true", "false", "yes", "no"):
        raise SettingsError(f"{name}={raw!r}: use 1 or 0")
    return raw in ("1", "true", "yes")


@dataclass(frozen=True)
class ServerSettings:
    """What every service's gRPC server needs. Variables: MINMO_HOST, MINMO_PORT, MINMO_MAX_SESSIONS,
    MINMO_MAX_MESSAGE_BYTES, MINMO_GRACE_S, MINMO_CONFIG (model preset or JSON path), MINMO_REPLICA_ID,
    MINMO_RUNTIME (local: PyTorch in this process; triton: the server at MINMO_TRITON_URL, HOST:PORT),
    MINMO_REFLECTION (1: serve gRPC reflection; default 0), MINMO_SLOW_CLIENT_S (how long a stream's writer may be
    held up by a caller that does not read before that session fails with RESOURCE_EXHAUSTED; default 5),
    MINMO_DEVICE (cpu, cuda, cuda:N; default cpu) and
    MINMO_DTYPE (float32, bfloat16, float16, or auto, the default: bfloat16 for the models the preset lists in
    `bfloat16_models` where the device multiplies it natively, else float32): where a model service builds its
    models and in which float type (`Placement`; a value this machine cannot run fails at start),
    MINMO_TORCH_THREADS (torch's CPU threads in this process; 0, the default: torch's own choice, one per core it
    sees), the TLS variables of `TlsSettings` and the telemetry variables of `TelemetrySettings`.

    MINMO_TORCH_THREADS matters wherever several service processes share cores (or a pod's CPU limit is below the
    node's core count, which is what torch sees): each process's OpenMP threads then spin waiting for one another,
    and one step can take many times its time alone. Give each process about its share of the cores.

    MINMO_MAX_SESSIONS is the replica's capacity in session slots: set it to what `minmo load --find-capacity`
    measured for this component on this machine kind (past it, new streams get RESOURCE_EXHAUSTED; the autoscaler
    scales on active sessions / capacity). MINMO_BATCH_MAX_SIZE (1: off) and MINMO_BATCH_WINDOW_MS: the local
    runtime's batching across sessions (model services). MINMO_STEADY_WAIT_MS (default 100; 0: no wait): the longest
    a reply's steady work (after its first audio) waits, per step, while another session's first-audio work runs in
    this process (local runtime; `minmo.runtime.local`)."""

    port: int
    host: str = "127.0.0.1"
    max_sessions: int = 64
    max_message_bytes: int = 4 * 1024 * 1024
    grace_s: float = 5.0
    model_config: str = "tiny"
    replica_id: str = ""
    runtime: str = "local"
    triton_url: str | None = None
    batch_max_size: int = 1
    batch_window_ms: float = 2.0
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    reflection: bool = False
    placement: Placement = CPU_FLOAT32
    slow_client_s: float = 5.0
    torch_threads: int = 0
    steady_wait_ms: float = 100.0

    def __post_init__(self) -> None:
        if self.steady_wait_ms < 0:
            raise SettingsError(f"MINMO_STEADY_WAIT_MS must be 0 or more, got {self.steady_wait_ms}")
        if self.torch_threads < 0:
            raise SettingsError(f"MINMO_TORCH_THREADS must be 0 (torch's default) or more, got {self.torch_threads}")

    @classmethod
    def from_env(cls, default_port: int, environ: Mapping[str, str] | None = None) -> ServerSettings:
        port = env_int("MINMO_PORT", default_port, environ)
        return cls(
            port=port,
            host=env_str("MINMO_HOST", "127.0.0.1", environ),
            max_sessions=env_int("MINMO_MAX_SESSIONS", 64, environ),
            max_message_bytes=env_int("MINMO_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, environ),
            grace_s=env_float("MINMO_GRACE_S", 5.0, environ),
            model_config=env_str("MINMO_CONFIG", "tiny", environ),
            replica_id=env_str("MINMO_REPLICA_ID", f"{os.uname().nodename}-{os.getpid()}", environ),
            runtime=env_str("MINMO_RUNTIME", "local", environ),
            triton_url=env_str("MINMO_TRITON_URL", "", environ) or None,
            batch_max_size=env_int("MINMO_BATCH_MAX_SIZE", 1, environ),
            batch_window_ms=env_float("MINMO_BATCH_WINDOW_MS", 2.0, environ),
            telemetry=TelemetrySettings.from_env(port, environ),
            tls=TlsSettings.from_env(environ),
            reflection=env_flag("MINMO_REFLECTION", False, environ),
            placement=placement_from_env(environ),
            slow_client_s=env_float("MINMO_SLOW_CLIENT_S", 5.0, environ),
            torch_threads=env_int("MINMO_TORCH_THREADS", 0, environ),
            steady_wait_ms=env_float("MINMO_STEADY_WAIT_MS", 100.0, environ),
        )


def placement_from_env(environ: Mapping[str, str] | None = None) -> Placement:
    """MINMO_DEVICE and MINMO_DTYPE, checked against this machine (no CUDA device: a clear error at start)."""
    try:
        return Placement(env_str("MINMO_DEVICE", "cpu", environ), env_str("MINMO_DTYPE", "auto", environ))
    except PlacementError as error:
        raise SettingsError(str(error)) from None
