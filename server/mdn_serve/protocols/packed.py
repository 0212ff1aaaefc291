"""Filling a repeated float field from numpy at C speed.

`field.extend(array.tolist())` builds one Python float per value: a million values take about a
quarter of a second of the event loop. Merging the field's packed wire form (tag, length, the
little-endian float32 bytes) into the message has protobuf's C parser do the same work, in a
tenth of the time, with the same result.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import Message
from numpy.typing import NDArray

_LENGTH_DELIMITED = 2  # the wire type of packed repeated fields


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def extend_floats(message: Message, field: str, array: NDArray[np.floating]) -> None:
    """Append array's values (as float32) to the repeated float `field` of `message`."""
    payload = np.ascontiguousarray(array, dtype="<f4").tobytes()
    if not payload:
        return
    number = message.DESCRIPTOR.fields_by_name[field].number
    message.MergeFromString(_varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload)
