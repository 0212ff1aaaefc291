"""Checks on the shapes that requests claim, shared by every protocol's codec."""

from __future__ import annotations

from mdn_serve.errors import InvalidInput


def element_count(shape: list[int], what: str, max_elements: int) -> int:
    """Values a claimed shape holds; InvalidInput for a negative dimension or more than a request can carry."""
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{what} {shape} has a negative dimension")
    count = 1
    for d in shape:
        count *= d  # Python ints: no overflow, however large the claimed shape
    if count > max_elements:
        raise InvalidInput(f"{what} {shape} holds {count} values, more than a request can carry ({max_elements})")
    return count
