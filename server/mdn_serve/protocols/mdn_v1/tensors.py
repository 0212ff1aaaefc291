"""mdn.v1 Tensor <-> numpy: the one place that reads or builds tensor messages (server and client)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve.errors import InvalidInput
from mdn_serve.protocols.packed import extend_floats
from mdn_serve.protocols.shapes import element_count

_LE_FLOAT32 = np.dtype("<f4")


def decode_tensor(tensor: pb.Tensor, field: str, max_elements: int) -> tuple[NDArray[np.float32], bool]:
    """Returns (array, was_raw). Raw bytes are viewed in place, not copied."""
    shape = list(tensor.shape)
    count = element_count(shape, f"{field}.shape", max_elements)
    has_raw, num_values = len(tensor.raw) > 0, len(tensor.values)
    if has_raw and num_values:
        raise InvalidInput(f"{field} sets both values and raw; set exactly one")
    if has_raw:
        if len(tensor.raw) != 4 * count:
            raise InvalidInput(
                f"{field}.raw has {len(tensor.raw)} bytes, but shape {shape} needs {4 * count} "
                "(little-endian float32, 4 bytes per value)"
            )
        array = np.frombuffer(tensor.raw, dtype=_LE_FLOAT32).reshape(shape)
        return array.astype(np.float32, copy=False), True
    if num_values != count:
        raise InvalidInput(f"{field}.values has {num_values} values, but shape {shape} needs {count}")
    return np.asarray(tensor.values, dtype=np.float32).reshape(shape), False


def encode_tensor(array: NDArray[np.floating], raw: bool) -> pb.Tensor:
    """float32 tensor message, raw little-endian bytes or repeated values."""
    tensor = pb.Tensor()
    write_tensor(tensor, array, raw)
    return tensor


def write_tensor(dest: pb.Tensor, array: NDArray[np.floating], raw: bool) -> None:
    """Fill an empty tensor field of a message in place (cheaper than building one and copying it in)."""
    data = np.ascontiguousarray(array, dtype=_LE_FLOAT32)
    dest.shape.extend(data.shape)
    if raw:
        dest.raw = data.tobytes()
    else:
        extend_floats(dest, "values", data)
