"""Run a rendered release's containers as local processes, inside the namespaces `test_chart_run` gives it.

Started by the test as `unshare --mount --net --fork -- python run_pods.py PLAN RESULT`, so it runs in a private
network namespace (its own loopback: the chart's fixed ports cannot collide with anything else on the machine)
and a private mount namespace, where it bind-mounts a hosts file over /etc/hosts that maps every Service name of
the release to its own loopback address. Name resolution is then the system's own (glibc for Redis and the
client, gRPC's DNS resolver for `dns:///` targets), not a rewrite of the chart's values.

The plan (JSON, written by the test): `hosts` {name: address}; `stages`, lists of servers [{name, argv, env,
ready, grace_s}] where each stage starts together and is waited for until every server is ready (`ready`: "grpc://HOST:PORT"
for grpc.health.v1 SERVING, or "tcp://HOST:PORT" for an accepted connection); `clients` [{name, argv, env}] run
one after the other once all servers are ready. The result (JSON): how each name resolved,
and each client's exit code and output. Servers get SIGTERM at the end, as the kubelet sends it, and SIGKILL when
they outlive their pod's terminationGracePeriodSeconds (`grace_s`); their exit codes and stop times are reported.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from minmo.client.health import HealthQuery, check_health

START_TIMEOUT_S = 240.0  # generous: five processes import torch at once on two cores
CLIENT_TIMEOUT_S = 120.0
POLL_S = 0.25


def main(plan_path: str, result_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    hosts_file = Path(result_path).with_name("hosts")
    lines = [Path("/etc/hosts").read_text()] + [f"{address}\t{name}" for name, address in plan["hosts"].items()]
    hosts_file.write_text("\n".join(lines) + "\n")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "--bind", str(hosts_file), "/etc/hosts"], check=True)
    result: dict = {"resolved": {name: socket.gethostbyname(name) for name in plan["hosts"]}, "clients": []}
    servers: list[tuple[dict, subprocess.Popen]] = []
    try:
        for stage in plan["stages"]:
            started = []
            for server in stage:
                log = open(Path(result_path).with_name(f"{server['name']}.log"), "w")  # noqa: SIM115 (kept by the child)
                process = subprocess.Popen(server["argv"], env=server["env"], stdout=log, stderr=subprocess.STDOUT)
                servers.append((server, process))
                started.append((server, process))
            for server, process in started:
                _wait_until_ready(server["name"], server["ready"], process)
        for client in plan["clients"]:
            done = subprocess.run(
                client["argv"], env=client["env"], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
            )
            result["clients"].append(
                {"name": client["name"], "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
            )
    finally:
        stopping = time.monotonic()
        for _, process in servers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        result["stopped"] = _stop_all(servers, stopping)
        Path(result_path).write_text(json.dumps(result))
    return 0


def _wait_until_ready(name: str, ready: str, process: subprocess.Popen) -> None:
    scheme, target = ready.split("://", 1)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before it was ready")
        if _is_ready(scheme, target):
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"{name} was not ready within {START_TIMEOUT_S:.0f} s")


def _is_ready(scheme: str, target: str) -> bool:
    if scheme == "grpc":
        return check_health(HealthQuery(target, timeout_s=1.0)) == "SERVING"
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        return False
    return True


def _stop_all(servers: list[tuple[dict, subprocess.Popen]], sigterm_at: float) -> dict[str, dict]:
    """Each server's exit code and seconds from SIGTERM to exit; SIGKILL (exit code -9) once its grace is over."""
    stopped: dict[str, dict] = {}
    while len(stopped) < len(servers):
        now = time.monotonic()
        for server, process in servers:
            if server["name"] in stopped:
                continue
            if process.poll() is None and now > sigterm_at + server["grace_s"]:
                process.kill()
                process.wait()
            if process.poll() is not None:
                stopped[server["name"]] = {"exit_code": process.returncode, "seconds": round(now - sigterm_at, 1)}
        time.sleep(POLL_S)
    return stopped


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
