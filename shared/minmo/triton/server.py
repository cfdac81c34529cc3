"""Run the `tritonserver` binary of the nvidia-pytriton wheel on a model repository (tests, `minmo triton serve`).

The wheel's python backend works from a plain repository once three things are arranged, which this module does:
- the stub built for the running Python goes next to `libtriton_python.so` in a backend directory of our own
  (the wheel keeps one stub per Python version aside, and its installed files stay untouched);
- this interpreter's libpython goes on LD_LIBRARY_PATH (the stub links it dynamically), after the wheel's libraries;
- this interpreter's directory goes first on PATH: the stub embeds Python, which derives its prefix from `python3`
  on PATH, so model.py sees this virtual environment — its torch and its (editable) `minmo` — with no PYTHONPATH.
In Kubernetes the official Triton image serves the same repository with its own server and stub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

READY_POLL_S = 0.2
LOG_TAIL_LINES = 40
KILL_MARGIN_S = 5.0  # past Triton's own exit timeout, before SIGKILL


@dataclass(frozen=True)
class TritonDistribution:
    """Where the wheel keeps the server, its libraries, the python backend and this Python's stub."""

    binary: Path
    libraries: Path
    python_backend: Path
    stub: Path

    @classmethod
    def find(cls) -> TritonDistribution:
        """The installed wheel's files; FileNotFoundError says what is missing (wheel, or a stub for this Python)."""
        package = importlib.util.find_spec("pytriton")  # located, not imported: its own imports need numpy 1
        if package is None or not package.submodule_search_locations:
            raise FileNotFoundError("tritonserver needs the nvidia-pytriton wheel (scripts/setup.sh installs it)")
        root = Path(package.submodule_search_locations[0]) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        found = cls(
            binary=root / "bin" / "tritonserver",
            libraries=root.parent.parent / "nvidia_pytriton.libs",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        )
        for path in (found.binary, found.libraries, found.python_backend, found.stub):
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: nvidia-pytriton has no tritonserver for Python {version}")
        return found

    def prepare_backends(self, directory: Path) -> Path:
        """A backend directory whose python backend has this Python's stub; returns it for --backend-directory."""
        python = directory / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in (*self.python_backend.glob("*.so"), *self.python_backend.glob("*.py"), self.stub):
            shutil.copy2(source, python / source.name)
        return directory

    def environment(self) -> dict[str, str]:
        """This process's environment plus what the server and the stub need to find their libraries and Python."""
        env = dict(os.environ)
        libraries = [str(self.libraries), sysconfig.get_config_var("LIBDIR"), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(part for part in libraries if part)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env


class LocalTritonServer:
    """One tritonserver process serving `repository` over gRPC; `start` returns once every model is ready."""

    def __init__(
        self,
        repository: Path,
        grpc_port: int,
        host: str = "127.0.0.1",
        metrics_port: int | None = None,
        log_path: Path | None = None,
        exit_timeout_s: int = 30,
    ) -> None:
        self.repository = repository.resolve()
        self.grpc_port = grpc_port
        self.host = host
        self.metrics_port = metrics_port
        self.log_path = log_path  # None: the server logs to this process's stdout and stderr
        self.exit_timeout_s = exit_timeout_s  # how long Triton lets in-flight requests and model unloads finish
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where a client connects (loopback when the server listens on every address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{host}:{self.grpc_port}"

    def start(self, timeout_s: float = 180.0) -> None:
        distribution = TritonDistribution.find()
        self._workdir = Path(tempfile.mkdtemp(prefix="minmo-triton-"))
        backends = distribution.prepare_backends(self._workdir / "backends")
        log = self.log_path.open("ab") if self.log_path is not None else None
        self._process = subprocess.Popen(
            [str(distribution.binary), *self._arguments(backends)],
            env=distribution.environment(),
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
        )
        if log is not None:
            log.close()  # the child has its own descriptor
        self._wait_ready(timeout_s)

    def wait(self) -> int:
        """Block until the server exits (`minmo triton serve`); returns its exit status."""
        assert self._process is not None, "start() first"
        return self._process.wait()

    def stop(self) -> None:
        """SIGTERM (Triton drains in-flight requests, then unloads), SIGKILL if it overstays its exit timeout;
        idempotent. A decoupled python model now and then never confirms its unload in Triton 2.51, and Triton
        then waits out the whole exit timeout before it ends the stub."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(self.exit_timeout_s + KILL_MARGIN_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> LocalTritonServer:
        self.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _arguments(self, backends: Path) -> list[str]:
        arguments = [
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-http=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--allow-metrics={'true' if self.metrics_port is not None else 'false'}",
        ]
        if self.metrics_port is not None:
            arguments.append(f"--metrics-port={self.metrics_port}")
        return arguments

    def _wait_ready(self, timeout_s: float) -> None:
        """Poll gRPC readiness (ready = every model loaded and warmed up); a server that exits or never gets
        ready is stopped and reported with the end of its log."""
        import tritonclient.grpc
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + timeout_s
        with tritonclient.grpc.InferenceServerClient(self.url) as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    status = self._process.returncode
                    self.stop()
                    raise RuntimeError(f"tritonserver exited with status {status} while starting\n{self.log_tail()}")
                try:
                    if client.is_server_ready():
                        return
                except InferenceServerException:  # not listening yet
                    pass
                time.sleep(READY_POLL_S)
        self.stop()
        raise TimeoutError(f"tritonserver was not ready within {timeout_s:.0f} s\n{self.log_tail()}")
