"""`minmo bench batch`: a model's throughput summed over sessions, batched vs unbatched, in process.

`--model llm` (the default): decode tokens/s. Each level starts `sessions` conversations (different prompt lengths,
so their KV caches differ), opens a response in each, then times all of them generating `tokens` tokens at once
through the same `LocalRuntime` the llm service runs: once with batching off (each session's decode step alone on
the runtime's pool) and once with the batching worker on. The clock covers only the generation; tokens are counted
as produced (a response may end early).

`--model encoder` / `token2wav`: chunks/s (80 ms of audio; 15 speech tokens, as the voice LM sends them). Session i
first sends i % 4 chunks alone, so the streams sit at different positions (caches of different lengths), then all
sessions send `tokens` chunks each at once, through the same `LocalRuntime` the encoder and vocoder services run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.dialogue import Dialogue
from minmo.runtime.base import RuntimeModel, Sequence, TensorMap
from minmo.runtime.batching import BatchSettings
from minmo.runtime.llm_model import OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, LlmModel, text_tensor
from minmo.runtime.local import LocalRuntime
from minmo.runtime.models import EncoderModel
from minmo.runtime.token2wav_model import Token2WavModel

STREAM_MODELS = ("encoder", "token2wav")
CHUNK_SAMPLES = 1280  # 80 ms at 16 kHz: one encoder chunk
CHUNK_TOKENS = 15  # the voice LM's 15 speech tokens per 5 text positions
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


async def chunk_throughput(
    model: RuntimeModel, sessions: int, chunks: int, batching: BatchSettings | None, sizes: Counter | None = None
) -> float:
    """Chunks per second summed over `sessions` streams of a stream model (`encoder`, `token2wav`) sending at once."""
    on_batch = (lambda _, size: sizes.update([size])) if sizes is not None else None
    runtime = LocalRuntime([model], batching=batching, on_batch=on_batch)
    generator = torch.Generator().manual_seed(sessions)
    ids = [f"bench-{index}" for index in range(sessions)]

    def chunk() -> TensorMap:
        if model.name == "encoder":
            return {"pcm": 0.1 * torch.randn(CHUNK_SAMPLES, generator=generator), "flush": torch.tensor([False])}
        vocab = model.speech_vocab
        return {"tokens": torch.randint(0, vocab, (CHUNK_TOKENS,), generator=generator), "flush": torch.tensor([False])}

    async def send(sequence_id: str, count: int, start: bool) -> int:
        for index in range(count):
            await runtime.infer(model.name, chunk(), Sequence(sequence_id, start=start and index == 0))
        return count

    try:
        for index, sequence_id in enumerate(ids):
            await send(sequence_id, 1 + index % 4, start=True)  # streams at different positions
        started = time.perf_counter()
        sent = await asyncio.gather(*(send(sequence_id, chunks, start=False) for sequence_id in ids))
        elapsed = time.perf_counter() - started
    finally:
        await runtime.close()
    return sum(sent) / elapsed


def run_batch_bench(
    config: str, levels: list[int], tokens: int, settings: BatchSettings, repeats: int = 3, model: str = "llm"
) -> list[BatchLevel]:
    """Each level `repeats` times per mode, the modes interleaved (so a busy spell on a shared machine hits both);
    the median of each mode is reported. `tokens`: per session, decode tokens (llm) or chunks (stream models)."""
    cfg = load_config(config)
    if model == "llm":
        dialogue = LlmModel.from_config(cfg).dialogue

        def measure(sessions: int, count: int, batching: BatchSettings | None, sizes: Counter | None = None) -> float:
            return asyncio.run(decode_throughput(dialogue, sessions, count, batching, sizes))
    elif model in STREAM_MODELS:
        wrap, component = (EncoderModel, "speech_encoder") if model == "encoder" else (Token2WavModel, "token2wav")
        module = build_component(cfg, component)

        def measure(sessions: int, count: int, batching: BatchSettings | None, sizes: Counter | None = None) -> float:
            return asyncio.run(chunk_throughput(wrap(module), sessions, count, batching, sizes))
    else:
        raise ValueError(f"model must be llm, encoder or token2wav, got {model!r}")
    for warm_up in (None, settings):  # first calls allocate and pick kernels, on both paths
        measure(2, 4, warm_up)
    results = []
    for sessions in levels:
        unbatched, batched, sizes = [], [], Counter()
        for _ in range(repeats):
            unbatched.append(measure(sessions, tokens, None))
            batched.append(measure(sessions, tokens, settings, sizes))
        results.append(BatchLevel(sessions, statistics.median(unbatched), statistics.median(batched), sizes))
    return results
