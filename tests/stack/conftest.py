"""The five services in this test's event loop, talking real gRPC over loopback, with the real Redis.

Each service is started by its own `start()` (the same code `minmo serve` runs) on an ephemeral port;
duplex is pointed at the others by environment variables, as in a deployment.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from minmo.serving.server import ServiceHost
from minmo.v1 import conversation_pb2_grpc

MODEL_SERVICES = ("encoder", "llm", "voicelm", "vocoder")


@dataclass
class InProcessStack:
    hosts: dict[str, list[ServiceHost]] = field(default_factory=dict)
    resources: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    redis_url: str = ""

    def address(self, name: str, index: int = 0) -> str:
        return f"127.0.0.1:{self.hosts[name][index].port}"

    async def start_model_service(self, name: str, **env: str) -> ServiceHost:
        module = importlib.import_module(f"minmo.services.{name}.main")
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {"MINMO_PORT": "0", "MINMO_CONFIG": "tiny", **env}.items():
                patch.setenv(key, value)
            settings = getattr(module, _settings_class(module)).from_env()
        host = await module.start(settings)
        self.hosts.setdefault(name, []).append(host)
        return host

    async def start_duplex(self, **env: str) -> ServiceHost:
        module = importlib.import_module("minmo.services.duplex.main")
        peers = {
            f"MINMO_{name.upper()}_ADDR": ",".join(f"127.0.0.1:{host.port}" for host in self.hosts[name])
            for name in MODEL_SERVICES
        }
        variables = {"MINMO_PORT": "0", "MINMO_CONFIG": "tiny", "REDIS_URL": self.redis_url, **peers, **env}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in variables.items():
                patch.setenv(key, value)
            settings = module.DuplexSettings.from_env()
        host = await module.start(settings, self.resources)
        self.hosts.setdefault("duplex", []).append(host)
        return host

    def conversation(self, index: int = 0) -> tuple[grpc.aio.Channel, conversation_pb2_grpc.ConversationStub]:
        channel = grpc.aio.insecure_channel(self.address("duplex", index))
        self.resources.push_async_callback(channel.close)
        return channel, conversation_pb2_grpc.ConversationStub(channel)

    async def stop(self) -> None:
        for name in ("duplex", *MODEL_SERVICES):
            for host in self.hosts.get(name, []):
                with contextlib.suppress(Exception):
                    await host.stop()
        await self.resources.aclose()


def _settings_class(module) -> str:
    return next(name for name in dir(module) if name.endswith("Settings") and name != "ServerSettings")


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[InProcessStack]:
    running = InProcessStack(redis_url=redis_url)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def full_stack(stack: InProcessStack) -> InProcessStack:
    """One replica of every service, duplex last."""
    for name in MODEL_SERVICES:
        await stack.start_model_service(name)
    await stack.start_duplex()
    return stack
