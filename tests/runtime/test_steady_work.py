"""Steady work (a reply's work after its first audio, while it is ahead of its listener) gives way to first-audio work
in the local runtime: it runs on the background pool's lower-priority threads, and waits, for a bounded time, while
first-audio work runs in this process (real threads; a model that records where each step ran). `PlaybackLead` says
when a reply is ahead."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from minmo.runtime.base import PlaybackLead, RuntimeModel, TensorMap
from minmo.runtime.local import BACKGROUND_NICE, FirstAudioGate, LocalRuntime


class _Recorder(RuntimeModel):
    """Each call (or stream response) records its thread's nice value and the time it ran; a call whose `hold`
    input is 1 blocks until `release` is set."""

    name = "recorder"

    def __init__(self) -> None:
        self.ran: list[tuple[str, int, float]] = []
        self.holding = threading.Event()
        self.release = threading.Event()

    def execute(self, inputs: TensorMap, state: Any) -> tuple[TensorMap, Any]:
        if int(inputs.get("hold", torch.tensor([0]))[0]):
            self.holding.set()
            self.release.wait(10)
        self._record(str(int(inputs["label"][0])))
        return {"done": torch.tensor([1])}, None

    def execute_stream(self, inputs: TensorMap, state: Any) -> Iterator[tuple[TensorMap, Any]]:
        for index in range(int(inputs["responses"][0])):
            self._record(f"response {index}")
            yield {"index": torch.tensor([index])}, None

    def _record(self, label: str) -> None:
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.ran.append((label, nice, time.monotonic()))


def _label(value: int, hold: bool = False) -> TensorMap:
    return {"label": torch.tensor([value]), "hold": torch.tensor([int(hold)])}


def test_steady_calls_and_responses_run_at_a_lower_os_priority():
    model = _Recorder()

    async def run() -> None:
        runtime = LocalRuntime([model], workers=1)
        try:
            await runtime.infer("recorder", _label(1))
            await runtime.infer("recorder", _label(2), steady=True)
            asked = iter([False, False, True, True, True])  # asked once before each step: 4 responses, then the end
            stream = runtime.infer_stream("recorder", {"responses": torch.tensor([4])}, steady=asked.__next__)
            assert [int(outputs["index"][0]) async for outputs in stream] == [0, 1, 2, 3]
            everything = runtime.infer_stream("recorder", {"responses": torch.tensor([2])})
            assert len([outputs async for outputs in everything]) == 2
        finally:
            await runtime.close()

    asyncio.run(run())
    base = os.getpriority(os.PRIO_PROCESS, 0)
    steady = min(19, base + BACKGROUND_NICE)
    nice = [nice for _, nice, _ in model.ran]
    assert nice == [base, steady, base, base, steady, steady, base, base]


def test_a_steady_call_waits_while_first_audio_work_runs():
    model = _Recorder()

    async def run() -> None:
        runtime = LocalRuntime([model], workers=2, steady_wait_s=5.0)
        try:
            first_audio = asyncio.create_task(runtime.infer("recorder", _label(1, hold=True)))
            await asyncio.to_thread(model.holding.wait, 10)
            steady = asyncio.create_task(runtime.infer("recorder", _label(2), steady=True))
            await asyncio.sleep(0.3)
            assert not model.ran, "the steady call ran while first-audio work was running"
            model.release.set()
            await asyncio.gather(first_audio, steady)
        finally:
            await runtime.close()

    asyncio.run(run())
    assert [label for label, _, _ in model.ran] == ["1", "2"]


def test_steady_work_is_delayed_never_starved():
    """First-audio work that never ends holds a steady call back only `steady_wait_s`."""
    model = _Recorder()

    async def run() -> float:
        runtime = LocalRuntime([model], workers=2, steady_wait_s=0.2)
        try:
            held = asyncio.create_task(runtime.infer("recorder", _label(1, hold=True)))
            await asyncio.to_thread(model.holding.wait, 10)
            started = time.monotonic()
            await runtime.infer("recorder", _label(2), steady=True)
            waited = time.monotonic() - started
            model.release.set()
            await held
            return waited
        finally:
            model.release.set()
            await runtime.close()

    waited = asyncio.run(run())
    assert 0.15 < waited < 5.0
    assert [label for label, _, _ in model.ran] == ["2", "1"]


def test_the_gate_lets_steady_work_through_when_no_first_audio_work_runs():
    gate = FirstAudioGate(max_wait_s=5.0)
    started = time.monotonic()
    gate.wait_for_first_audio()
    assert time.monotonic() - started < 1.0
    with gate.first_audio():
        waiter = threading.Thread(target=gate.wait_for_first_audio)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive(), "it waits while first-audio work runs"
    waiter.join(5.0)
    assert not waiter.is_alive(), "and goes as soon as that work ends"


def test_a_reply_is_steady_while_it_is_a_margin_ahead_of_its_listener():
    lead = PlaybackLead(seconds_per_unit=0.04, margin_s=1.0)  # speech tokens at 25 Hz
    assert not lead.steady(0, now=0.0) and lead.ahead_s(0, now=5.0) == 0.0, "nothing out yet: first-audio work"
    lead.start(now=10.0)  # 30 tokens (1.2 s of audio) came out at once
    assert lead.steady(30, now=10.1)
    assert not lead.steady(30, now=10.3), "0.9 s ahead: under the margin"
    lead.start(now=10.3)  # 80 tokens (3.2 s) in all by then; the clock runs from the first output
    assert lead.ahead_s(80, now=11.0) == pytest.approx(2.2) and lead.steady(80, now=11.0)
    assert not lead.steady(80, now=13.0), "a reply that falls behind (a loaded machine) is first-audio work again"
