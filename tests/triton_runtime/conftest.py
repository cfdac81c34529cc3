"""A real tritonserver (the nvidia-pytriton wheel's) on an exported repository, for the Triton tests."""

from __future__ import annotations

import contextlib
import platform
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from minmo.model.config import MinMoConfig
from minmo.triton.repository import export_repository
from minmo.triton.server import LocalTritonServer

MIN_GLIBC = (2, 35)  # the wheel is manylinux_2_35
EXIT_TIMEOUT_S = 3  # nothing is in flight at teardown; don't wait out a stuck unload (see LocalTritonServer.stop)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def skip_reason() -> str | None:
    """Why the wheel's server cannot run here, if it cannot: it is built for x86-64 Linux with glibc >= 2.35.
    Anywhere else a missing wheel is a broken install (scripts/setup.sh), and the tests fail instead."""
    system, machine = platform.system(), platform.machine()
    if system != "Linux" or machine != "x86_64":
        return f"the nvidia-pytriton tritonserver is built for x86-64 Linux, not {system} {machine}"
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(map(int, version.split("."))) < MIN_GLIBC:
        return f"the nvidia-pytriton tritonserver needs glibc >= 2.35, this is {libc} {version}"
    return None


@contextlib.contextmanager
def running_triton(cfg: MinMoConfig, root: Path, port: int | None = None) -> Iterator[LocalTritonServer]:
    """Export `cfg`'s repository under `root` and serve it until the block ends (skips where it can't run)."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    repository = root / "repository"
    if not repository.exists():
        export_repository(cfg, repository)
    log_path = root / "server.log"
    server = LocalTritonServer(repository, port or free_port(), log_path=log_path, exit_timeout_s=EXIT_TIMEOUT_S)
    with server as running:
        yield running


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTritonServer]:
    """One server on tiny's repository for every Triton test: starting one takes ~40 s on 2 cores. A test that
    restarts it leaves it running."""
    from minmo.model.config import load_config

    with running_triton(load_config("tiny"), tmp_path_factory.mktemp("triton")) as running:
        yield running
