"""Convert between torch tensors and `minmo.v1.Tensor` (dtype + shape + raw little-endian C-order bytes).

Both directions validate and raise ValueError with a message meant for a person; services map it to
INVALID_ARGUMENT.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from minmo.v1 import common_pb2

# Wire dtype name -> (torch dtype, little-endian numpy dtype of the raw bytes). numpy has no bfloat16,
# so bfloat16 travels as its 16-bit pattern and is reinterpreted with a torch view.
_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float16": (torch.float16, np.dtype("<f2")),
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),
    "int64": (torch.int64, np.dtype("<i8")),
    "int32": (torch.int32, np.dtype("<i4")),
    "int16": (torch.int16, np.dtype("<i2")),
}
_NAMES: dict[torch.dtype, str] = {torch_dtype: name for name, (torch_dtype, _) in _DTYPES.items()}

SUPPORTED_DTYPES: tuple[str, ...] = tuple(_DTYPES)


def tensor_to_proto(t: torch.Tensor) -> common_pb2.Tensor:
    """Serialise a tensor (any device, any strides) into a `Tensor` message."""
    name = _NAMES.get(t.dtype)
    if name is None:
        raise ValueError(f"cannot send a tensor of dtype {t.dtype}: supported dtypes are {', '.join(SUPPORTED_DTYPES)}")
    _, wire = _DTYPES[name]
    host = t.detach().to("cpu").contiguous()
    if host.dtype == torch.bfloat16:
        host = host.view(torch.int16)
    data = host.numpy().astype(wire, copy=False).tobytes(order="C")
    return common_pb2.Tensor(dtype=name, shape=list(t.shape), data=data)


def tensor_from_proto(msg: common_pb2.Tensor) -> torch.Tensor:
    """Deserialise a `Tensor` message into a new CPU tensor that owns its memory."""
    if msg.dtype not in _DTYPES:
        raise ValueError(f"unknown tensor dtype {msg.dtype!r}: expected one of {', '.join(SUPPORTED_DTYPES)}")
    torch_dtype, wire = _DTYPES[msg.dtype]
    shape = tuple(msg.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor shape {list(shape)} has a negative dimension")
    expected = math.prod(shape) * wire.itemsize
    if len(msg.data) != expected:
        raise ValueError(
            f"tensor data is {len(msg.data)} bytes but shape {list(shape)} of {msg.dtype} needs "
            f"{expected} bytes ({math.prod(shape)} elements x {wire.itemsize} bytes)"
        )
    array = np.frombuffer(msg.data, dtype=wire).astype(wire.newbyteorder("="), copy=True).reshape(shape)
    out = torch.from_numpy(array)
    if torch_dtype == torch.bfloat16:
        out = out.view(torch.bfloat16)
    return out
