"""In-process runtime: the models run in this process on a bounded thread pool.

Compute leaves the event loop (torch releases the GIL inside kernels), concurrency is bounded by the
pool size rather than one global lock, and per-sequence state lives in a dict keyed by
(model, sequence id) — the in-process twin of a Triton instance's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from minmo.runtime.base import ModelRuntime, RuntimeModel, Sequence, TensorMap, UnknownSequence

_DONE = object()


class LocalRuntime(ModelRuntime):
    def __init__(self, models: list[RuntimeModel], workers: int = 2) -> None:
        self.models = {model.name: model for model in models}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minmo-runtime")
        self._states: dict[tuple[str, str], Any] = {}

    async def infer(self, model: str, inputs: TensorMap, sequence: Sequence | None = None) -> TensorMap:
        handler = self._model(model)
        state = self._state_for(handler, sequence)
        loop = asyncio.get_running_loop()
        outputs, new_state = await loop.run_in_executor(self._pool, _no_grad_call, handler.execute, inputs, state)
        self._keep_state(handler, sequence, new_state)
        return outputs

    async def infer_stream(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None
    ) -> AsyncIterator[TensorMap]:
        handler = self._model(model)
        responses = handler.execute_stream(inputs, self._state_for(handler, sequence))
        step: Future | None = None
        try:
            while True:
                step = self._pool.submit(_no_grad_call, next, responses, _DONE)
                item = await asyncio.wrap_future(step)
                if item is _DONE:
                    break
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

    async def close(self) -> None:
        self._states.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

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


def _close_after(step: Future | None, responses) -> None:
    if step is not None and not step.cancel():
        wait([step])
    responses.close()


def _no_grad_call(fn, *args):
    with torch.inference_mode():
        return fn(*args)
