"""`minmo up`: Redis + the five services on this machine, until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from rich.console import Console
from rich.table import Table

from minmo.serving.stack import run_stack
from minmo.session.embedded import EmbeddedRedis


def run_up(config: str, port: int) -> int:
    console = Console()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as resources:
        redis_url = os.environ.get("REDIS_URL") or resources.enter_context(EmbeddedRedis()).url
        with console.status(f"starting the stack ({config})…"):
            stack = resources.enter_context(run_stack(config, port, redis_url))
        table = Table(title=f"MinMo is up (config {config})")
        table.add_column("service")
        table.add_column("endpoint")
        table.add_column("metrics")
        for item in stack.processes:
            public = "  ← public Conversation API" if item.name == "duplex" else ""
            table.add_row(item.name, f"grpc://{item.address}{public}", item.metrics_url)
        table.add_row("redis", redis_url, "")
        console.print(table)
        console.print(f"try: minmo chat --server 127.0.0.1:{port} --wav some.wav    (Ctrl-C stops the stack)")
        stop.wait()
        console.print("stopping…")
    return 0
