"""`minmo bench first-audio`: the decision to respond -> first audio, per session, with N sessions at once, in process
on one placement (MINMO_DEVICE / MINMO_DTYPE): the GPU number the issue asks for at `minmo-8b` widths.

Each session is a conversation with a system prompt and `audio_frames` of user audio embeddings already in the
context (random: random weights). The clock starts at the decision (OP_BEGIN_RESPONSE) and stops when token2wav
returns the first PCM samples: the LLM streams tokens, every token's hidden state and embedding go to the voice LM,
and its speech tokens go to token2wav as they come, the way the services chain them. The llm and voice LM decode
steps of concurrent sessions are batched (`StepBatcher`) as the services do with MINMO_BATCH_MAX_SIZE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import asdict, dataclass

import torch

from minmo.model.config import load_config
from minmo.model.placement import Placement
from minmo.runtime.base import ModelRuntime, Sequence
from minmo.runtime.batching import BatchSettings
from minmo.runtime.factory import build_local_runtime
from minmo.runtime.llm_model import OP_APPEND_AUDIO, OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, text_tensor

PROMPT = "You are a helpful voice assistant. Answer in one short sentence."
MAX_TOKENS = 40  # enough text for the first speech chunk at any schedule
MODELS = ("llm", "voice_lm", "token2wav")  # the runtime models on the way from the decision to the first audio


@dataclass
class FirstAudioLevel:
    sessions: int
    first_audio_ms: list[float]  # one per session and run

    def percentile(self, quantile: float) -> float:
        ordered = sorted(self.first_audio_ms)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]


async def _prepare(runtime: ModelRuntime, sequence: str, hidden_size: int, audio_frames: int) -> None:
    start = {"op": torch.tensor([OP_START]), "system_prompt": text_tensor(PROMPT)}
    await runtime.infer("llm", start, Sequence(sequence, start=True))
    embeddings = torch.randn(audio_frames, hidden_size, generator=torch.Generator().manual_seed(len(sequence)))
    await runtime.infer("llm", {"op": torch.tensor([OP_APPEND_AUDIO]), "embeddings": embeddings}, Sequence(sequence))


async def _first_audio_ms(runtime: ModelRuntime, sequence: str) -> float:
    """Decision -> first PCM of one response (then the rest of it is cancelled)."""
    voice, turn = f"{sequence}-voice", f"{sequence}-vocoder"
    started = time.perf_counter()
    await runtime.infer("llm", {"op": torch.tensor([OP_BEGIN_RESPONSE])}, Sequence(sequence))
    generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([MAX_TOKENS])}
    first, vocoding = True, False
    try:
        async for outputs in runtime.infer_stream("llm", generate, Sequence(sequence)):
            end = bool(outputs["is_end"][0] or outputs["finished"][0])
            inputs = {"text_end": torch.tensor([end])}
            if not outputs["is_end"][0]:
                inputs |= {"hidden": outputs["hidden"], "token_embedding": outputs["token_embedding"]}
            else:
                inputs |= {"hidden": outputs["hidden"][:0], "token_embedding": outputs["token_embedding"][:0]}
            if first:
                inputs |= {
                    "temperature": torch.tensor([0.0]), "top_p": torch.tensor([1.0]), "top_k": torch.tensor([0]),
                    "seed": torch.tensor([0]),
                }  # fmt: skip
            speech = await runtime.infer("voice_lm", inputs, Sequence(voice, start=first))
            first = False
            if speech["speech_tokens"].numel() or end:
                chunk = {"tokens": speech["speech_tokens"], "flush": torch.tensor([end])}
                vocoded = await runtime.infer("token2wav", chunk, Sequence(turn, start=not vocoding))
                vocoding = True
                if vocoded["pcm"].numel():
                    return 1000 * (time.perf_counter() - started)
            if end:
                break
    finally:
        await runtime.end_sequence("voice_lm", voice)
        await runtime.end_sequence("token2wav", turn)
    raise RuntimeError(f"no audio came out of {MAX_TOKENS} tokens")


async def _level(runtime: ModelRuntime, sessions: int, runs: int, hidden_size: int, audio_frames: int) -> list[float]:
    timings = []
    for _ in range(runs):
        sequences = [f"bench-{uuid.uuid4().hex}" for _ in range(sessions)]
        try:
            await asyncio.gather(*(_prepare(runtime, s, hidden_size, audio_frames) for s in sequences))
            timings += await asyncio.gather(*(_first_audio_ms(runtime, s) for s in sequences))
        finally:
            for sequence in sequences:
                await runtime.end_sequence("llm", sequence)
    return timings


def run_first_audio_bench(
    config: str, levels: list[int], runs: int, placement: Placement, audio_frames: int = 25
) -> list[FirstAudioLevel]:
    cfg = load_config(config)
    if cfg.llm.source == "random" and cfg.llm.tokenizer == "hf" and not cfg.llm.path:
        # random weights come without a tokenizer (minmo-8b): the byte tokenizer stands in for the chat markup
        cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, tokenizer="bytes"))
    batching = BatchSettings(max_size=max(levels), window_ms=2.0) if max(levels) > 1 else None
    runtime = build_local_runtime(cfg, list(MODELS), batching=batching, placement=placement)

    async def measure() -> list[FirstAudioLevel]:
        try:
            await _level(runtime, 1, 1, cfg.llm.hidden_size, audio_frames)  # warm-up: kernels, allocator
            return [
                FirstAudioLevel(n, await _level(runtime, n, runs, cfg.llm.hidden_size, audio_frames)) for n in levels
            ]
        finally:
            await runtime.close()

    return asyncio.run(measure())


def levels_as_json(levels: list[FirstAudioLevel], config: str, placement: Placement) -> dict:
    cfg = load_config(config)
    return {
        "config": config,
        "device": placement.device,
        "dtype": {model: placement.for_model(cfg, model).dtype for model in MODELS},
        "levels": [
            {**asdict(level), "p50_ms": level.percentile(0.5), "p95_ms": level.percentile(0.95)} for level in levels
        ],
    }
