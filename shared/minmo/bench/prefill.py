"""`minmo bench prefill`: what a session sending the largest inputs costs another session's turns in the llm's
runtime, with the long prefills at once (as before chunked prefill) and in slices, in the same run.

A probe session takes short turns (a text turn, then a reply of `tokens` tokens) on a `LocalRuntime` of the llm
(default pool size); beside it, a heavy session starts over and over from a long system prompt and appends long text
turns. The probe's turn time (text turn sent -> last token) is measured alone, beside the heavy session with
`prefill_tokens` 0 (one compute task per prompt) and beside it with slices of `slice_tokens`; the modes alternate
round by round so a busy spell on a shared machine hits all of them. Reported: each mode's p50/p95 and the p95's
ratio to the probe alone.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from minmo.model.config import load_config
from minmo.runtime.base import Sequence
from minmo.runtime.llm_model import (
    OP_APPEND_TEXT_TURN,
    OP_BEGIN_RESPONSE,
    OP_GENERATE,
    OP_START,
    ROLE_USER,
    LlmModel,
    text_tensor,
)
from minmo.runtime.local import LocalRuntime

PROBE_TEXT = "how is the weather today?"
MODES = ("alone", "beside, prefill at once", "beside, prefill in slices")


@dataclass
class PrefillBenchMode:
    name: str
    turn_ms: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.turn_ms)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.turn_ms, n=20, method="inclusive")[-1]


async def _probe_turn(runtime: LocalRuntime, sequence_id: str, tokens: int) -> float:
    started = time.perf_counter()
    turn = {
        "op": torch.tensor([OP_APPEND_TEXT_TURN]),
        "role": torch.tensor([ROLE_USER]),
        "text": text_tensor(PROBE_TEXT),
    }
    await runtime.infer("llm", turn, Sequence(sequence_id))
    await runtime.infer("llm", {"op": torch.tensor([OP_BEGIN_RESPONSE])}, Sequence(sequence_id))
    generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([tokens])}
    async for _ in runtime.infer_stream("llm", generate, Sequence(sequence_id)):
        pass
    return 1000 * (time.perf_counter() - started)


async def _heavy(runtime: LocalRuntime, chars: int, prefill_tokens: int, stop: asyncio.Event) -> None:
    """Long prompts back to back: a context started from a `chars` system prompt, then two `chars` text turns."""
    slices = torch.tensor([prefill_tokens])
    while not stop.is_set():
        sequence_id = f"heavy-{uuid.uuid4().hex}"
        start = {"op": torch.tensor([OP_START]), "system_prompt": text_tensor("p" * chars), "prefill_tokens": slices}
        await runtime.infer("llm", start, Sequence(sequence_id, start=True))
        for _ in range(2):
            turn = {
                "op": torch.tensor([OP_APPEND_TEXT_TURN]),
                "role": torch.tensor([ROLE_USER]),
                "text": text_tensor("x" * chars),
                "prefill_tokens": slices,
            }
            await runtime.infer("llm", turn, Sequence(sequence_id))
        await runtime.end_sequence("llm", sequence_id)


async def _bench(config: str, rounds: int, turns: int, tokens: int, chars: int, slice_tokens: int) -> list:
    runtime = LocalRuntime([LlmModel.from_config(load_config(config))])
    results = {name: PrefillBenchMode(name, []) for name in MODES}
    try:
        start = {"op": torch.tensor([OP_START]), "system_prompt": text_tensor("")}
        await runtime.infer("llm", start, Sequence("probe", start=True))
        await _probe_turn(runtime, "probe", tokens)  # warm-up
        for _ in range(rounds):
            for name, prefill_tokens in zip(MODES, (None, 0, slice_tokens), strict=True):
                stop = asyncio.Event()
                heavy = None
                if prefill_tokens is not None:
                    heavy = asyncio.create_task(_heavy(runtime, chars, prefill_tokens, stop))
                    await asyncio.sleep(0.05)  # its first prompt is under way
                for _ in range(turns):
                    await runtime.infer("llm", start, Sequence("probe", start=True))  # the probe's context stays short
                    results[name].turn_ms.append(await _probe_turn(runtime, "probe", tokens))
                stop.set()
                if heavy is not None:
                    await heavy
    finally:
        await runtime.close()
    return list(results.values())


def run_prefill_bench(
    config: str, rounds: int, turns: int, tokens: int, chars: int, slice_tokens: int
) -> list[PrefillBenchMode]:
    return asyncio.run(_bench(config, rounds, turns, tokens, chars, slice_tokens))


def print_prefill_bench(modes: list[PrefillBenchMode], console: Console, chars: int, slice_tokens: int) -> None:
    table = Table(title=f"minmo bench prefill: a probe's turn time beside {chars}-character prompts")
    for column in ("mode", "turns", "p50 (ms)", "p95 (ms)", "p95 / alone"):
        table.add_column(column)
    alone = modes[0].p95
    for mode in modes:
        name = mode.name if "slices" not in mode.name else f"{mode.name} of {slice_tokens}"
        table.add_row(name, str(len(mode.turn_ms)), f"{mode.p50:.1f}", f"{mode.p95:.1f}", f"{mode.p95 / alone:.2f}x")
    console.print(table)
