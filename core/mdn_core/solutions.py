"""The answer of an inverse-kinematics solve: ranked solutions per target, NaN-padded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_core.chunks import stack_padded


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
    return Solutions(
        solutions=stack_padded([p.solutions for p in parts], np.nan),
        position_error=stack_padded([p.position_error for p in parts], np.nan),
        orientation_error=stack_padded([p.orientation_error for p in parts], np.nan),
        within_limits=stack_padded([p.within_limits for p in parts], False),
        score=stack_padded([p.score for p in parts], np.nan),
        num_solutions=np.concatenate([p.num_solutions for p in parts]),
        status=[s for p in parts for s in p.status],
        iterations=stack_padded([p.iterations for p in parts], 0),
    )
