"""`minmo bench batch`: the llm's decode throughput (tokens/s summed over sessions), batched vs unbatched, in process.

Each level starts `sessions` conversations (different prompt lengths, so their KV caches differ), opens a response
in each, then times all of them generating `tokens` tokens at once through the same `LocalRuntime` the llm service
runs: once with batching off (each session's decode step alone on the runtime's pool) and once with the batching
worker on. The clock covers only the generation; tokens are counted as produced (a response may end early).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from minmo.model.config import load_config
from minmo.model.dialogue import Dialogue
from minmo.runtime.base import Sequence
from minmo.runtime.batching import BatchSettings
from minmo.runtime.llm_model import OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, LlmModel, text_tensor
from minmo.runtime.local import LocalRuntime

PROMPT = "You are a helpful voice assistant. Answer in one short sentence, please. "


@dataclass
class BatchLevel:
    sessions: int
    unbatched_tokens_per_s: float
    batched_tokens_per_s: float
    batch_sizes: Counter = field(default_factory=Counter)  # batch size -> batches, in the batched run

    @property
    def gain(self) -> float:
        return self.batched_tokens_per_s / self.unbatched_tokens_per_s

    @property
    def mean_batch(self) -> float:
        batches = sum(self.batch_sizes.values())
        return sum(size * count for size, count in self.batch_sizes.items()) / batches if batches else 0.0


async def decode_throughput(
    dialogue: Dialogue, sessions: int, tokens: int, batching: BatchSettings | None, sizes: Counter | None = None
) -> float:
    """Tokens per second summed over `sessions` sequences generating at once."""
    on_batch = (lambda _, size: sizes.update([size])) if sizes is not None else None
    runtime = LocalRuntime([LlmModel(dialogue)], batching=batching, on_batch=on_batch)
    ids = [f"bench-{index}" for index in range(sessions)]
    try:
        for index, sequence_id in enumerate(ids):
            start = {"op": torch.tensor([OP_START]), "system_prompt": text_tensor(PROMPT * (1 + index % 3))}
            await runtime.infer("llm", start, Sequence(sequence_id, start=True))
            await runtime.infer("llm", {"op": torch.tensor([OP_BEGIN_RESPONSE])}, Sequence(sequence_id))
        generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([tokens])}

        async def count(sequence_id: str) -> int:
            return sum([1 async for _ in runtime.infer_stream("llm", generate, Sequence(sequence_id))])

        started = time.perf_counter()
        produced = await asyncio.gather(*(count(sequence_id) for sequence_id in ids))
        elapsed = time.perf_counter() - started
    finally:
        await runtime.close()
    return sum(produced) / elapsed


def run_batch_bench(
    config: str, levels: list[int], tokens: int, settings: BatchSettings, repeats: int = 3
) -> list[BatchLevel]:
    """Each level `repeats` times per mode, the modes interleaved (so a busy spell on a shared machine hits both);
    the median of each mode is reported."""
    dialogue = LlmModel.from_config(load_config(config)).dialogue
    for warm_up in (None, settings):  # first calls allocate and pick kernels, on both paths
        asyncio.run(decode_throughput(dialogue, 2, 4, warm_up))
    results = []
    for sessions in levels:
        unbatched, batched, sizes = [], [], Counter()
        for _ in range(repeats):
            unbatched.append(asyncio.run(decode_throughput(dialogue, sessions, tokens, None)))
            batched.append(asyncio.run(decode_throughput(dialogue, sessions, tokens, settings, sizes)))
        results.append(BatchLevel(sessions, statistics.median(unbatched), statistics.median(batched), sizes))
    return results
