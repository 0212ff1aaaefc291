"""Inverse kinematics for planar serial arms from an MDN's mixture: seeds, refinement, ranking.

The mixture's modes (and optionally samples) are seeds; damped least squares (Levenberg-Marquardt)
on the forward kinematics refines each one within the joint limits; duplicates are merged and
the rest ranked by the mass of the mode they came from, then by position error. Everything is
vectorised over targets and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_core.kinematics import PlanarArm
from mdn_core.mixture import Modes, mixture_modes, sample_mixture

FloatArray = NDArray[np.floating]

DEFAULT_TOLERANCE = 1e-6  # position error to refine to, in the arm's length unit
DEFAULT_REFINE = True  # what a request that does not say gets
MAX_ITERATIONS = 50
MERGE_RADIANS = 1e-3  # solutions closer than this in every joint are one solution
OK = "ok"


@dataclass(frozen=True)
class Solutions:
    """Ranked IK solutions per target, NaN-padded to the widest row.

    solutions (B, M, J) joint angles, position_error (B, M), within_limits (B, M), score (B, M)
    (the mixture mass behind each solution), num_solutions (B,), status (B,): "ok" or why a
    target has no solution.
    """

    solutions: NDArray[np.float32]
    position_error: NDArray[np.float32]
    within_limits: NDArray[np.bool_]
    score: NDArray[np.float32]
    num_solutions: NDArray[np.int32]
    status: list[str]

    def within_limits_padded(self) -> NDArray[np.float32]:
        """within_limits as 1/0 with NaN where a row has no solution (how both protocols send it)."""
        shown = ~np.isnan(self.position_error)
        out: NDArray[np.float32] = np.where(shown, self.within_limits, np.nan).astype(np.float32)
        return out


def jacobian(arm: PlanarArm, angles: FloatArray) -> FloatArray:
    """d(x, y)/d(theta) of the end effector: (..., 2, J)."""
    cumulative = np.cumsum(angles, axis=-1)
    lengths = np.asarray(arm.link_lengths)
    # Joint i moves every link from i on: sum the links' terms from the tip back.
    dx = -np.flip(np.cumsum(np.flip(lengths * np.sin(cumulative), -1), -1), -1)
    dy = np.flip(np.cumsum(np.flip(lengths * np.cos(cumulative), -1), -1), -1)
    out: FloatArray = np.stack([dx, dy], axis=-2)
    return out


def refine(
    arm: PlanarArm, targets: FloatArray, seeds: FloatArray, tolerance: float, iterations: int = MAX_ITERATIONS
) -> FloatArray:
    """Levenberg-Marquardt on the position error from each seed, kept inside the joint limits.

    targets (B, 2), seeds (B, S, J) -> refined angles (B, S, J). A step is kept only if it lowers
    the error; the damping shrinks after a good step and grows after a bad one.
    """
    limits = np.asarray(arm.joint_limits)
    theta = np.clip(seeds.astype(np.float64), limits[:, 0], limits[:, 1])
    goal = targets.astype(np.float64)[:, None, :]
    residual = goal - arm.forward(theta)
    error = np.sum(residual * residual, axis=-1)
    damping = np.full(error.shape, 1e-3)
    eye = np.eye(2)
    for _ in range(iterations):
        active = error > tolerance * tolerance
        if not active.any():
            break
        j = jacobian(arm, theta)  # (B, S, 2, J)
        jjt = j @ np.swapaxes(j, -1, -2) + (damping[..., None, None] ** 2) * eye  # (B, S, 2, 2)
        step = np.swapaxes(j, -1, -2) @ np.linalg.solve(jjt, residual[..., None])  # (B, S, J, 1)
        trial = np.clip(theta + step[..., 0], limits[:, 0], limits[:, 1])
        trial_residual = goal - arm.forward(trial)
        trial_error = np.sum(trial_residual * trial_residual, axis=-1)
        better = active & (trial_error < error)
        theta = np.where(better[..., None], trial, theta)
        residual = np.where(better[..., None], trial_residual, residual)
        error = np.where(better, trial_error, error)
        damping = np.where(better, damping * 0.3, np.where(active, damping * 4.0, damping))
    return theta


def reach_bounds(arm: PlanarArm) -> tuple[float, float]:
    """Inner and outer radius of the annulus the tip can reach, joint limits aside."""
    lengths = np.asarray(arm.link_lengths)
    inner = max(0.0, float(lengths.max() - (lengths.sum() - lengths.max())))
    return inner, float(lengths.sum())


def solve(
    arm: PlanarArm,
    targets: FloatArray,
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    max_solutions: int = 0,
    refine_solutions: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    num_samples: int = 0,
    seed: int | None = None,
    modes: Modes | None = None,
) -> Solutions:
    """Every distinct solution for each target, seeded from the mixture, optionally refined.

    modes: the mixture's modes (all of them), when the caller has already searched for them.
    """
    batch = targets.shape[0]
    if modes is None:
        modes = mixture_modes(weights, means, scales)
    seeds = np.nan_to_num(modes.modes.astype(np.float64), nan=0.0)  # (B, M, J)
    score = np.nan_to_num(modes.mass.astype(np.float64), nan=0.0)
    valid = np.arange(seeds.shape[1])[None, :] < modes.num_modes[:, None]
    if num_samples > 0:
        drawn = sample_mixture(weights, means, scales, num_samples, np.random.default_rng(seed)).astype(np.float64)
        seeds = np.concatenate([seeds, drawn], axis=1)
        score = np.concatenate([score, np.zeros((batch, num_samples))], axis=1)
        valid = np.concatenate([valid, np.ones((batch, num_samples), dtype=bool)], axis=1)

    angles = refine(arm, targets, seeds, tolerance) if refine_solutions else seeds
    error = np.linalg.norm(arm.forward(angles) - targets[:, None, :].astype(np.float64), axis=-1)
    inside = arm.within_limits(angles, slack=1e-9)
    # Refined solutions must be exact and allowed; raw modes are all returned, flagged.
    keep = valid & inside & (error <= tolerance) if refine_solutions else valid.copy()

    # Merge duplicates: a solution is dropped if a better-ranked kept one lies within MERGE_RADIANS.
    order = np.lexsort((error, -score, ~keep), axis=-1)  # kept first, by score then error
    rows = np.arange(batch)[:, None]
    angles, error, score, keep = angles[rows, order], error[rows, order], score[rows, order], keep[rows, order]
    close = np.all(np.abs(angles[:, :, None, :] - angles[:, None, :, :]) < MERGE_RADIANS, axis=-1)  # (B, S, S)
    earlier = np.tril(np.ones(close.shape[1:], dtype=bool), k=-1)  # [i, j]: j ranks before i
    duplicate = np.any(close & earlier & keep[:, None, :], axis=-1)
    keep &= ~duplicate
    # Mass of merged duplicates goes to the solution they merged into.
    owner = np.argmax(close & (earlier | np.eye(close.shape[1], dtype=bool)) & keep[:, None, :], axis=-1)
    merged_score = np.zeros_like(score)
    np.add.at(merged_score, (np.broadcast_to(rows, owner.shape), owner), np.where(valid[rows, order], score, 0.0))
    score = np.where(keep, merged_score, 0.0)

    order = np.lexsort((error, -score, ~keep), axis=-1)
    angles, error, score, keep = angles[rows, order], error[rows, order], score[rows, order], keep[rows, order]
    count = keep.sum(axis=1)
    if max_solutions:
        count = np.minimum(count, max_solutions)
    width = int(count.max()) if batch else 0
    shown = np.arange(width)[None, :] < count[:, None]
    status = _status(arm, targets, count, error, refine_solutions, tolerance)
    return Solutions(
        solutions=np.where(shown[..., None], angles[:, :width], np.nan).astype(np.float32),
        position_error=np.where(shown, error[:, :width], np.nan).astype(np.float32),
        within_limits=shown & arm.within_limits(angles[:, :width], slack=1e-9),
        score=np.where(shown, score[:, :width], np.nan).astype(np.float32),
        num_solutions=count.astype(np.int32),
        status=status,
    )


def _status(
    arm: PlanarArm,
    targets: FloatArray,
    count: NDArray[np.integer],
    error: FloatArray,
    refined: bool,
    tolerance: float,
) -> list[str]:
    """ "ok", or why a target got no solution (computed for those targets only)."""
    status = [OK] * len(targets)
    inner, outer = reach_bounds(arm)
    for b in np.flatnonzero(count == 0).tolist():
        r = float(np.linalg.norm(targets[b]))
        if r > outer or r < inner:
            status[b] = f"unreachable: the target is {r:.4g} from the base; the arm reaches {inner:.4g} to {outer:.4g}"
        elif refined:
            closest = float(np.nanmin(error[b])) if np.isfinite(error[b]).any() else float("nan")
            status[b] = (
                f"no configuration within the joint limits reaches the target to {tolerance:g} (the closest "
                f"found misses by {closest:.3g}); it may lie outside the trained workspace"
            )
        else:
            status[b] = "the mixture has no mode for this target"
    return status
