"""In-process runtime: the models run in this process on a bounded thread pool.

Compute leaves the event loop (torch releases the GIL inside kernels), concurrency is bounded by the
pool size rather than one global lock, and per-sequence state lives in a dict keyed by
(model, sequence id) — the in-process twin of a Triton instance's state.

With batching on (`BatchSettings.max_size` > 1), every model that can batch (`attach_batcher`) gets a batching
worker (`minmo.runtime.batching`), and the calls that submit steps to it (streams; `execute` too for models with
`batches_execute`) run on a second pool of `max_size` threads: a session waiting for its batch holds its thread, so
that pool holds a whole batch of waiters, while all other calls keep the bounded compute pool.

A model with `execute_slices` (the llm: a long prompt's prefill) has its requests run slice by slice, each slice its
own task, and a cancelled request stops after the slice that is running. The first slice runs on the compute pool
like any request; the rest of a long one runs on a background pool whose threads have a lower OS priority
(`background_nice`): one session's longest prompt is throughput work, and the steps of every other session — in
this process and in the other services on the same CPUs (the vocoder, the voice LM) — run first, so its cost to them
stays bounded while it still uses the CPU they leave idle. Only the pool's own threads are niced: a kernel that torch
spreads over its intra-op threads (large matrices) runs those at normal priority.

Steady work (`steady`: a reply's work after its first audio while it is ahead of its listener, `PlaybackLead`) runs
on that background pool too, so on shared CPUs every service's first-audio work goes first. Within this process it
also waits, at most `steady_wait_s` per step, while first-audio work is running (`FirstAudioGate`): two Python
threads of one process share the GIL whatever their OS priority, and a tiny model's step is mostly Python. A reply
that falls behind its listener is first-audio work again. With batching on, the steps of a batching model run in the
batcher's order, whatever their kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from minmo.runtime.base import ModelRuntime, RuntimeModel, Sequence, TensorMap, UnknownSequence
from minmo.runtime.batching import BatchSettings, StepBatcher

_DONE = object()
BACKGROUND_NICE = 10  # nice levels below the compute pool for the rest of a long prefill (~1/10 of the CPU share)
STEADY_WAIT_S = 0.1  # the longest a steady step waits for this process's first-audio work (it is >= 1 s ahead)


class FirstAudioGate:
    """Counts the first-audio work running in this process; a steady step waits until there is none, or at most
    `max_wait_s` (so steady work is delayed, never starved)."""

    def __init__(self, max_wait_s: float = STEADY_WAIT_S) -> None:
        self.max_wait_s = max_wait_s
        self._changed = threading.Condition()
        self._running = 0

    @contextlib.contextmanager
    def first_audio(self) -> Iterator[None]:
        with self._changed:
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def wait_for_first_audio(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._running == 0, timeout=self.max_wait_s)


class LocalRuntime(ModelRuntime):
    def __init__(
        self,
        models: list[RuntimeModel],
        workers: int = 2,
        batching: BatchSettings | None = None,
        on_batch: Callable[[str, int], None] | None = None,
        background_nice: int = BACKGROUND_NICE,
        steady_wait_s: float = STEADY_WAIT_S,
    ) -> None:
        """`on_batch(model, size)` is told the size of every batch a batching worker runs (for the metrics);
        `background_nice`: how much lower (in nice levels) the background pool's threads run (0: the same);
        `steady_wait_s`: the longest a steady step waits for first-audio work in this process (0: not at all)."""
        self.models = {model.name: model for model in models}
        self._batchers: dict[str, StepBatcher] = {}
        if batching is not None and batching.enabled:
            for model in models:
                if hasattr(model, "attach_batcher"):
                    report = functools.partial(on_batch, model.name) if on_batch is not None else None
                    self._batchers[model.name] = model.attach_batcher(batching, report)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minmo-runtime")
        batch_threads = batching.max_size if self._batchers else 1
        self._batch_pool = ThreadPoolExecutor(max_workers=batch_threads, thread_name_prefix="minmo-runtime-batch")
        self._background_pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="minmo-runtime-background",
            initializer=_lower_priority,
            initargs=(background_nice,),
        )
        self._states: dict[tuple[str, str], Any] = {}
        self._gate = FirstAudioGate(steady_wait_s)

    async def infer(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None, steady: bool = False
    ) -> TensorMap:
        handler = self._model(model)
        state = self._state_for(handler, sequence)
        submit = functools.partial(self._submit, handler, getattr(handler, "batches_execute", False), steady)
        if hasattr(handler, "execute_slices"):
            outputs, new_state = await _run_slices(submit, self._background_pool, handler.execute_slices(inputs, state))
        else:
            outputs, new_state = await asyncio.wrap_future(submit(handler.execute, inputs, state))
        self._keep_state(handler, sequence, new_state)
        return outputs

    async def infer_stream(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None, steady: Callable[[], bool] | None = None
    ) -> AsyncIterator[TensorMap]:
        handler = self._model(model)
        responses = handler.execute_stream(inputs, self._state_for(handler, sequence))

        def next_step() -> Future:
            return self._submit(handler, True, steady is not None and steady(), next, responses, _DONE)

        step: Future | None = next_step()
        try:
            while True:
                item = await asyncio.wrap_future(step)
                if item is _DONE:
                    break
                # The next step computes while the caller handles this one (sends it on): one step ahead at most.
                step = next_step()
                outputs, new_state = item
                self._keep_state(handler, sequence, new_state, final=False)
                yield outputs
        finally:
            # Cancelled mid-step (a client's cancel, from any task or thread): the step already running finishes
            # (at most one step of compute), then the generator closes, on a thread of its own so a full pool
            # cannot delay it; closing while the step runs would raise "generator already executing".
            await asyncio.to_thread(_close_after, step, responses)
            if sequence is not None and sequence.end:
                self._states.pop((model, sequence.id), None)

    async def end_sequence(self, model: str, sequence_id: str) -> None:
        self._states.pop((model, sequence_id), None)

    def live_sequences(self, model: str) -> dict[str, Any]:
        """The states this runtime holds for `model`, by sequence id: where a leak or an unbounded cache shows."""
        return {sequence_id: state for (name, sequence_id), state in self._states.items() if name == model}

    async def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()
        self._states.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._batch_pool.shutdown(wait=False, cancel_futures=True)
        self._background_pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, handler: RuntimeModel, batches: bool, steady: bool, fn: Callable, *args) -> Future:
        """Run `fn(*args)` without autograd: on the waiting pool when it submits steps to a batcher; steady work on
        the background pool, after this process's first-audio work; the rest on the compute pool, counted as
        first-audio work."""
        if batches and handler.name in self._batchers:
            return self._batch_pool.submit(_no_grad_call, fn, *args)
        if steady:
            return self._background_pool.submit(self._steady_call, fn, *args)
        return self._pool.submit(self._first_audio_call, fn, *args)

    def _steady_call(self, fn: Callable, *args) -> Any:
        self._gate.wait_for_first_audio()
        return _no_grad_call(fn, *args)

    def _first_audio_call(self, fn: Callable, *args) -> Any:
        with self._gate.first_audio():
            return _no_grad_call(fn, *args)

    def _model(self, name: str) -> RuntimeModel:
        if name not in self.models:
            raise KeyError(f"no model {name!r} in this runtime (have {sorted(self.models)})")
        return self.models[name]

    def _state_for(self, handler: RuntimeModel, sequence: Sequence | None) -> Any:
        if not handler.stateful:
            return None
        assert sequence is not None, f"model {handler.name!r} is stateful: requests need a sequence"
        key = (handler.name, sequence.id)
        if sequence.start:
            return None
        if key not in self._states:
            raise UnknownSequence(f"sequence {sequence.id!r} was not started on model {handler.name!r}")
        return self._states[key]

    def _keep_state(self, handler: RuntimeModel, sequence: Sequence | None, state: Any, final: bool = True) -> None:
        if not handler.stateful or sequence is None:
            return
        key = (handler.name, sequence.id)
        if sequence.end and final:
            self._states.pop(key, None)
        elif sequence.start or key in self._states:  # a sequence ended meanwhile stays ended
            self._states[key] = state


async def _run_slices(
    submit_first: Callable[..., Future], background: ThreadPoolExecutor, slices: Generator
) -> Any:
    """Drive a generator that yields between slices of work, one task per slice (the first by `submit_first`, the
    rest on `background`); its return value.

    Cancelled (or failed), the slice already running finishes, then the generator is closed (its later slices never
    run) on a thread of its own, as `infer_stream` closes its responses."""
    step: Future | None = None
    submit = submit_first
    try:
        while True:
            step = submit(_next_slice, slices)
            finished, value = await asyncio.wrap_future(step)
            if finished:
                return value
            submit = functools.partial(background.submit, _no_grad_call)
    except BaseException:
        await asyncio.to_thread(_close_after, step, slices)
        raise


def _next_slice(slices: Generator) -> tuple[bool, Any]:
    """Run one slice: (False, None) when more follow, (True, the result) after the last."""
    try:
        next(slices)
    except StopIteration as done:
        return True, done.value
    return False, None


def _close_after(step: Future | None, responses) -> None:
    if step is not None and not step.cancel():
        wait([step])
    responses.close()


def _lower_priority(levels: int) -> None:
    """Raise this thread's nice value by `levels` (Linux schedules threads one by one; raising needs no privilege)."""
    if levels <= 0 or not hasattr(os, "setpriority"):
        return
    thread = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + levels))


def _no_grad_call(fn, *args):
    with torch.inference_mode():
        return fn(*args)
