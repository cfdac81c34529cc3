"""TLS for the front door and mTLS between services, from PEM files that may be rotated while serving.

Server side: grpc's dynamic server credentials ask `CertificateFiles.fetch` before each new handshake;
it answers a new configuration when a file's modification time or size changed (a cert-manager or
Kubernetes Secret rotation), else None (keep the current one), so a rotation needs no restart.
With a CA (`TlsSettings.mutual`), internal services require a client certificate signed by it; the
front door (duplex) serves TLS but authenticates its clients with API keys instead (minmo.serving.auth).

Client side: duplex's peer channels verify the peers against the CA and present duplex's own certificate.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from minmo.serving.settings import TlsSettings

log = logging.getLogger(__name__)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class CertificateFiles:
    """The service's certificate, key and CA files, re-read when they change."""

    def __init__(self, tls: TlsSettings, require_client_cert: bool) -> None:
        self.tls = tls
        self.require_client_cert = require_client_cert
        self._lock = threading.Lock()
        self._stamp = self._stamps()

    def _stamps(self) -> tuple:
        stamps = []
        for path in (self.tls.cert, self.tls.key, self.tls.ca):
            if path:
                with_stat = os.stat(path)
                stamps.append((with_stat.st_mtime_ns, with_stat.st_size))
        return tuple(stamps)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.tls.key), _read(self.tls.cert))], root_certificates=_read(self.tls.ca)
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's fetcher: a new configuration when the files changed since the last one, else None."""
        with self._lock:
            try:
                stamp = self._stamps()
                if stamp == self._stamp:
                    return None
                configuration = self.configuration()
            except (OSError, ValueError) as error:  # a half-written rotation: keep serving the old files
                log.warning("TLS files not reloaded (keeping the current ones): %s", error)
                return None
            self._stamp = stamp
            log.info("TLS certificate files changed: new handshakes use the new ones")
            return configuration

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(), self.fetch, require_client_authentication=self.require_client_cert
        )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials | None:
    """Credentials for a channel to a peer service: None without TLS; with mTLS this service's own certificate."""
    if not tls.enabled:
        return None
    if not tls.mutual:
        return grpc.ssl_channel_credentials()
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca), private_key=_read(tls.key), certificate_chain=_read(tls.cert)
    )
