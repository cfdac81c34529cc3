"""`minmo health`: ask a service's grpc.health.v1 whether it serves, over plaintext or TLS.

Kubernetes' native gRPC probes cannot verify a certificate, so with TLS on the chart's probes exec this command in
the container with the mounted certificate files. Exit 0 when the service says SERVING, 1 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class HealthQuery:
    """What to ask: `service` "" is the whole server; the TLS files are PEM paths (client cert and key: mTLS)."""

    target: str
    service: str = ""
    timeout_s: float = 5.0
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


def open_health_channel(query: HealthQuery) -> grpc.Channel:
    if not query.uses_tls:
        return grpc.insecure_channel(query.target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=query.tls_ca.read_bytes() if query.tls_ca else None,
        private_key=query.tls_key.read_bytes() if query.tls_key else None,
        certificate_chain=query.tls_cert.read_bytes() if query.tls_cert else None,
    )
    options = [("grpc.ssl_target_name_override", query.tls_server_name)] if query.tls_server_name else []
    return grpc.secure_channel(query.target, credentials, options=options)


def check_health(query: HealthQuery) -> str:
    """The serving status name (SERVING, NOT_SERVING, SERVICE_UNKNOWN, ...) or UNREACHABLE with the gRPC reason."""
    with open_health_channel(query) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=query.service), timeout=query.timeout_s)
        except grpc.RpcError as error:
            return f"UNREACHABLE ({error.code().name}: {error.details()})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
