"""Inverse kinematics for serial chains from an MDN's mixture: seeds, refinement, ranking.

The mixture's modes (and draws from it) are seeds, plus the caller's seed state when given;
damped least squares (Levenberg-Marquardt) on the task error refines each one within the joint
limits: position for planar and position-only targets, position and rotation (the log map) for
poses. A solution counts when its errors, measured on the float32 angles returned, are within
the tolerances. Duplicates (wrap-aware for periodic joints) are merged, their mass added up; the
rest are ranked by the mixture mass behind them, or by distance to the seed state when given.
Everything is vectorised over targets and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from mdn_core.chain import TWO_PI, SerialChain, task_of
from mdn_core.chunks import spans
from mdn_core.mixture import DrawStream
from mdn_core.modes import Modes, mixture_modes
from mdn_core.refine import meets_tolerances, refine
from mdn_core.rotations import quaternion_matrix, rotation_log
from mdn_core.solutions import Solutions, concatenate

FloatArray = NDArray[np.floating]

DEFAULT_TOLERANCE = {"planar": 1e-6, "position": 1e-5, "pose": 1e-5}  # metres (the arm's length unit)
DEFAULT_ORIENTATION_TOLERANCE = 1e-4  # radians
DEFAULT_REFINE = True  # what a request that does not say gets
# Extra seeds drawn from the mixture when a request says 0 (see default_draws).
REDUNDANT_DRAWS = 32  # more joints than task rows: every seed lands on its own point of the self-motion
# Finitely many solutions: enough draws to reach the lightly weighted branches too (on the UR5, 96 find
# every solution that random restarts find for 99.1% of poses, 64 for 98.5%: README, Every UR5 solution).
ISOLATED_DRAWS = 96
CHUNK_SEEDS = 4096  # seeds per chunk of targets (see solve): about 90 ms on a 7-joint arm
MERGE_RADIANS = 1e-3  # solutions closer than this in every joint are one solution
OK = "ok"


def default_draws(chain: SerialChain) -> int:
    """Draws per target a request gets by default: none for planar arms (their modes are every
    solution); REDUNDANT_DRAWS for chains with more joints than task rows; ISOLATED_DRAWS otherwise."""
    if chain.target == "planar":
        return 0
    return REDUNDANT_DRAWS if chain.num_joints > chain.task_rows else ISOLATED_DRAWS


def goal_of(chain: SerialChain, targets: FloatArray) -> NDArray[np.float64]:
    """Targets (B, width) as what refinement compares with: (B, 2), (B, 3) or transforms (B, 4, 4)."""
    t = np.asarray(targets, dtype=np.float64)
    if chain.target != "pose":
        return t
    goal = np.zeros((len(t), 4, 4))
    goal[:, :3, :3] = quaternion_matrix(t[:, 3:7])
    goal[:, :3, 3] = t[:, :3]
    goal[:, 3, 3] = 1.0
    return goal


def task_errors(
    chain: SerialChain, goal: NDArray[np.float64], transforms: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(error vector (..., m), position error (...), orientation error (...)) of tip transforms.

    The vector is the task's rows of the error the Jacobian maps to: position, then for poses the
    rotation vector log(R* R^T) in the base frame. The orientation error is NaN without a pose.
    """
    reached = task_of(chain.target, transforms)
    if chain.target != "pose":
        e = goal - reached
        return e, np.linalg.norm(e, axis=-1), np.full(e.shape[:-1], np.nan)
    e_pos = goal[..., :3, 3] - reached[..., :3, 3]
    e_rot = rotation_log(goal[..., :3, :3] @ np.swapaxes(reached[..., :3, :3], -1, -2))
    return (
        np.concatenate([e_pos, e_rot], axis=-1),
        np.linalg.norm(e_pos, axis=-1),
        np.linalg.norm(e_rot, axis=-1),
    )


def choose_turns(
    chain: SerialChain, q: NDArray[np.float64], seed_state: NDArray[np.float64] | None
) -> NDArray[np.float64]:
    """For periodic joints, the turn q + 2 pi k within the limits nearest the seed state (or 0)."""
    periodic = chain.periodic
    if not periodic.any():
        return q
    reference = np.zeros(q.shape[-1]) if seed_state is None else seed_state
    k = np.round((reference - q) / TWO_PI)
    moved = q + k * TWO_PI
    lim = chain.limits
    # Where the nearest turn falls outside the limits, step back towards them.
    moved = np.where(~chain.unbounded & (moved > lim[:, 1]), moved - TWO_PI, moved)
    moved = np.where(~chain.unbounded & (moved < lim[:, 0]), moved + TWO_PI, moved)
    ok = chain.within_limits(moved)[..., None]
    out: NDArray[np.float64] = np.where(periodic & ok, moved, q)
    return out


def joint_difference(chain: SerialChain, a: FloatArray, b: FloatArray) -> NDArray[np.float64]:
    """b - a per joint; for periodic joints, to the turn of b nearest a (in [-pi, pi))."""
    d = np.asarray(b, dtype=np.float64) - a
    out: NDArray[np.float64] = np.where(chain.periodic, (d + math.pi) % TWO_PI - math.pi, d)
    return out


def joint_distance(chain: SerialChain, a: FloatArray, b: FloatArray) -> NDArray[np.float64]:
    """Per-joint distance, modulo 2 pi for periodic joints: |joint_difference|."""
    return np.abs(joint_difference(chain, a, b))


def solve(
    chain: SerialChain,
    targets: FloatArray,
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    max_solutions: int = 0,
    refine_solutions: bool = True,
    tolerance: float = 0.0,
    num_samples: int | None = None,
    seed: int | None = None,
    modes: Modes | None = None,
    orientation_tolerance: float = 0.0,
    seed_state: FloatArray | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Solutions:
    """Every distinct solution for each target, seeded from the mixture, optionally refined.

    targets (B, chain.target_width); modes: the mixture's modes when already searched for (or any
    seeds with their mass); 0 for tolerance or orientation_tolerance, and None for num_samples,
    mean the chain's default; seed_state (B, J) or (1, J): one more seed per target, and the
    reference for turns and ranking. The targets are worked through in chunks of about
    CHUNK_SEEDS seeds (tens of milliseconds); before each chunk after the first, should_stop()
    may end the work (Interrupted, see mdn_core.chunks), so a caller that has gone away frees the
    thread within one chunk. The draws come from one DrawStream: the answer does not depend on
    the chunks.
    """
    if modes is None:
        modes = mixture_modes(weights, means, scales, should_stop=should_stop)
    draws = default_draws(chain) if num_samples is None else num_samples
    stream = DrawStream(seed, draws) if draws > 0 else None
    per_target = int(modes.modes.shape[1]) + draws + 1
    state = None if seed_state is None else np.asarray(seed_state, dtype=np.float64)
    parts = []
    for start, stop in spans(len(targets), CHUNK_SEEDS // per_target, should_stop, "targets"):
        drawn = None if stream is None else stream.next(weights[start:stop], means[start:stop], scales[start:stop])
        parts.append(
            _solve(
                chain, targets[start:stop], max_solutions, refine_solutions, tolerance, drawn,
                modes.take(start, stop), orientation_tolerance,
                state if state is None or len(state) == 1 else state[start:stop],
            )
        )  # fmt: skip
    return parts[0] if len(parts) == 1 else concatenate(parts)


def _solve(
    chain: SerialChain,
    targets: FloatArray,
    max_solutions: int,
    refine_solutions: bool,
    tolerance: float,
    drawn: NDArray[np.float32] | None,
    modes: Modes,
    orientation_tolerance: float,
    seed_state: FloatArray | None,
) -> Solutions:
    """solve for one chunk of targets."""
    batch = len(targets)
    tol = tolerance or DEFAULT_TOLERANCE[chain.target]
    rot_tol = orientation_tolerance or DEFAULT_ORIENTATION_TOLERANCE
    seeds = np.nan_to_num(modes.modes.astype(np.float64), nan=0.0)  # (B, M, J)
    score = np.nan_to_num(modes.mass.astype(np.float64), nan=0.0)
    valid = np.arange(seeds.shape[1])[None, :] < modes.num_modes[:, None]
    extra = []
    if drawn is not None:
        extra.append(drawn.astype(np.float64))
    state = None
    if seed_state is not None:
        state = np.broadcast_to(np.asarray(seed_state, dtype=np.float64), (batch, chain.num_joints))
        extra.append(state[:, None, :])
    for more in extra:
        seeds = np.concatenate([seeds, more], axis=1)
        score = np.concatenate([score, np.zeros(more.shape[:2])], axis=1)
        valid = np.concatenate([valid, np.ones(more.shape[:2], dtype=bool)], axis=1)

    if refine_solutions:
        angles, steps = refine(chain, targets, seeds, tol, rot_tol, skip=~valid)
    else:
        angles, steps = seeds, np.zeros(seeds.shape[:2], dtype=np.int32)
    angles = choose_turns(chain, angles, None if state is None else state[:, None, :])
    angles = angles.astype(np.float32).astype(np.float64)  # judged on exactly what is returned
    _, pos, rot = task_errors(chain, goal_of(chain, targets)[:, None], chain.forward(angles))
    inside = chain.within_limits(angles, slack=1e-6)
    exact = meets_tolerances(pos, rot, tol, rot_tol)
    # Refined solutions must be exact and allowed; raw modes are all returned, flagged.
    keep = valid & inside & exact if refine_solutions else valid.copy()
    rank = _ranking(chain, angles, score, pos, state)

    # Merge duplicates: a solution is dropped if a better-ranked kept one lies within MERGE_RADIANS.
    order = np.lexsort((*rank, ~keep), axis=-1)
    rows = np.arange(batch)[:, None]
    angles, pos, rot, score = angles[rows, order], pos[rows, order], rot[rows, order], score[rows, order]
    keep, steps = keep[rows, order], steps[rows, order]
    kept_mass = np.where(keep & valid[rows, order], score, 0.0)  # seeds that failed contribute nothing
    close = _pairwise_close(chain, angles)
    earlier = np.tril(np.ones(close.shape[1:], dtype=bool), k=-1)  # [i, j]: j ranks before i
    duplicate = np.any(close & earlier & keep[:, None, :], axis=-1)
    owner = np.argmax(close & (earlier | np.eye(close.shape[1], dtype=bool)) & keep[:, None, :], axis=-1)
    merged = np.zeros_like(score)
    np.add.at(merged, (np.broadcast_to(rows, owner.shape), owner), kept_mass)
    keep &= ~duplicate
    score = np.where(keep, merged, 0.0)

    order = np.lexsort((*_ranking(chain, angles, score, pos, state), ~keep), axis=-1)
    angles, pos, rot, score = angles[rows, order], pos[rows, order], rot[rows, order], score[rows, order]
    keep, steps = keep[rows, order], steps[rows, order]
    count = keep.sum(axis=1)
    if max_solutions:
        count = np.minimum(count, max_solutions)
    width = int(count.max()) if batch else 0
    shown = np.arange(width)[None, :] < count[:, None]
    return Solutions(
        solutions=np.where(shown[..., None], angles[:, :width], np.nan).astype(np.float32),
        position_error=np.where(shown, pos[:, :width], np.nan).astype(np.float32),
        orientation_error=np.where(shown, rot[:, :width], np.nan).astype(np.float32),
        within_limits=shown & chain.within_limits(angles[:, :width], slack=1e-6),
        score=np.where(shown, score[:, :width], np.nan).astype(np.float32),
        num_solutions=count.astype(np.int32),
        status=_status(chain, targets, count, pos, refine_solutions, tol),
        iterations=np.where(shown, steps[:, :width], 0).astype(np.int32),
    )


def _pairwise_close(chain: SerialChain, angles: NDArray[np.float64]) -> NDArray[np.bool_]:
    """(B, S, S): True where two solutions of a target are within MERGE_RADIANS in every joint.

    One joint at a time (a loop over joints, not rows), so the (B, S, S) temporaries stay small.
    """
    close = np.ones((angles.shape[0], angles.shape[1], angles.shape[1]), dtype=bool)
    for j, periodic in enumerate(chain.periodic.tolist()):
        d = np.abs(angles[:, :, None, j] - angles[:, None, :, j])
        if periodic:
            d = np.minimum(d % TWO_PI, TWO_PI - d % TWO_PI)
        close &= d < MERGE_RADIANS
    return close


def _ranking(
    chain: SerialChain,
    angles: NDArray[np.float64],
    score: NDArray[np.float64],
    pos: NDArray[np.float64],
    state: NDArray[np.float64] | None,
) -> tuple[NDArray[np.float64], ...]:
    """np.lexsort keys, least significant first: by distance to the seed state when given, else
    by mass, then position error."""
    if state is not None:
        distance = np.linalg.norm(joint_distance(chain, angles, state[:, None, :]), axis=-1)
        return pos, distance
    return pos, -score


def reach_bounds(chain: SerialChain) -> tuple[float, float]:
    """Inner and outer radius of what the tip can reach around the first joint, joint limits aside."""
    if chain.target == "planar":
        lengths = [float(np.asarray(j.origin).reshape(3, 4)[0, 3]) for j in chain.joints[1:]]
        lengths.append(float(np.asarray(chain.tip).reshape(3, 4)[0, 3]))
        longest = max(lengths)
        return max(0.0, longest - (sum(lengths) - longest)), float(sum(lengths))
    return 0.0, chain.reach


def _status(
    chain: SerialChain,
    targets: FloatArray,
    count: NDArray[np.integer],
    error: FloatArray,
    refined: bool,
    tolerance: float,
) -> list[str]:
    """ "ok", or why a target got no solution (computed for those targets only)."""
    status = [OK] * len(targets)
    inner, outer = reach_bounds(chain)
    width = 2 if chain.target == "planar" else 3
    centre = chain.base_offset[:width]
    for b in np.flatnonzero(count == 0).tolist():
        r = float(np.linalg.norm(np.asarray(targets[b][:width], dtype=np.float64) - centre))
        if r > outer + 1e-9 or r < inner - 1e-9:
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
