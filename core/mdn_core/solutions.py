"""The answer of an inverse-kinematics solve: ranked solutions per target, NaN-padded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Solutions:
    """Ranked IK solutions per target, NaN-padded to the widest row.

    solutions (B, M, J), position_error (B, M), orientation_error (B, M) (NaN for targets without
    orientation), within_limits (B, M), score (B, M) (the mixture mass behind each solution),
    num_solutions (B,), status (B,): "ok" or why a target has no solution; iterations (B, M): the
    refinement steps each solution took.
    """

    solutions: NDArray[np.float32]
    position_error: NDArray[np.float32]
    orientation_error: NDArray[np.float32]
    within_limits: NDArray[np.bool_]
    score: NDArray[np.float32]
    num_solutions: NDArray[np.int32]
    status: list[str]
    iterations: NDArray[np.int32]

    def within_limits_padded(self) -> NDArray[np.float32]:
        """within_limits as 1/0 with NaN where a row has no solution (how both protocols send it)."""
        shown = ~np.isnan(self.position_error)
        out: NDArray[np.float32] = np.where(shown, self.within_limits, np.nan).astype(np.float32)
        return out


def concatenate(parts: list[Solutions]) -> Solutions:
    """Chunks' solutions as one, each padded to the widest chunk (NaN, False or 0)."""
    width = max(p.solutions.shape[1] for p in parts)

    def pad(name: str, fill: Any) -> NDArray[Any]:
        arrays = [getattr(p, name) for p in parts]
        return np.concatenate(
            [
                np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
                for a in arrays
            ]
        )

    return Solutions(
        solutions=pad("solutions", np.nan),
        position_error=pad("position_error", np.nan),
        orientation_error=pad("orientation_error", np.nan),
        within_limits=pad("within_limits", False),
        score=pad("score", np.nan),
        num_solutions=np.concatenate([p.num_solutions for p in parts]),
        status=[s for p in parts for s in p.status],
        iterations=pad("iterations", 0),
    )
