"""A newcomer's first ten minutes: every mistake gets one clear line and a non-zero exit, never a traceback,
and the stack says what it is (health, readiness, why a reply ended)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from minmo.api.speech_tokens import split_speech_tokens
from minmo.bench.turn import free_port_block
from minmo.cli import app
from minmo.client.chat import NO_SPEECH_WAIT_S, ChatRequest, run_chat
from minmo.client.wav import InputAudio
from minmo.model.config import load_config
from minmo.serving.stack import wait_until_serving

MINMO = [sys.executable, "-m", "minmo.cli"]
FAST_FAIL_S = 20.0  # a refused start: the time to import the CLI, nothing loaded


def _minmo(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*MINMO, *args], capture_output=True, text=True, timeout=timeout_s)


def _one_clear_line(result: subprocess.CompletedProcess, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert expected in output, output


def test_up_with_an_unknown_config_fails_at_once():
    start = time.monotonic()
    result = _minmo("up", "--config", "doesnotexist", "--port", str(free_port_block()))
    assert time.monotonic() - start < FAST_FAIL_S
    _one_clear_line(result, "unknown config 'doesnotexist'")
    assert "MinMo is up" not in result.stdout


@pytest.mark.parametrize("offset", [1, 100 + 4])  # a model service's gRPC port; the vocoder's metrics port
def test_up_with_a_port_taken_says_which_and_starts_nothing(offset):
    base = free_port_block()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + offset))
        squatter.listen()
        result = _minmo("up", "--config", "tiny", "--port", str(base))
    _one_clear_line(result, f"port {base + offset}")
    assert "in use" in result.stdout and "MinMo is up" not in result.stdout


STACK_STOP_S = 60  # the other four services drain at once (Stack.stop: 15 s in all), more on a loaded machine


def test_up_stops_with_one_line_when_a_service_dies():
    port = free_port_block()
    up = subprocess.Popen([*MINMO, "up", "--config", "tiny", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        wait_until_serving(f"127.0.0.1:{port}", up, timeout_s=240)
        started = _read_until(up, "MinMo is up")  # duplex serves a moment before `up` has checked every service
        vocoder = next(pid for pid in _children(up.pid) if "minmo.services.vocoder" in _cmdline(pid))
        os.kill(vocoder, signal.SIGKILL)
        out, _ = up.communicate(timeout=STACK_STOP_S)
        out = started + out
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.communicate(timeout=60)
    assert up.returncode == 1, out
    assert "vocoder (exit code -9) stopped; stopping the stack" in out


def _read_until(process: subprocess.Popen, marker: str) -> str:
    """What `process` printed up to and including the line with `marker` (all of it, if it exits first)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            break
    return "".join(lines)


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_serve_with_its_metrics_port_taken_is_one_line():
    base = free_port_block()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 100))
        squatter.listen()
        result = _minmo("serve", "vocoder", "--port", str(base), "--config", "tiny", timeout_s=300)
    _one_clear_line(result, "vocoder did not start")
    assert "Address already in use" in result.stderr


def test_chat_with_a_file_that_is_not_audio(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("remember the milk\n")
    result = _minmo("chat", "--server", "127.0.0.1:1", "--wav", str(notes), "--json")
    _one_clear_line(result, "is not an audio file")
    assert result.returncode == 2
    assert "not an audio file" in json.loads(result.stdout)["error"]


def test_chat_without_a_server_waits_its_timeout_then_says_so_in_json():
    port = free_port_block()
    result = _minmo("chat", "--server", f"127.0.0.1:{port}", "--text", "hello", "--json", "--timeout", "2")
    _one_clear_line(result, "no MinMo server answers")
    summary = json.loads(result.stdout)
    assert summary["turns"] == [] and "minmo up" in summary["error"]


def test_chat_says_it_is_waiting_for_the_server():
    port = free_port_block()
    result = _minmo("chat", "--server", f"127.0.0.1:{port}", "--text", "hello", "--timeout", "5")
    _one_clear_line(result, "no MinMo server answers")
    assert f"waiting up to 5 s for the server at 127.0.0.1:{port}" in result.stderr


def test_model_help_says_what_it_has():
    result = CliRunner().invoke(app, ["model", "--help"])
    assert result.exit_code == 0 and "params" in result.output and "config" in result.output
    assert "run the model" not in result.output


def test_a_json_config_from_model_config_round_trips(tmp_path):
    """The README's recipe: print a preset as JSON, edit it, give the file to --config."""
    result = CliRunner().invoke(app, ["model", "config", "--config", "tiny"])
    edited = json.loads(result.stdout) | {"max_response_tokens": 48}
    path = tmp_path / "my-config.json"
    path.write_text(json.dumps(edited))
    assert load_config(str(path)) == dataclasses.replace(load_config("tiny"), max_response_tokens=48)


def test_speech_tokens_split_into_bounded_consecutive_messages():
    messages = split_speech_tokens(list(range(975)), first_index=30, size=75)
    assert [len(m.ids) for m in messages] == [75] * 13
    assert [m.first_index for m in messages] == [30 + 75 * i for i in range(13)]
    assert [i for m in messages for i in m.ids] == list(range(975))


async def test_silent_audio_is_no_speech_not_a_timeout(full_stack):
    silence = InputAudio(np.zeros(16000, dtype=np.float32), 16000)
    start = time.monotonic()
    result = await run_chat(full_stack.address("duplex"), ChatRequest(audio=silence, realtime=False, timeout_s=60))
    assert time.monotonic() - start < NO_SPEECH_WAIT_S + 10
    assert result.no_speech and not result.timed_out
    assert result.problems()[0].startswith("no speech detected")
    assert result.to_json()["error"].startswith("no speech detected")


async def test_chat_started_before_the_server_waits_for_it(stack):
    port = free_port_block()
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name)
    request = ChatRequest(text="hello", timeout_s=120)
    chat = asyncio.create_task(run_chat(f"127.0.0.1:{port}", request))
    await asyncio.sleep(1.0)  # the client is already waiting when duplex starts
    await stack.start_duplex(MINMO_PORT=str(port))
    result = await chat
    assert result.problems() == [] and result.turns[0].end_reason in ("COMPLETED", "MAX_TOKENS")


async def test_a_reply_cut_at_the_length_cap_says_so(stack):
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name)
    await stack.start_duplex(MINMO_MAX_RESPONSE_TOKENS="3")
    result = await run_chat(stack.address("duplex"), ChatRequest(text="tell me a long story", timeout_s=120))
    [turn] = result.turns
    assert result.problems() == []
    assert turn.end_reason == "MAX_TOKENS" and result.to_json()["turns"][0]["end_reason"] == "MAX_TOKENS"


async def test_duplex_is_not_serving_while_a_peer_is_down(full_stack):
    async def duplex_status() -> int:
        async with grpc.aio.insecure_channel(full_stack.address("duplex")) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return reply.status

    assert await duplex_status() == health_pb2.HealthCheckResponse.SERVING
    await full_stack.hosts["vocoder"][0].stop()
    async with asyncio.timeout(15):
        while await duplex_status() != health_pb2.HealthCheckResponse.NOT_SERVING:
            await asyncio.sleep(0.2)

