"""Chunked prefill: a long prompt fed in slices equals the one-shot prefill (and a rebuilt context a fresh one), the
local runtime runs each slice as its own pool task (another session's request runs between them), and a cancel stops
it within one slice (tiny model, real threads)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import torch

from minmo.model.config import load_config
from minmo.model.dialogue import Dialogue, DialogueState, run_slices
from minmo.runtime.base import Sequence
from minmo.runtime.llm_model import (
    OP_APPEND_TEXT_TURN,
    OP_BEGIN_RESPONSE,
    OP_DROP_RESPONSE,
    OP_GENERATE,
    OP_START,
    ROLE_USER,
    LlmModel,
    text_tensor,
)
from minmo.runtime.local import BACKGROUND_NICE, LocalRuntime

ATOL = 1e-5
SYSTEM_PROMPT = "You answer briefly. " * 3
HISTORY = [("user", "What is the weather like?"), ("assistant", "Sunny, " * 5)]
LONG_TEXT = "x" * 120
SLICE = 16


@pytest.fixture(scope="module")
def model() -> LlmModel:
    return LlmModel.from_config(load_config("tiny"))


def _assert_same_context(got: DialogueState, expected: DialogueState) -> None:
    assert got.position == expected.position and got.user_turn_start == expected.user_turn_start
    got_cache, expected_cache = [*got.llm.keys, *got.llm.values], [*expected.llm.keys, *expected.llm.values]
    for got_kv, expected_kv in zip(got_cache, expected_cache, strict=True):
        torch.testing.assert_close(got_kv, expected_kv, atol=ATOL, rtol=0)


@pytest.mark.parametrize("slice_positions", [7, 10_000])
def test_sliced_prefill_equals_one_shot(model, slice_positions):
    dialogue: Dialogue = model.dialogue
    whole = dialogue.start(SYSTEM_PROMPT, HISTORY)
    sliced = run_slices(dialogue.start_slices(SYSTEM_PROMPT, HISTORY, slice_positions))
    _assert_same_context(sliced, whole)
    whole = dialogue.append_text_turn(whole, "user", LONG_TEXT)
    sliced = run_slices(dialogue.append_text_turn_slices(sliced, "user", LONG_TEXT, slice_positions))
    _assert_same_context(sliced, whole)
    # a text turn that goes before an open spoken turn (which is re-run after it) is sliced the same way
    audio = torch.randn(1, 5, dialogue.hidden_size)
    _, whole = dialogue.append_audio(whole, audio)
    _, sliced = dialogue.append_audio(sliced, audio)
    whole = dialogue.append_text_turn(whole, "assistant", LONG_TEXT)
    sliced = run_slices(dialogue.append_text_turn_slices(sliced, "assistant", LONG_TEXT, slice_positions))
    _assert_same_context(sliced, whole)
    whole, sliced = dialogue.begin_response(whole), dialogue.begin_response(sliced)
    for _ in range(4):
        (step, whole), (sliced_step, sliced) = dialogue.generate_step(whole), dialogue.generate_step(sliced)
        assert sliced_step.token_id == step.token_id
        torch.testing.assert_close(sliced_step.hidden, step.hidden, atol=ATOL, rtol=0)


def test_a_rebuilt_context_keeps_the_system_prompt_and_equals_a_fresh_start(model):
    """Trimming old turns (OP_REBUILD) reuses the system block's KV entries and prefills only the kept turns."""
    dialogue: Dialogue = model.dialogue
    state = dialogue.append_text_turn(dialogue.start(SYSTEM_PROMPT, HISTORY), "user", LONG_TEXT)
    kept = [("user", LONG_TEXT)]
    rebuilt = run_slices(dialogue.rebuild_slices(state, kept, 7))
    fresh = dialogue.start(SYSTEM_PROMPT, kept)
    assert rebuilt.system_end == fresh.system_end > 0
    _assert_same_context(rebuilt, fresh)


def test_the_slices_of_a_request_are_separate_steps(model):
    """`execute_slices` yields once between each two slices of the prompt it prefills."""
    start = {"op": torch.tensor([OP_START]), "system_prompt": text_tensor(""), "prefill_tokens": torch.tensor([8])}
    _, state = run_slices(model.execute_slices(start, None))
    turn = {
        "op": torch.tensor([OP_APPEND_TEXT_TURN]),
        "role": torch.tensor([ROLE_USER]),
        "text": text_tensor(LONG_TEXT),
        "prefill_tokens": torch.tensor([SLICE]),
    }
    slices = model.execute_slices(turn, state)
    pauses = 0
    with pytest.raises(StopIteration) as done:
        while True:
            next(slices)
            pauses += 1
    outputs, new_state = done.value.value
    added = new_state.position - state.position
    assert int(outputs["position"][0]) == new_state.position and added > len(LONG_TEXT)
    assert pauses == -(-added // SLICE) - 1


def _runtime(model: LlmModel) -> LocalRuntime:
    return LocalRuntime([model], workers=1)  # one compute thread: the order of the tasks is the order they ran in


async def _start(runtime: LocalRuntime, sequence_id: str) -> None:
    await runtime.infer("llm", {"op": torch.tensor([OP_START]), "system_prompt": text_tensor("hi")},
                        Sequence(sequence_id, start=True))  # fmt: skip


def _long_turn(prefill_tokens: int, text: str = LONG_TEXT) -> dict[str, torch.Tensor]:
    return {
        "op": torch.tensor([OP_APPEND_TEXT_TURN]),
        "role": torch.tensor([ROLE_USER]),
        "text": text_tensor(text),
        "prefill_tokens": torch.tensor([prefill_tokens]),
    }


async def _position(runtime: LocalRuntime, sequence_id: str) -> int:
    outputs = await runtime.infer("llm", {"op": torch.tensor([OP_DROP_RESPONSE])}, Sequence(sequence_id))
    return int(outputs["position"][0])


@pytest.mark.parametrize(("prefill_tokens", "short_first"), [(SLICE, True), (0, False)])
def test_another_sessions_request_runs_between_the_slices_of_a_long_prefill(model, prefill_tokens, short_first):
    async def run() -> None:
        runtime = _runtime(model)
        try:
            await _start(runtime, "long")
            await _start(runtime, "short")
            long = asyncio.create_task(runtime.infer("llm", _long_turn(prefill_tokens), Sequence("long")))
            await asyncio.sleep(0)  # the long request's (first) task is on the pool before the short one's
            short = asyncio.create_task(_position(runtime, "short"))
            done, _ = await asyncio.wait({long, short}, return_when=asyncio.FIRST_COMPLETED)
            assert done == {short} if short_first else long in done  # one shot: the short one waits for all of it
            await asyncio.gather(long, short)
        finally:
            await runtime.close()

    asyncio.run(run())


def test_cancelling_a_long_prefill_stops_within_one_slice_and_keeps_the_context(model):
    started = threading.Event()
    slices_run = []

    def count(module, args, kwargs) -> None:
        slices_run.append(1)
        started.set()

    async def run() -> None:
        runtime = _runtime(model)
        hook = model.dialogue.llm.model.get_decoder().register_forward_pre_hook(count, with_kwargs=True)
        try:
            await _start(runtime, "long")
            before = await _position(runtime, "long")
            slices_run.clear()
            started.clear()
            request = asyncio.create_task(runtime.infer("llm", _long_turn(SLICE, "x" * 3000), Sequence("long")))
            await asyncio.to_thread(started.wait, 30)
            ran_at_cancel = len(slices_run)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await asyncio.sleep(0.2)  # nothing left to run: the closed request submits no more slices
            assert len(slices_run) <= ran_at_cancel + 1 < 3000 // SLICE
            assert await _position(runtime, "long") == before  # the cancelled turn never entered the context
        finally:
            hook.remove()
            await runtime.close()

    asyncio.run(run())


def test_the_rest_of_a_long_prefill_runs_at_a_lower_os_priority(model):
    """Every slice after the first runs on the background pool, `BACKGROUND_NICE` levels nicer, so the steps of other
    sessions (and of other services on the same CPUs) come first."""
    nice_per_slice = []

    def record(module, args, kwargs) -> None:
        nice_per_slice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    async def run() -> None:
        runtime = _runtime(model)
        try:
            await _start(runtime, "long")
            hook = model.dialogue.llm.model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
            try:
                await runtime.infer("llm", _long_turn(SLICE), Sequence("long"))
            finally:
                hook.remove()
        finally:
            await runtime.close()

    asyncio.run(run())
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert len(nice_per_slice) > 2
    assert nice_per_slice == [base] + [min(19, base + BACKGROUND_NICE)] * (len(nice_per_slice) - 1)


async def test_a_token_stream_computes_the_next_step_while_the_caller_holds_this_one(monkeypatch):
    """`infer_stream` keeps one step in flight (the llm service sends a token while the next one computes), never
    more: a caller that stops reading leaves at most one step computed ahead of it."""
    model = LlmModel.from_config(load_config("tiny"))
    steps = []
    generate_step = model.dialogue.generate_step
    monkeypatch.setattr(model.dialogue, "generate_step", lambda *args: steps.append(1) or generate_step(*args))
    runtime = _runtime(model)
    await _start(runtime, "s")
    await runtime.infer("llm", {"op": torch.tensor([OP_BEGIN_RESPONSE])}, Sequence("s"))
    generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([8])}
    stream = runtime.infer_stream("llm", generate, Sequence("s"))
    await anext(stream)
    async with asyncio.timeout(10):
        while len(steps) < 2:  # the second step runs although the caller has not asked for it
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.2)
    assert len(steps) == 2, "one step ahead, not more"
    assert len([outputs async for outputs in stream]) == 7
    await runtime.close()
