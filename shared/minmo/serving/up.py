"""`minmo up`: Redis + the five services on this machine, until Ctrl-C.

With `--runtime triton` the model services call Triton instead of running PyTorch themselves: the
stack exports the model repository and starts the tritonserver of the nvidia-pytriton wheel on the
given port, unless a server already answers there (then it is used as it is).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from minmo.model.config import load_config
from minmo.serving.certs import make_dev_pki
from minmo.serving.settings import METRICS_PORT_OFFSET
from minmo.serving.stack import run_stack, service_ports
from minmo.session.embedded import EmbeddedRedis

LOCALHOST = "127.0.0.1"
WATCH_INTERVAL_S = 1.0  # how often the running stack checks that every service process is still alive
EXIT_FAILED = 1


def preflight(config: str, port: int) -> list[str]:
    """What would make the stack fail to start, one line each, checked before anything starts: the config, and
    every gRPC and metrics port the stack needs (a port taken by an old stack would answer its health checks)."""
    problems = []
    try:
        load_config(config)
    except (ValueError, TypeError, OSError) as error:
        problems.append(f"config {config!r}: {error}")
    for name, grpc_port in service_ports(port).items():
        for kind, number in (("gRPC", grpc_port), ("metrics", grpc_port + METRICS_PORT_OFFSET)):
            if not port_is_free(number):
                problems.append(
                    f"port {number} ({name} {kind}) is in use: stop what listens there (an old `minmo up`?) "
                    f"or choose other ports with --port (the stack uses --port .. --port+4, and +{METRICS_PORT_OFFSET})"
                )
    return problems


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True when a server could listen on host:port now (a listening socket there makes bind fail)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to serve on
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run_up(
    config: str,
    port: int,
    runtime: str = "local",
    triton_grpc_port: int = 8001,
    tls: bool = False,
    checkpoint: str | None = None,
) -> int:
    """checkpoint: weights directory (`minmo convert` / training output), given to every service as MINMO_CHECKPOINT."""
    console = Console()
    problems = preflight(config, port)
    for problem in problems:
        console.print(f"error: {problem}", style="bold red", markup=False, soft_wrap=True)
    if problems:
        return EXIT_FAILED
    try:
        return _run(console, config, port, runtime, triton_grpc_port, tls, checkpoint)
    except (RuntimeError, TimeoutError) as error:  # a service died or never became SERVING while starting
        console.print(f"error: the stack did not start: {error}", style="bold red", markup=False, soft_wrap=True)
        return EXIT_FAILED


def _run(
    console: Console, config: str, port: int, runtime: str, triton_grpc_port: int, tls: bool, checkpoint: str | None
) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as resources:
        redis_url = os.environ.get("REDIS_URL") or resources.enter_context(EmbeddedRedis()).url
        extra_env = {}
        if runtime == "triton":
            triton_url = resources.enter_context(_triton(config, triton_grpc_port, console))
            extra_env = {"MINMO_RUNTIME": "triton", "MINMO_TRITON_URL": triton_url}
        pki = None
        if tls:  # a throwaway CA: TLS at the front door, mTLS between the services
            pki = make_dev_pki(Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="minmo-tls-"))))
            extra_env |= pki.env()
        if checkpoint:
            extra_env["MINMO_CHECKPOINT"] = checkpoint
        with console.status(f"starting the stack ({config}, {runtime} runtime)…"):
            stack = resources.enter_context(run_stack(config, port, redis_url, extra_env))
        dead = [item.name for item in stack.processes if item.process.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited right after starting")
        table = Table(title=f"MinMo is up (config {config})")
        table.add_column("service")
        table.add_column("endpoint")
        table.add_column("metrics")
        for item in stack.processes:
            public = "  ← public Conversation API" if item.name == "duplex" else ""
            table.add_row(item.name, f"grpc://{item.address}{public}", item.metrics_url)
        table.add_row("redis", redis_url, "")
        if runtime == "triton":
            table.add_row("triton", f"grpc://{extra_env['MINMO_TRITON_URL']}", "")
        console.print(table)
        tls_flag = f" --tls-ca {pki.ca}" if pki is not None else ""
        console.print(f"try: minmo chat --server 127.0.0.1:{port}{tls_flag} --wav some.wav    (Ctrl-C stops the stack)")
        while not stop.wait(WATCH_INTERVAL_S):
            dead = [item for item in stack.processes if item.process.poll() is not None]
            if dead:
                exited = ", ".join(f"{item.name} (exit code {item.process.returncode})" for item in dead)
                console.print(f"error: {exited} stopped; stopping the stack", style="bold red", markup=False)
                return EXIT_FAILED
        console.print("stopping…")
    return 0


@contextlib.contextmanager
def _triton(config: str, grpc_port: int, console: Console):
    """The Triton gRPC address to use: one already answering on the port, or one started here."""
    url = f"127.0.0.1:{grpc_port}"
    if _answers(url):
        console.print(f"using the Triton server that answers on {url}")
        yield url
        return
    from minmo.model.config import load_config
    from minmo.triton.repository import export_repository
    from minmo.triton.server import LocalTritonServer

    with tempfile.TemporaryDirectory(prefix="minmo-triton-repo-") as directory:
        repository = Path(directory)
        export_repository(load_config(config), repository)
        server = LocalTritonServer(repository, grpc_port, log_path=repository / "tritonserver.log")
        with console.status(f"starting tritonserver on {url}…"):
            server.start()
        try:
            yield server.url
        finally:
            server.stop()


def _answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, int(port))) == 0
