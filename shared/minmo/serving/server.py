"""The gRPC server host every service runs in: message limits, health, reflection, graceful stop, status
codes (`StatusGuard`), TLS/mTLS from files and, at the front door, API keys.

Order of life (grpc's graceful-shutdown example): start serving with health NOT_SERVING, load and
warm the model, flip to SERVING; on SIGTERM/SIGINT flip to NOT_SERVING (so load balancers stop
sending new sessions), give in-flight streams `grace_s` to finish, then close clients and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from minmo.serving.auth import ApiKeyAuth, ApiKeys
from minmo.serving.errors import StatusGuard
from minmo.serving.settings import ServerSettings
from minmo.serving.tls import CertificateFiles
from minmo.telemetry import Telemetry

log = logging.getLogger(__name__)


class ServiceHost:
    """One grpc.aio server with health (and reflection when MINMO_REFLECTION=1) for the services registered on
    it, counting its failed RPCs and active sessions in the service's metrics; the telemetry closes after the
    last stream ends. An internal service (`front_door=False`) with mTLS settings refuses callers without a
    client certificate; the front door checks API keys instead when given `api_keys`."""

    def __init__(
        self,
        settings: ServerSettings,
        telemetry: Telemetry,
        front_door: bool = False,
        api_keys: ApiKeys | None = None,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.front_door = front_door
        limit = settings.max_message_bytes
        interceptors = [telemetry.error_counter(), StatusGuard(telemetry.service)]
        if api_keys is not None:
            interceptors.append(ApiKeyAuth(api_keys))
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # accept the keepalive pings our clients send on long-lived session streams
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health.SERVICE_NAME]
        self._closers: list[Callable[[], Awaitable[None]]] = [telemetry.close]
        self._servicers: list[object] = []
        self.port = 0
        telemetry.metrics.active_sessions.set_function(self.active_sessions)
        telemetry.metrics.session_capacity.set_function(self.session_capacity)

    def on_stop(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run `close` after the server stopped (clients and runtimes close after the last stream ends)."""
        self._closers.append(close)

    def add(self, register: Callable[[object, grpc.aio.Server], None], servicer: object, full_name: str) -> None:
        """Register a servicer, e.g. `add(add_AudioEncoderServicer_to_server, servicer, "minmo.v1.AudioEncoder")`."""
        register(servicer, self.server)
        self._service_names.append(full_name)
        self._servicers.append(servicer)

    def add_handler(self, handler: grpc.GenericRpcHandler, full_name: str, servicer: object) -> None:
        """Register a generic handler (a service with custom (de)serialisers) of `servicer` under its full name."""
        self.server.add_generic_rpc_handlers([handler])
        self._service_names.append(full_name)
        self._servicers.append(servicer)

    def active_sessions(self) -> int:
        """Streams the registered servicers are serving now (those that bound themselves with a SessionLimiter)."""
        return sum(servicer.limiter.active for servicer in self._servicers if hasattr(servicer, "limiter"))

    def session_capacity(self) -> int:
        """Session slots of the registered servicers: the autoscaler's denominator (active / capacity)."""
        return sum(servicer.limiter.limit for servicer in self._servicers if hasattr(servicer, "limiter"))

    async def start(self) -> int:
        """Bind and start serving (health says NOT_SERVING until `set_serving`); returns the bound port."""
        if self.settings.reflection:
            reflection.enable_server_reflection([*self._service_names, reflection.SERVICE_NAME], self.server)
        address = f"{self.settings.host}:{self.settings.port}"
        tls = self.settings.tls
        if tls.enabled:
            files = CertificateFiles(tls, require_client_cert=tls.mutual and not self.front_door)
            self.port = self.server.add_secure_port(address, files.server_credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.host}:{self.settings.port}")
        for name in ["", *self._service_names[1:]]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool = True) -> None:
        """SERVING (or, with False, NOT_SERVING again: e.g. duplex while a peer it needs is down)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._service_names[1:]]:
            await self.health.set(name, status)

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_s)
        for close in reversed(self._closers):
            await close()

    async def serve_until_signal(self) -> None:
        """Block until SIGTERM/SIGINT, then stop gracefully."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        log.info("shutting down: draining for up to %.1f s", self.settings.grace_s)
        await self.stop()


ADMITTED_METADATA = "minmo-admitted"  # initial metadata a limiter sends once it admitted a stream
RETRY_AFTER_METADATA = "retry-after-ms"  # trailing metadata of a refusal: when trying this replica again may succeed
RETRY_AFTER_MS = 1000  # about one turn: the time in which some session on a full replica usually ends a turn or leaves


class SessionLimiter:
    """Bounds concurrent sessions of one servicer at its capacity (MINMO_MAX_SESSIONS, the session slots a replica
    of this component serves within the latency SLO, as `minmo load --find-capacity` measured it).

    Past the bound a new stream gets RESOURCE_EXHAUSTED with a `retry-after-ms` hint in its trailing metadata, before
    the servicer reads anything; an admitted stream gets `minmo-admitted` initial metadata at once, so a caller knows
    where it landed before it sends work (duplex then tries the next replica of the hop). A bounded count, not a lock:
    admitted sessions run concurrently, and a refused one costs the admitted ones nothing.
    """

    def __init__(self, limit: int, what: str = "sessions") -> None:
        self.limit = limit
        self.what = what
        self.active = 0

    @contextlib.asynccontextmanager
    async def admit(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        if self.active >= self.limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this replica is serving its maximum of {self.limit} {self.what} (its capacity); "
                f"retry on another replica or in {RETRY_AFTER_MS} ms",
                trailing_metadata=((RETRY_AFTER_METADATA, str(RETRY_AFTER_MS)),),
            )
        self.active += 1
        try:
            await context.send_initial_metadata(((ADMITTED_METADATA, "1"),))
            yield
        finally:
            self.active -= 1
