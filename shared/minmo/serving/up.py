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

from minmo.serving.stack import run_stack
from minmo.session.embedded import EmbeddedRedis


def run_up(
    config: str, port: int, runtime: str = "local", triton_grpc_port: int = 8001, checkpoint: str | None = None
) -> int:
    """checkpoint: weights directory (`minmo convert` / training output), given to every service as MINMO_CHECKPOINT."""
    console = Console()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as resources:
        redis_url = os.environ.get("REDIS_URL") or resources.enter_context(EmbeddedRedis()).url
        extra_env = {}
        if runtime == "triton":
            triton_url = resources.enter_context(_triton(config, triton_grpc_port, console))
            extra_env = {"MINMO_RUNTIME": "triton", "MINMO_TRITON_URL": triton_url}
        if checkpoint:
            extra_env["MINMO_CHECKPOINT"] = checkpoint
        with console.status(f"starting the stack ({config}, {runtime} runtime)…"):
            stack = resources.enter_context(run_stack(config, port, redis_url, extra_env))
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
        console.print(f"try: minmo chat --server 127.0.0.1:{port} --wav some.wav    (Ctrl-C stops the stack)")
        stop.wait()
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
