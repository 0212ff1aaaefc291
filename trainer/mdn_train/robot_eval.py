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
    joint_distance,
    solve,
)
from mdn_core.modes import Modes, mixture_modes
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
        metrics["finds_every_restart_solution"] = _coverage(chain, targets[:COVERAGE_POSES], served)
    return metrics


COVERAGE_POSES = 200
RESTARTS = 300
SAME_SOLUTION_RADIANS = 1e-2


def random_restarts(chain: SerialChain, targets: NDArray[np.float64], count: int, seed: int) -> Solutions:
    """The served refinement, merging and checks, from `count` uniform random seeds per target."""
    lim = chain.limits
    shape = (len(targets), count)
    uniform = np.random.default_rng(seed).uniform(lim[:, 0], lim[:, 1], (*shape, chain.num_joints)).astype(np.float32)
    mass = np.full(shape, 1.0 / count, np.float32)
    seeds = Modes(uniform, np.zeros(shape, np.float32), mass, np.full(len(targets), count, np.int32))
    return solve(chain, targets, mass, uniform, np.ones_like(uniform), modes=seeds, num_samples=0)


def _coverage(chain: SerialChain, targets: NDArray[np.float64], served: Solutions) -> float:
    """The fraction of poses for which every distinct solution that RESTARTS uniform random seeds find
    (modulo 2 pi on periodic joints) is among the served request's solutions."""
    found = random_restarts(chain, targets, RESTARTS, RANDOM_SEED + 1)
    covered = []
    for b in range(len(targets)):
        theirs = found.solutions[b, : found.num_solutions[b]].astype(np.float64)
        ours = served.solutions[b, : served.num_solutions[b]].astype(np.float64)
        if not len(theirs):
            covered.append(True)
            continue
        if not len(ours):
            covered.append(False)
            continue
        gap = joint_distance(chain, theirs[:, None, :], ours[None, :, :]).max(axis=-1)  # (theirs, ours)
        covered.append(bool(np.all(gap.min(axis=1) <= SAME_SOLUTION_RADIANS)))
    return float(np.mean(covered))


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
