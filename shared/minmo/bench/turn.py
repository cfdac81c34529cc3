"""`minmo bench turn`: end of speech -> first audio, in-process pipeline vs the five services, one run.

Both sides get the same synthetic utterance. In-process, the clock starts when the last input chunk
has been fed (the encoder flush, the LLM's last chunk and the whole response follow). Through the
services, it starts when duplex confirms the end of speech (USER_SPEECH_STOPPED) — the same point in
the turn, after which the same work follows plus four network hops. The client streams at real-time
pace, as a microphone does, so no backlog of unprocessed audio inflates the services side. Each
LatencyReport splits every hop's share into the hop's own time and what the wire and queues added.

`run_first_chunk_bench` measures both sides again with token2wav's first chunk set to other lengths (the preset
written to a JSON config with only `flow.first_chunk_tokens` changed, which every service loads), so a change of
the first chunk (25 + 3 tokens before MinMo's 15 + 3) shows its own share of a latency gain in the same run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minmo.audio.synthetic import SAMPLE_RATE, utterance
from minmo.client.chat import ChatRequest, run_chat
from minmo.client.wav import InputAudio
from minmo.model.config import load_config
from minmo.model.pipeline import MinMoPipeline
from minmo.serving.settings import METRICS_PORT_OFFSET
from minmo.serving.stack import run_stack
from minmo.session.embedded import EmbeddedRedis
from minmo.v1 import conversation_pb2

CHUNK_SAMPLES = 1600  # 100 ms at 16 kHz, as clients send it


@dataclass
class BenchResult:
    in_process_ms: list[float]
    services_ms: list[float]
    hops: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # hop -> compute/network -> ms
    log_path: Path | None = None  # where the services' JSON logs went (kept off the terminal and its table)

    @property
    def ratio(self) -> float:
        return statistics.median(self.services_ms) / statistics.median(self.in_process_ms)


def bench_in_process(config: str, runs: int, seed: int) -> list[float]:
    pipeline = MinMoPipeline(load_config(config))
    pcm = torch.from_numpy(utterance(seed=seed))
    pipeline.run_turn(pcm.split(CHUNK_SAMPLES))  # warm-up
    return [pipeline.run_turn(pcm.split(CHUNK_SAMPLES)).first_audio_ms for _ in range(runs)]


def service_log_path() -> Path:
    """A fresh file for the services' JSON logs during a benchmark, so they do not flood the terminal."""
    with tempfile.NamedTemporaryFile(prefix="minmo-bench-services-", suffix=".log", delete=False) as file:
        return Path(file.name)


def bench_services(
    config: str, runs: int, seed: int, extra_env: dict[str, str] | None = None, log_path: Path | None = None
) -> tuple[list[float], dict]:
    """First-audio times of `runs` turns through the five services; their logs are appended to `log_path`."""
    log_path = log_path or service_log_path()
    reports: list[conversation_pb2.LatencyReport] = []

    def keep_report(event: conversation_pb2.ServerEvent) -> None:
        if event.HasField("latency_report"):
            reports.append(event.latency_report)

    request = ChatRequest(audio=InputAudio(utterance(seed=seed), SAMPLE_RATE), realtime=True, timeout_s=300)
    with (
        log_path.open("ab") as log,
        EmbeddedRedis() as redis_server,
        run_stack(config, free_port_block(), redis_server.url, extra_env, log=log) as stack,
    ):
        target = stack.addresses["duplex"]
        for run in range(runs + 1):  # the first turn warms the services up
            result = asyncio.run(run_chat(target, request, keep_report if run else None))
            if result.problems():
                raise RuntimeError("; ".join(result.problems()))
    hops: dict[str, dict[str, list[float]]] = {}
    for report in reports:
        for hop in report.hops:
            hops.setdefault(hop.hop, {"compute": [], "network": []})
            hops[hop.hop]["compute"].append(hop.compute_ms)
            hops[hop.hop]["network"].append(hop.network_ms)
    return [report.first_audio_ms for report in reports if report.HasField("first_audio_ms")], hops


def run_bench(config: str, runs: int, seed: int = 0) -> BenchResult:
    in_process = bench_in_process(config, runs, seed)
    log_path = service_log_path()
    services, hops = bench_services(config, runs, seed, log_path=log_path)
    return BenchResult(in_process, services, hops, log_path)


def run_first_chunk_bench(
    config: str, runs: int, first_chunk_tokens: list[int], seed: int = 0
) -> dict[int, BenchResult]:
    """`run_bench` with the first chunk set to each of `first_chunk_tokens` long (the config otherwise the same)."""
    cfg = load_config(config)
    results = {}
    with tempfile.TemporaryDirectory(prefix="minmo-bench-") as folder:
        for tokens in first_chunk_tokens:
            variant = dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, first_chunk_tokens=tokens))
            path = Path(folder) / f"{cfg.name}-first-chunk-{tokens}.json"
            path.write_text(variant.to_json())
            results[tokens] = run_bench(str(path), runs, seed)
    return results


def free_port_block(size: int = 5) -> int:
    """A port p with p..p+size-1 free now, and the same block + 100 (the stack binds duplex at p and the services
    after it, and their metrics 100 ports up)."""
    offsets = [*range(size), *(METRICS_PORT_OFFSET + offset for offset in range(size))]
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + offsets[-1] < 65536 and all(_is_free(base + offset) for offset in offsets):
            return base
    raise RuntimeError("found no block of free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
