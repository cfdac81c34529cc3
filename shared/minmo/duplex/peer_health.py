"""Duplex is only as healthy as the services behind it: SERVING while every peer says SERVING, else NOT_SERVING.

Without this, a duplex whose peers are all down still answers its health checks with SERVING, a load
balancer keeps sending it sessions, and every one of them fails at its first turn ("llm stream lost").
The watch asks each peer's grpc.health.v1 every `interval_s` over the channels duplex already uses, and
flips the front door's own status when the set of missing peers changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)
CHECK_INTERVAL_S = 1.0
CHECK_TIMEOUT_S = 1.0


class PeerHealthWatch:
    """Polls the peers' health and calls `set_serving(True/False)` whenever the verdict changes."""

    def __init__(
        self,
        channels: Mapping[str, grpc.aio.Channel],
        set_serving: Callable[[bool], Awaitable[None]],
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.stubs = {name: health_pb2_grpc.HealthStub(channel) for name, channel in channels.items()}
        self.set_serving = set_serving
        self.interval_s = interval_s
        self.down: list[str] | None = None  # peers not SERVING at the last check; None before the first
        self._task: asyncio.Task | None = None

    async def check(self) -> list[str]:
        """Ask every peer once; apply the verdict if it changed; return the peers that are not SERVING."""
        answers = await asyncio.gather(*(self._status(stub) for stub in self.stubs.values()))
        down = [f"{name} ({status})" for name, status in zip(self.stubs, answers, strict=True) if status != "SERVING"]
        if down != self.down:
            if down:
                log.warning("peers not serving: %s; duplex health is NOT_SERVING", ", ".join(down))
            elif self.down is not None:
                log.info("every peer is serving again; duplex health is SERVING")
            await self.set_serving(not down)
            self.down = down
        return down

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="peer-health-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    @staticmethod
    async def _status(stub: health_pb2_grpc.HealthStub) -> str:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
