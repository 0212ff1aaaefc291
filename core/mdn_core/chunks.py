"""Long work in chunks: each chunk takes tens of milliseconds, and between chunks the caller may stop it.

The mode search, the IK refinement and sampling work through their rows chunk by chunk. Every
row is computed on its own, so the answers do not depend on where the chunks fall; a caller
passes `should_stop` (its client went away, its deadline passed, the server is shutting down)
and gets `Interrupted` within one chunk instead of holding a thread for the whole request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


class Interrupted(Exception):
    """The work stopped between chunks because its caller's should_stop said so."""


def spans(total: int, step: int, should_stop: Callable[[], bool] | None, what: str) -> Iterator[tuple[int, int]]:
    """(start, stop) of each chunk of `step` rows out of `total`; should_stop() is asked before every
    chunk after the first, and ends the work with Interrupted naming how far it got."""
    step = max(1, step)
    for start in range(0, total, step):
        if start and should_stop is not None and should_stop():
            raise Interrupted(f"stopped after {start} of {total} {what}")
        yield start, min(total, start + step)


def stack_padded(arrays: Sequence[NDArray[Any]], fill: Any) -> NDArray[Any]:
    """Chunks' (B_i, W_i, ...) arrays stacked along the rows, each padded with `fill` to the widest W."""
    width = max(a.shape[1] for a in arrays)
    return np.concatenate(
        [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=fill) for a in arrays]
    )
