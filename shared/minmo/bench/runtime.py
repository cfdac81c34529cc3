"""`minmo bench runtime`: the in-process runtime vs Triton, in one run.

1. Per call: the same encoder chunk (0.32 s of audio, on one stream whose state stays in the runtime) through
   `LocalRuntime` and through `TritonRuntime` against a local tritonserver, called one after another.
2. Under load: concurrent encoder chunks of many streams, and the batch sizes Triton's statistics say it executed.
3. End of speech -> first audio: the five services (separate processes) on each runtime, the same
   synthetic utterance streamed at real-time pace, as `minmo bench turn` does.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import tritonclient.grpc.aio

from minmo.audio.synthetic import utterance
from minmo.bench.turn import bench_services, free_port_block, service_log_path
from minmo.model.config import load_config
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.runtime.factory import build_local_runtime
from minmo.runtime.triton import TritonRuntime
from minmo.triton.repository import export_repository
from minmo.triton.server import LocalTritonServer

CHUNK_SAMPLES = 5120  # 0.32 s at 16 kHz: two encoder chunks
CONCURRENT_CHUNKS = 32


@dataclass
class RuntimeBench:
    local_call_ms: list[float]
    triton_call_ms: list[float]
    batch_sizes: dict[int, int]  # executed batch size -> executions, under concurrent load
    local_first_audio_ms: list[float]
    triton_first_audio_ms: list[float]


async def time_calls(runtime: ModelRuntime, calls: int) -> list[float]:
    """ms per encoder chunk call, all on one stream (the runtime keeps its state between calls)."""
    pcm = torch.from_numpy(utterance(seed=0, lead_s=0.0, speech_s=1.0, tail_s=0.0)[:CHUNK_SAMPLES])
    stream = f"bench-{uuid.uuid4().hex}"
    await runtime.infer("encoder", {"pcm": pcm}, Sequence(stream, start=True))  # warm-up
    timings = []
    try:
        for _ in range(calls):
            started = time.perf_counter()
            await runtime.infer("encoder", {"pcm": pcm}, Sequence(stream))
            timings.append(1000 * (time.perf_counter() - started))
    finally:
        await runtime.end_sequence("encoder", stream)
    return timings


async def batch_sizes_under_load(runtime: TritonRuntime, url: str) -> dict[int, int]:
    pcm = torch.from_numpy(utterance(seed=1, lead_s=0.0, speech_s=1.0, tail_s=0.0)[:CHUNK_SAMPLES])
    streams = [
        Sequence(f"bench-load-{index}-{uuid.uuid4().hex}", start=True, end=True) for index in range(CONCURRENT_CHUNKS)
    ]
    await asyncio.gather(*(runtime.infer("encoder", {"pcm": pcm}, stream) for stream in streams))
    client = tritonclient.grpc.aio.InferenceServerClient(url)
    try:
        stats = await client.get_inference_statistics("encoder", as_json=True)
    finally:
        await client.close()
    return {
        int(entry["batch_size"]): int(entry["compute_infer"]["count"])
        for entry in stats["model_stats"][0].get("batch_stats", [])
    }


def run_runtime_bench(config: str, calls: int, turns: int) -> RuntimeBench:
    cfg = load_config(config)
    log_path = service_log_path()
    with tempfile.TemporaryDirectory(prefix="minmo-bench-triton-") as directory:
        repository = Path(directory)
        export_repository(cfg, repository)
        server = LocalTritonServer(repository, free_port_block(1), log_path=repository / "tritonserver.log")
        with server:
            local_calls, triton_calls, batches = asyncio.run(_per_call(config, calls, server.url))
            triton_env = {"MINMO_RUNTIME": "triton", "MINMO_TRITON_URL": server.url}
            triton_first_audio, _ = bench_services(config, turns, seed=0, extra_env=triton_env, log_path=log_path)
        local_first_audio, _ = bench_services(config, turns, seed=0, log_path=log_path)
    return RuntimeBench(local_calls, triton_calls, batches, local_first_audio, triton_first_audio)


async def _per_call(config: str, calls: int, url: str) -> tuple[list[float], list[float], dict[int, int]]:
    local = build_local_runtime(load_config(config), ["encoder"])
    triton = TritonRuntime(url)
    try:
        await triton.wait_ready(["encoder"], 120)
        local_ms = await time_calls(local, calls)
        triton_ms = await time_calls(triton, calls)
        batches = await batch_sizes_under_load(triton, url)
    finally:
        await local.close()
        await triton.close()
    return local_ms, triton_ms, batches
