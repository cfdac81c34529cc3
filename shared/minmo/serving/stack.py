"""`minmo up`: the whole stack on one machine — Redis (embedded unless REDIS_URL is set) and the five
services, each its own process, wired to each other by environment variables. Each service serves its
Prometheus metrics on its gRPC port + 100 (MINMO_METRICS_PORT).

Services start in dependency order (model services first, duplex last) and the stack waits for each
one's health check to say SERVING. Stopping sends SIGTERM in reverse order, so duplex drains its
sessions before the model services go away.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minmo.serving.settings import METRICS_PORT_OFFSET, TlsSettings
from minmo.serving.tls import channel_credentials

MODEL_SERVICES = ("encoder", "llm", "voicelm", "vocoder")
SERVICES = (*MODEL_SERVICES, "duplex")
STARTUP_TIMEOUT_S = 600.0  # nano's LLM de-quantises its GGUF weights for minutes on a busy 2-core machine
PEER_VARIABLES = {
    "encoder": "MINMO_ENCODER_ADDR",
    "llm": "MINMO_LLM_ADDR",
    "voicelm": "MINMO_VOICELM_ADDR",
    "vocoder": "MINMO_VOCODER_ADDR",
}


@dataclass
class StackProcess:
    name: str
    address: str
    metrics_url: str
    process: subprocess.Popen


@dataclass
class Stack:
    """Running processes of one stack; `addresses[name]` is where each service listens."""

    processes: list[StackProcess] = field(default_factory=list)

    @property
    def addresses(self) -> dict[str, str]:
        return {item.name: item.address for item in self.processes}

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every service at once (each drains its own streams), then kill what is still running after
        `timeout_s` in all: stopping takes as long as the slowest service, not the sum of them."""
        running = [item.process for item in self.processes if item.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            if process.poll() is None:
                process.kill()
                process.wait()


def service_ports(duplex_port: int) -> dict[str, int]:
    """duplex on the given port, the model services on the four ports after it."""
    return {"duplex": duplex_port} | {name: duplex_port + 1 + index for index, name in enumerate(MODEL_SERVICES)}


def start_service(
    name: str, port: int, env: dict[str, str], host: str = "127.0.0.1", log: IO[bytes] | None = None
) -> StackProcess:
    """Start one service process; its output (JSON log lines) goes to `log`, or to this terminal when None."""
    metrics_port = port + METRICS_PORT_OFFSET
    own = {"MINMO_PORT": str(port), "MINMO_HOST": host, "MINMO_METRICS_PORT": str(metrics_port)}
    child_env = os.environ | env | own
    process = subprocess.Popen(
        [sys.executable, "-m", f"minmo.services.{name}.main"], env=child_env, stdout=log, stderr=log
    )
    return StackProcess(name, f"{host}:{port}", f"http://{host}:{metrics_port}/metrics", process)


def wait_until_serving(
    address: str, process: subprocess.Popen, timeout_s: float = STARTUP_TIMEOUT_S, tls: TlsSettings | None = None
) -> None:
    """Poll grpc.health.v1 until SERVING (over mTLS with `tls`); fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    credentials = channel_credentials(tls) if tls is not None else None
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the service at {address} exited with code {process.returncode} while starting")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"the service at {address} was not SERVING after {timeout_s:.0f} s")


def shared_torch_threads(cores: int | None = None) -> int:
    """Torch threads per model service when the four share one machine's `cores` (default: this machine's): its
    share, at least one. More would have their OpenMP threads spin against each other (MINMO_TORCH_THREADS)."""
    return max(1, (cores or os.cpu_count() or 1) // len(MODEL_SERVICES))


@contextlib.contextmanager
def run_stack(
    config: str,
    duplex_port: int,
    redis_url: str,
    extra_env: dict[str, str] | None = None,
    log: IO[bytes] | None = None,
) -> Iterator[Stack]:
    """Start the five services against `redis_url`; yield the running stack; stop it on exit. The services' logs
    go to `log` (an open file) when given, else to this terminal. The model services share this machine's cores:
    unless told otherwise (MINMO_TORCH_THREADS here or in `extra_env`), each gets torch threads for its share."""
    ports = service_ports(duplex_port)
    threads = os.environ.get("MINMO_TORCH_THREADS") or str(shared_torch_threads())
    env = {"MINMO_CONFIG": config, "REDIS_URL": redis_url, "MINMO_TORCH_THREADS": threads} | (extra_env or {})
    env |= {PEER_VARIABLES[name]: f"127.0.0.1:{ports[name]}" for name in MODEL_SERVICES}
    tls = TlsSettings(env.get("MINMO_TLS_CERT"), env.get("MINMO_TLS_KEY"), env.get("MINMO_TLS_CA"))
    stack = Stack()
    try:
        for group in (MODEL_SERVICES, ("duplex",)):  # model services load in parallel, then the front door
            started = [start_service(name, ports[name], env, log=log) for name in group]
            stack.processes.extend(started)
            for item in started:
                wait_until_serving(item.address, item.process, tls=tls)
        yield stack
    finally:
        stack.stop()
