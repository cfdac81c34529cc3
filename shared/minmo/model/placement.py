"""Where a model runs and in which float type: MINMO_DEVICE (cpu, cuda, cuda:N) and MINMO_DTYPE (float32,
bfloat16, float16).

A component is built on its device and its floating-point weights cast to the dtype. Callers keep talking
float32 on the CPU: a runtime model moves its inputs in with `to_model` and its outputs back with `to_host`,
so the tensor contracts of the services and of Triton do not change with the placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_KINDS = ("cpu", "cuda")


class PlacementError(ValueError):
    """MINMO_DEVICE or MINMO_DTYPE names something this machine cannot run; the message says what and why."""


@dataclass(frozen=True)
class Placement:
    """A device string ("cpu", "cuda", "cuda:1") and a dtype name (a key of DTYPES); checked on creation."""

    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise PlacementError(f"MINMO_DTYPE={self.dtype!r}: use one of {', '.join(DTYPES)}")
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
        return DTYPES[self.dtype]

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
