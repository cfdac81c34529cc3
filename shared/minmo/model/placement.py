"""Where a model runs and in which float type: MINMO_DEVICE (cpu, cuda, cuda:N) and MINMO_DTYPE (float32,
bfloat16, float16, or auto).

`auto` leaves the choice to the preset: the models it lists in `MinMoConfig.bfloat16_models` run in bfloat16 on a
device that multiplies bfloat16 natively (a CUDA GPU with bfloat16, a CPU with AVX512-BF16 or AMX), everything else
in float32. Half the bytes per weight is half the memory traffic of a decode step, and those units do the
arithmetic at twice the float32 rate; on a CPU without them bfloat16 is emulated and slower than float32, so `auto`
stays float32 there.

A component is built on its device and its floating-point weights cast to the dtype. Callers keep talking
float32 on the CPU: a runtime model moves its inputs in with `to_model` and its outputs back with `to_host`,
so the tensor contracts of the services and of Triton do not change with the placement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from minmo.model.config import MinMoConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_DTYPE = "auto"  # the preset's choice per model (`Placement.for_model`)
DEVICE_KINDS = ("cpu", "cuda")


class PlacementError(ValueError):
    """MINMO_DEVICE or MINMO_DTYPE names something this machine cannot run; the message says what and why."""


@dataclass(frozen=True)
class Placement:
    """A device string ("cpu", "cuda", "cuda:1") and a dtype name (a key of DTYPES, or AUTO_DTYPE until
    `for_model` settles it); checked on creation."""

    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in (*DTYPES, AUTO_DTYPE):
            raise PlacementError(f"MINMO_DTYPE={self.dtype!r}: use one of {', '.join((*DTYPES, AUTO_DTYPE))}")
        kind, _, index = self.device.partition(":")
        if kind not in DEVICE_KINDS or (index and not index.isdigit()) or (kind == "cpu" and index):
            raise PlacementError(f"MINMO_DEVICE={self.device!r}: use cpu, cuda or cuda:N")
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise PlacementError(f"MINMO_DEVICE={self.device!r}, but PyTorch sees no CUDA device on this machine")
            if index and int(index) >= torch.cuda.device_count():
                raise PlacementError(
                    f"MINMO_DEVICE={self.device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)"
                )

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == AUTO_DTYPE:
            raise PlacementError("MINMO_DTYPE=auto is settled per model: use Placement.for_model first")
        return DTYPES[self.dtype]

    def for_model(self, cfg: MinMoConfig, model: str) -> Placement:
        """This placement for runtime model `model` (llm, voice_lm, token2wav, encoder; or "vocoder", token2wav's
        autocast) of `cfg`: `auto` becomes bfloat16 where the preset lists the model and the device multiplies bfloat16
        natively, else float32."""
        if self.dtype != AUTO_DTYPE:
            return self
        fast = model in cfg.bfloat16_models and native_bfloat16(self.torch_device)
        return replace(self, dtype="bfloat16" if fast else "float32")

    def autocasts_vocoder(self, cfg: MinMoConfig) -> bool:
        """Whether token2wav's vocoder computes under bfloat16 autocast: only with `auto` (an explicit dtype keeps its
        float32 vocoder), where the preset lists "vocoder" and the device multiplies bfloat16 natively."""
        return self.dtype == AUTO_DTYPE and self.for_model(cfg, "vocoder").dtype == "bfloat16"

    def place(self, module: nn.Module) -> nn.Module:
        """The module on this device with its floating-point parameters and buffers in this dtype, except inside
        submodules that set `keeps_float32` (signal processing whose precision matters more than its cost)."""
        module.to(self.torch_device)
        if self.torch_dtype != torch.float32:
            _cast(module, self.torch_dtype)
        return module

    def to_model(self, tensor: torch.Tensor) -> torch.Tensor:
        """An input on the model's device; floating-point inputs in the model's dtype."""
        if tensor.is_floating_point():
            return tensor.to(device=self.torch_device, dtype=self.torch_dtype)
        return tensor.to(self.torch_device)


CPU_FLOAT32 = Placement()


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX (what oneDNN's bfloat16 kernels use)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """An output as callers take it: on the CPU, floating point as float32."""
    tensor = tensor.detach().cpu()
    return tensor.float() if tensor.is_floating_point() else tensor


def _cast(module: nn.Module, dtype: torch.dtype) -> None:
    if getattr(module, "keeps_float32", False):
        return
    for parameter in module.parameters(recurse=False):
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(dtype)
    for name, buffer in module.named_buffers(recurse=False):
        if buffer.is_floating_point():
            setattr(module, name, buffer.to(dtype))
    for child in module.children():
        _cast(child, dtype)


def module_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype a module's parameters live in (CPU float32 for one without parameters)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32
