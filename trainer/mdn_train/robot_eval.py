"""Evaluation of a robot-arm IK model: the served Solve path on held-out reachable poses, and the same
refinement from uniform random seeds at the same seed budget (what random-restart solvers do)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mdn_core.chain import SerialChain, pose_targets, target_features
from mdn_core.ik import (
    DEFAULT_ORIENTATION_TOLERANCE,
    DEFAULT_TOLERANCE,
    default_draws,
    goal_of,
    joint_difference,
    joint_distance,
    solve,
    task_errors,
)
from mdn_core.modes import Modes, mixture_modes
from mdn_core.refine import meets_tolerances, refine
from mdn_core.solutions import Solutions
from numpy.typing import NDArray

from mdn_train.data import Dataset
from mdn_train.evaluate import Predictor, _quantiles

MAX_POSES = 2000
RANDOM_SEED = 12345


def held_out_targets(test: Dataset, count: int = MAX_POSES) -> tuple[SerialChain, NDArray[np.float64]]:
    """The chain and the targets (pose or position) that the held-out joint values reach."""
    chain = test.chain
    assert chain is not None
    reached = chain.forward(test.targets[:count].astype(np.float64))
    if chain.target == "pose":
        return chain, pose_targets(reached)
    return chain, reached[:, :3, 3]


def _summary(found: Solutions) -> dict[str, Any]:
    returned = ~np.isnan(found.position_error)
    out: dict[str, Any] = {
        "success_rate": float(np.mean(found.num_solutions > 0)),
        "solutions_per_target": float(np.mean(found.num_solutions)),
        "position_error": _quantiles(found.position_error[returned]),
        "joint_limit_violations": int(np.sum(returned & ~found.within_limits)),
        "mean_iterations": float(np.mean(found.iterations[returned])) if returned.any() else float("nan"),
    }
    if np.isfinite(found.orientation_error[returned]).any():
        out["orientation_error"] = _quantiles(found.orientation_error[returned])
    return out


def robot_ik_metrics(predict: Predictor, test: Dataset) -> dict[str, Any]:
    """Success, distinct solutions, errors, limit violations and speed of the served IK, against random seeds."""
    chain, targets = held_out_targets(test)
    w, m, s = predict(target_features(chain.target, targets))
    modes = mixture_modes(w, m, s)
    draws = default_draws(chain)
    served = solve(chain, targets, w, m, s, seed=0, modes=modes)
    raw = solve(chain, targets, w, m, s, refine_solutions=False, modes=modes, num_samples=0)
    seeds_per_target = int(np.mean(modes.num_modes)) + draws

    # The same refinement from uniform random seeds, as many per target as the served path used.
    random = random_restarts(chain, targets, seeds_per_target, RANDOM_SEED)

    metrics: dict[str, Any] = {
        "num_targets": len(targets),
        "target": chain.target,
        "tolerance": DEFAULT_TOLERANCE[chain.target],
        "orientation_tolerance": DEFAULT_ORIENTATION_TOLERANCE if chain.target == "pose" else None,
        "seeds_per_target": seeds_per_target,
        "mean_modes_per_target": float(np.mean(modes.num_modes)),
        "served": _summary(served),
        "random_seeds": _summary(random),
        "seed_position_error_before_refinement": _quantiles(raw.position_error[~np.isnan(raw.position_error)]),
    }
    for batch in (1, 256):
        metrics[f"solutions_per_second_batch_{batch}"] = _speed(predict, chain, targets[:batch])
    if chain.num_joints == 6 and chain.target == "pose":  # finitely many solutions per pose: are they all found?
        metrics.update(_coverage(chain, targets[:COVERAGE_POSES], served))
    return metrics


COVERAGE_POSES = 200
RESTARTS = 300
SAME_SOLUTION_RADIANS = 1e-2
PATH_STEP = 5e-3  # radians between the configurations checked on the way from one solution to another
MAX_PATH_POINTS = 512
PATH_CANDIDATES = 3  # served solutions (the nearest) a restart's solution may be joined to


def random_restarts(chain: SerialChain, targets: NDArray[np.float64], count: int, seed: int) -> Solutions:
    """The served refinement, merging and checks, from `count` uniform random seeds per target."""
    lim = chain.limits
    shape = (len(targets), count)
    uniform = np.random.default_rng(seed).uniform(lim[:, 0], lim[:, 1], (*shape, chain.num_joints)).astype(np.float32)
    mass = np.full(shape, 1.0 / count, np.float32)
    seeds = Modes(uniform, np.zeros(shape, np.float32), mass, np.full(len(targets), count, np.int32))
    return solve(chain, targets, mass, uniform, np.ones_like(uniform), modes=seeds, num_samples=0)


def one_solution(
    chain: SerialChain, targets: NDArray[np.float64], a: NDArray[np.float64], b: NDArray[np.float64]
) -> NDArray[np.bool_]:
    """Whether configurations a and b (P, J), both meeting the default tolerances for targets (P, width),
    are one solution: joined by configurations that all meet them too.

    Near a singularity the tolerances admit a thin, long set of configurations around the exact
    solution (at a UR5's wrist singularity, tenths of a radian along the direction the arm cannot
    feel), and random restarts stop at points of it a few hundredths of a radian apart. The path
    checked: the straight one from a to b (the turn of each periodic joint nearest a), every
    PATH_STEP at most, each point refined onto the target by the served refinement (damped least
    squares moves it the shortest way). One solution when every refined point meets the tolerances
    and no two neighbours are more than SAME_SOLUTION_RADIANS apart; between two distinct solutions
    the refined points jump from one to the other.
    """
    tol, rot_tol = DEFAULT_TOLERANCE[chain.target], DEFAULT_ORIENTATION_TOLERANCE
    step = joint_difference(chain, a, b)
    count = int(min(MAX_PATH_POINTS, np.ceil(np.abs(step).max(initial=0.0) / PATH_STEP))) + 1
    t = np.linspace(0.0, 1.0, count)
    path = a[:, None, :] + t[None, :, None] * step[:, None, :]
    onto, _ = refine(chain, targets, path, tol, rot_tol)
    _, pos, rot = task_errors(chain, goal_of(chain, targets)[:, None], chain.forward(onto))
    meets = np.all(meets_tolerances(pos, rot, tol, rot_tol), axis=1)
    jump = joint_distance(chain, onto[:, 1:], onto[:, :-1]).max(axis=(1, 2), initial=0.0)
    out: NDArray[np.bool_] = meets & (jump <= SAME_SOLUTION_RADIANS)
    return out


def _coverage(chain: SerialChain, targets: NDArray[np.float64], served: Solutions) -> dict[str, float]:
    """For how many poses every distinct solution that RESTARTS uniform random seeds find (modulo 2 pi
    on periodic joints) is among the served request's solutions:

    - finds_every_restart_solution: a restart's solution is found when a served one lies within
      SAME_SOLUTION_RADIANS in every joint, or is one solution with it (one_solution, tried with
      the PATH_CANDIDATES nearest);
    - finds_every_restart_point: within SAME_SOLUTION_RADIANS only, so that the restarts' points of
      one near-singular solution count as several.
    """
    found = random_restarts(chain, targets, RESTARTS, RANDOM_SEED + 1)
    points, solutions = [], []
    for b in range(len(targets)):
        theirs = found.solutions[b, : found.num_solutions[b]].astype(np.float64)
        ours = served.solutions[b, : served.num_solutions[b]].astype(np.float64)
        if not len(theirs) or not len(ours):
            points.append(not len(theirs))
            solutions.append(not len(theirs))
            continue
        gap = joint_distance(chain, theirs[:, None, :], ours[None, :, :]).max(axis=-1)  # (theirs, ours)
        missed = np.flatnonzero(gap.min(axis=1) > SAME_SOLUTION_RADIANS)
        points.append(not missed.size)
        if not missed.size:
            solutions.append(True)
            continue
        nearest = np.argsort(gap[missed], axis=1)[:, :PATH_CANDIDATES]  # (missed, candidates)
        pairs = (np.repeat(missed, nearest.shape[1]), nearest.reshape(-1))
        joined = one_solution(chain, np.repeat(targets[b : b + 1], len(pairs[0]), axis=0),
                              theirs[pairs[0]], ours[pairs[1]]).reshape(nearest.shape)  # fmt: skip
        solutions.append(bool(np.all(joined.any(axis=1))))
    return {"finds_every_restart_solution": float(np.mean(solutions)),
            "finds_every_restart_point": float(np.mean(points))}  # fmt: skip


def _speed(predict: Predictor, chain: SerialChain, targets: NDArray[np.float64], repeats: int = 3) -> float:
    """Verified solutions per second for one batch: the network, the mode search and the refinement."""
    best, count = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        w, m, s = predict(target_features(chain.target, targets))
        found = solve(chain, targets, w, m, s, seed=0)
        best = min(best, time.perf_counter() - start)
        count = int(found.num_solutions.sum())
    return count / best
