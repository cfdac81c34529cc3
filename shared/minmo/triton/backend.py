"""What the python-backend `model.py` delegates to, kept here so that file stays thin glue around `minmo`.

`load_model` builds the same `RuntimeModel` the in-process runtime builds (same factories, same seeded weights or
checkpoint), so Triton's outputs equal `LocalRuntime`'s. `run_sequence` serves one request of a stateful model
with the sequence semantics of `LocalRuntime`: the state lives in this instance keyed by correlation id, is kept
after every response (a cancelled stream keeps what it produced), and is dropped at END — even when the request
fails, because Triton ends the sequence then too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minmo.model.config import MinMoConfig, load_config
from minmo.model.placement import Placement
from minmo.runtime.base import RuntimeModel, TensorMap, UnknownSequence
from minmo.runtime.factory import MODEL_FACTORIES
from minmo.runtime.llm_model import OP_APPEND_AUDIO, OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, text_tensor
from minmo.triton.spec import PARAM_CHECKPOINT, PARAM_CONFIG, PARAM_DTYPE, PARAM_MODEL, ModelSpec, model_specs

WARMUP_PCM_SAMPLES = 3200  # 0.2 s at 16 kHz
WARMUP_TOKENS = 15  # one MinMo token2wav chunk
WARMUP_POSITIONS = 5  # one 5:15 block of text positions
WARMUP_FRAMES = 4  # LLM audio frames (12.5 Hz)


@dataclass(frozen=True)
class LoadedModel:
    model: RuntimeModel
    spec: ModelSpec
    cfg: MinMoConfig


@dataclass(frozen=True)
class SequenceRequest:
    """One request on a sequence, as the sequence batcher's controls and the client's parameters describe it."""

    correlation_id: int
    start: bool
    end: bool
    stream: bool
    inputs: TensorMap  # empty: an end-of-sequence marker (TritonRuntime.end_sequence), nothing to compute


def instance_device(args: dict[str, Any]) -> str:
    """The device Triton gave this instance (the `args` of `initialize`): cuda:<id> for KIND_GPU, else cpu."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args['model_instance_device_id'])}"
    return "cpu"


def load_model(model_config: dict[str, Any], model_dir: Path, device: str = "cpu") -> LoadedModel:
    """The runtime model named in the model config's parameters, built on `device` in the config's minmo_dtype;
    raises ValueError when the config does not fit it (or the device or dtype cannot be used here)."""
    params = {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}
    name = params.get(PARAM_MODEL, "")
    if name not in MODEL_FACTORIES:
        raise ValueError(f"parameter {PARAM_MODEL!r} must be one of {sorted(MODEL_FACTORIES)}, got {name!r}")
    config_path = model_dir / params.get(PARAM_CONFIG, "")
    if not config_path.is_file():
        raise ValueError(f"parameter {PARAM_CONFIG!r} must name the MinMo config JSON; {config_path} is not a file")
    cfg = load_config(str(config_path))
    spec = model_specs(cfg)[name]
    check_model_config(model_config, spec)
    placement = Placement(device, params.get(PARAM_DTYPE) or "float32")
    return LoadedModel(MODEL_FACTORIES[name](cfg, params.get(PARAM_CHECKPOINT) or None, placement), spec, cfg)


def check_model_config(model_config: dict[str, Any], spec: ModelSpec) -> None:
    """Fail at load, with the reason, when config.pbtxt was edited away from the contract the client relies on."""
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        declared = {entry["name"]: entry for entry in model_config.get(kind, [])}
        for tensor in tensors:
            entry = declared.get(tensor.name)
            if entry is None or entry["data_type"] != f"TYPE_{tensor.triton_dtype}":
                raise ValueError(f"{kind} {tensor.name!r} must be declared as TYPE_{tensor.triton_dtype}")
    decoupled = bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))
    sequenced = "sequence_batching" in model_config
    if decoupled != spec.stateful or sequenced != spec.stateful:
        raise ValueError(
            f"model {spec.name!r} is {'stateful' if spec.stateful else 'stateless'}: decoupled and sequence_batching "
            f"must both be {'on' if spec.stateful else 'off'} (decoupled={decoupled}, sequence_batching={sequenced})"
        )


def idle_timeout_s(model_config: dict[str, Any]) -> float:
    """How long Triton keeps an idle sequence; the instance drops its state after the same time."""
    micros = model_config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0)
    return int(micros) / 1e6


class SequenceStates:
    """The live sequences of one model instance. Triton forgets an idle sequence silently, so states idle for
    longer than its timeout are dropped here too, or they would leak."""

    def __init__(self, max_idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_idle_s = max_idle_s
        self._clock = clock
        self._states: dict[int, tuple[Any, float]] = {}

    def __len__(self) -> int:
        return len(self._states)

    def get(self, correlation_id: int, start: bool) -> Any:
        """None at the start of a sequence (a START on a live id starts it afresh), else the kept state."""
        self.evict_idle()
        if start:
            self._states.pop(correlation_id, None)
            return None
        if correlation_id not in self._states:
            raise UnknownSequence(f"sequence {correlation_id} was not started here (or ended, or idled out)")
        return self._states[correlation_id][0]

    def keep(self, correlation_id: int, state: Any) -> None:
        self._states[correlation_id] = (state, self._clock())

    def drop(self, correlation_id: int) -> None:
        self._states.pop(correlation_id, None)

    def evict_idle(self) -> None:
        if self.max_idle_s <= 0:
            return
        oldest = self._clock() - self.max_idle_s
        for correlation_id in [key for key, (_, used) in self._states.items() if used < oldest]:
            del self._states[correlation_id]


def run_stateless(model: RuntimeModel, inputs: TensorMap) -> TensorMap:
    with torch.inference_mode():
        return model.execute(inputs, None)[0]


def run_sequence(
    model: RuntimeModel, states: SequenceStates, request: SequenceRequest, cancelled: Callable[[], bool]
) -> Iterator[TensorMap]:
    """The responses to one request on a sequence; checks `cancelled` before computing each next response."""
    try:
        if not request.inputs:
            return
        state = states.get(request.correlation_id, request.start)
        with torch.inference_mode():
            if not request.stream:
                outputs, state = model.execute(request.inputs, state)
                states.keep(request.correlation_id, state)
                yield outputs
                return
            responses = model.execute_stream(request.inputs, state)
            try:
                while not cancelled():
                    item = next(responses, None)
                    if item is None:
                        return
                    outputs, state = item
                    states.keep(request.correlation_id, state)
                    yield outputs
            finally:
                responses.close()
    finally:
        if request.end:
            states.drop(request.correlation_id)


def run_sequence_batch(
    model: RuntimeModel, states: SequenceStates, requests: list[SequenceRequest]
) -> list[TensorMap | Exception | None]:
    """The requests of one `execute` call on a model with `execute_batch` (the encoder, token2wav: one response per
    request), computed as one batched forward: per request its outputs, its error, or None (an end-of-sequence
    marker: nothing to send). States are kept and dropped as `run_sequence` does. Two requests of one sequence in
    the same call run in order, the later one in a next round."""
    results: list[TensorMap | Exception | None] = [None] * len(requests)
    waiting = list(range(len(requests)))
    while waiting:
        this_round, later, seen = [], [], set()
        for index in waiting:
            correlation_id = requests[index].correlation_id
            (later if correlation_id in seen else this_round).append(index)
            seen.add(correlation_id)
        work = []
        for index in this_round:
            request = requests[index]
            try:
                if request.inputs:
                    work.append((index, states.get(request.correlation_id, request.start)))
                    continue
            except UnknownSequence as error:
                results[index] = error
            if request.end:
                states.drop(request.correlation_id)
        with torch.inference_mode():
            outputs = model.execute_batch([(requests[index].inputs, state) for index, state in work]) if work else []
        for (index, _), result in zip(work, outputs, strict=True):
            request = requests[index]
            if isinstance(result, Exception):
                results[index] = result
            else:
                results[index], state = result
                states.keep(request.correlation_id, state)
            if request.end:
                states.drop(request.correlation_id)
        waiting = later
    return results


def warm_up(loaded: LoadedModel) -> None:
    """Run one small request sequence through the model, so the first real request pays no lazy initialisation."""
    state = None
    with torch.inference_mode():
        for inputs in _warmup_requests(loaded.spec.name, loaded.cfg):
            for _, new_state in loaded.model.execute_stream(inputs, state):
                state = new_state


def _warmup_requests(name: str, cfg: MinMoConfig) -> list[TensorMap]:
    llm_dim = cfg.llm.hidden_size
    if name == "encoder":
        return [{"pcm": torch.zeros(WARMUP_PCM_SAMPLES), "flush": torch.tensor([True])}]
    if name == "token2wav":
        return [{"tokens": torch.zeros(WARMUP_TOKENS, dtype=torch.int64), "flush": torch.tensor([True])}]
    if name == "voice_lm":
        positions = torch.zeros(WARMUP_POSITIONS, cfg.output_projector.llm_dim)
        settings = {"temperature": torch.tensor([0.0]), "top_p": torch.tensor([1.0]), "top_k": torch.tensor([0])}
        turn = {"hidden": positions, "token_embedding": positions, "text_end": torch.tensor([False])}
        return [{**turn, **settings, "seed": torch.tensor([0])}]
    return [
        {"op": torch.tensor([OP_START]), "system_prompt": text_tensor("warm up")},
        {"op": torch.tensor([OP_APPEND_AUDIO]), "embeddings": torch.zeros(WARMUP_FRAMES, llm_dim)},
        {"op": torch.tensor([OP_BEGIN_RESPONSE])},
        {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([2])},
    ]
