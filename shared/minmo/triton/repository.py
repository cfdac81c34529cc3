"""Write a Triton model repository serving the `minmo.runtime` models (DESIGN.md §5).

Layout, one self-contained directory per model (any subset can be deployed):

    <out>/<model>/config.pbtxt        generated from `minmo.triton.spec`
    <out>/<model>/minmo_config.json   the MinMo config the model is built from
    <out>/<model>/1/model.py          `minmo.triton.python_model`, the same file for every model

Every model is stateful (DESIGN.md §5: state stays where the compute is): the encoder's and token2wav's stream
caches, like the LLM's and voice LM's KV caches, live in the instance that computes them, keyed by the sequence,
and a request carries only its new chunk. All four are decoupled and use the sequence batcher's `oldest`
strategy, so one instance holds many live sequences (`direct` would pin one slot per sequence for its whole life —
one conversation per instance) and batches the ready requests of several. Their correlation id is a uint64
CORRID: string ids are rejected by this Triton once requests are batched, so `TritonRuntime` hashes the caller's
string id to 63 bits. (A stateless model, `ModelSpec.stateful` off, would get dynamic batching instead.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minmo.model.config import MinMoConfig
from minmo.model.placement import AUTO_DTYPE, DTYPES
from minmo.triton.spec import (
    CONTROL_CORRID,
    CONTROL_END,
    CONTROL_START,
    PARAM_CHECKPOINT,
    PARAM_CONFIG,
    PARAM_DTYPE,
    PARAM_MODEL,
    VARIABLE,
    ModelSpec,
    TensorSpec,
    model_specs,
)

MODEL_FILE = Path(__file__).with_name("python_model.py")
CONFIG_FILE = "minmo_config.json"
MODEL_VERSION = "1"
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class ExportOptions:
    """Serving knobs of the generated config.pbtxt files."""

    # Instance kind, cpu or gpu. KIND_GPU makes Triton place `instances` per visible GPU and hand model.py the
    # device id, on which the instance builds its model (`minmo.triton.backend.instance_device`).
    kind: str = "cpu"
    dtype: str = "auto"  # the models' float type (MINMO_DTYPE), written as the minmo_dtype parameter
    instances: int = 1  # model instances (stub processes) per model, per GPU with kind gpu
    max_batch_size: int = 16  # most requests one execute() gets; stateless and stateful alike
    max_queue_delay_us: int = 500  # how long a stateless request may wait for others to batch with
    max_sequences: int = 256  # live sequences per instance of a stateful model before new ones queue
    sequence_idle_s: int = 1800  # an idle sequence (and its state) is dropped after this long
    checkpoint: Path | None = None  # trained weights directory; None: the seeded weights every process builds


def export_repository(
    cfg: MinMoConfig, out: Path, options: ExportOptions | None = None, models: list[str] | None = None
) -> list[Path]:
    """Write the repository for `models` (default: all four) into `out`; returns the model directories."""
    options = options or ExportOptions()
    if options.kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {options.kind!r}")
    if options.dtype not in (*DTYPES, AUTO_DTYPE):
        raise ValueError(f"dtype must be one of {sorted((*DTYPES, AUTO_DTYPE))}, got {options.dtype!r}")
    specs = model_specs(cfg)
    unknown = sorted(set(models or []) - set(specs))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {sorted(specs)}")
    written = []
    for name in models or list(specs):
        model_dir = out / name
        (model_dir / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(config_pbtxt(specs[name], options))
        (model_dir / CONFIG_FILE).write_text(cfg.to_json())
        shutil.copyfile(MODEL_FILE, model_dir / MODEL_VERSION / "model.py")
        written.append(model_dir)
    return written


def config_pbtxt(spec: ModelSpec, options: ExportOptions) -> str:
    parameters = {PARAM_MODEL: spec.name, PARAM_CONFIG: CONFIG_FILE, PARAM_DTYPE: options.dtype}
    if options.checkpoint is not None:
        parameters[PARAM_CHECKPOINT] = str(options.checkpoint.resolve())
    lines = [
        f'name: "{spec.name}"',
        'backend: "python"',
        f"max_batch_size: {options.max_batch_size}",
        f"input [\n{_tensor_list(spec.inputs, _input)}\n]",
        f"output [\n{_tensor_list(spec.outputs, _output)}\n]",
        _sequence_batching(options) if spec.stateful else _dynamic_batching(options),
        f"instance_group [ {{ count: {options.instances} kind: {KINDS[options.kind]} }} ]",
        *(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in parameters.items()),
    ]
    return "\n".join(lines) + "\n"


def _tensor_list(tensors: tuple[TensorSpec, ...], render: Callable[[TensorSpec], str]) -> str:
    return ",\n".join(f"  {{ {render(tensor)} }}" for tensor in tensors)


def _output(tensor: TensorSpec) -> str:
    return f'name: "{tensor.name}" data_type: TYPE_{tensor.triton_dtype} dims: {list(tensor.dims)}'


def _input(tensor: TensorSpec) -> str:
    fields = [_output(tensor)]
    if tensor.optional:
        fields.append("optional: true")
    if VARIABLE in tensor.dims:
        fields.append("allow_ragged_batch: true")  # requests of different lengths still share an execute()
    return " ".join(fields)


def _dynamic_batching(options: ExportOptions) -> str:
    return f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}"


def _sequence_batching(options: ExportOptions) -> str:
    controls = [
        f'{{ name: "{CONTROL_START}" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }}',
        f'{{ name: "{CONTROL_END}" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }}',
        f'{{ name: "{CONTROL_CORRID}" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}',
    ]
    return "\n".join(
        [
            "model_transaction_policy { decoupled: true }",
            "sequence_batching {",
            f"  max_sequence_idle_microseconds: {options.sequence_idle_s * 1_000_000}",
            f"  oldest {{ max_candidate_sequences: {options.max_sequences} max_queue_delay_microseconds: 0 }}",
            "  control_input [",
            ",\n".join(f"    {control}" for control in controls),
            "  ]",
            "}",
        ]
    )
