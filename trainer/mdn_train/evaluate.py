"""Evaluate an exported model through ONNX Runtime and the server's mixture math."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mdn_core.ik import solve
from mdn_core.kinematics import PlanarArm
from mdn_core.mixture import log_density
from mdn_core.model import Mixture, load_graph
from mdn_core.modes import mixture_modes
from numpy.typing import NDArray

from mdn_train.calibration import baseline_calibration, mdn_calibration
from mdn_train.data import INVERSE_SINE_NOISE, Dataset, inverse_sine_forward

Predictor = Callable[[NDArray[np.float32]], Mixture]  # x (B, in_dim) -> the mixture
Baseline = Callable[[NDArray[np.float32]], NDArray[np.float32]]

BRANCH_TOLERANCE = 0.05  # rad: a mode this close (Euclidean, joint space) covers an analytic branch


class OnnxMixture:
    """Runs an exported graph (opened by mdn_core.model, metadata or not): x (B, in_dim) -> weights, means, scales."""

    def __init__(self, model: Path | bytes, chunk: int = 8192) -> None:
        self.model = load_graph(model)
        self.chunk = chunk

    def __call__(self, x: NDArray[np.float32]) -> Mixture:
        return self.model.run_chunked(x, self.chunk)


def gaussian_nll(pred: NDArray[np.floating], targets: NDArray[np.floating], std: NDArray[np.floating]) -> float:
    """Mean NLL of targets under N(pred, diag(std^2)) (the least-squares model as a density)."""
    z = (targets - pred) / std
    per_row = 0.5 * np.sum(z * z + np.log(2 * np.pi * std * std), axis=-1)
    return float(np.mean(per_row))


def inverse_sine_optimal_nll(t: NDArray[np.floating], grid_size: int = 400_001) -> NDArray[np.float64]:
    """-log p(x|t) of the exact conditional, uniform on {x in (0,1): |t - f(x)| <= noise}.

    The set's length is measured on a dense grid of x; returns the NLL per t (the same for
    every x in the set, so this is the best achievable NLL at that t).
    """
    grid = np.linspace(0.0, 1.0, grid_size)
    f_sorted = np.sort(inverse_sine_forward(grid))
    count = np.searchsorted(f_sorted, t + INVERSE_SINE_NOISE, side="right") - np.searchsorted(
        f_sorted, t - INVERSE_SINE_NOISE, side="left"
    )
    length = np.maximum(count, 1) / grid_size
    out: NDArray[np.float64] = np.log(length)
    return out


def _quantiles(errors: NDArray[np.floating]) -> dict[str, float]:
    if errors.size == 0:
        return {k: float("nan") for k in ("median", "p95", "p99", "max", "mean")}
    return {
        "median": float(np.median(errors)),
        "p95": float(np.percentile(errors, 95)),
        "p99": float(np.percentile(errors, 99)),
        "max": float(np.max(errors)),
        "mean": float(np.mean(errors)),
    }


def branch_gaps(branches: NDArray[np.floating], returned: NDArray[np.floating]) -> NDArray[np.floating]:
    """Distance from each analytic branch (B, 2, J) to every returned configuration (B, M, J): (B, 2, M).

    NaN padding in `returned` gives infinite distance.
    """
    gap = np.linalg.norm(branches[:, :, None, :] - returned[:, None, :, :], axis=-1)
    out: NDArray[np.floating] = np.where(np.isnan(gap), np.inf, gap)
    return out


def coverage(gap: NDArray[np.floating], feasible: NDArray[np.bool_]) -> float:
    """Fraction of targets where every feasible branch has a returned configuration within tolerance."""
    nearest = np.min(gap, axis=-1, initial=np.inf)  # (B, 2)
    return float(np.mean(np.all(~feasible | (nearest <= BRANCH_TOLERANCE), axis=-1)))


def arm_metrics(
    arm: PlanarArm, targets: NDArray[np.floating], modes: NDArray[np.floating], num_modes: NDArray[np.integer]
) -> dict[str, Any]:
    """Branch coverage and FK error of the returned modes against the closed-form IK."""
    solutions, feasible = arm.two_link_ik(targets)  # (B, 2, J), (B, 2)
    gap = branch_gaps(solutions, modes)
    valid = ~np.isnan(modes[..., 0])
    fk_error = np.linalg.norm(arm.forward(modes) - targets[:, None, :], axis=-1)[valid]
    within = arm.within_limits(modes, slack=1e-3)[valid]
    # Precision: the fraction of returned modes that lie near some feasible analytic branch.
    near_gap = np.where(feasible[:, :, None], gap, np.inf)
    near = (np.min(near_gap, axis=1) <= BRANCH_TOLERANCE)[valid]
    return {
        "num_targets": len(targets),
        "branch_coverage": coverage(gap, feasible),
        "targets_with_two_feasible_branches": float(np.mean(feasible.sum(-1) == 2)),
        "mean_modes_per_target": float(np.mean(num_modes)),
        "mode_precision": float(np.mean(near)) if near.size else float("nan"),
        "modes_within_joint_limits": float(np.mean(within)) if within.size else float("nan"),
        "mdn_fk_error": _quantiles(fk_error),
    }


def evaluate(
    predict: Predictor, baseline: Baseline, baseline_std: NDArray[np.floating], test: Dataset
) -> dict[str, Any]:
    """Held-out metrics of the exported MDN and the least-squares baseline."""
    x, y = test.inputs, test.targets
    w, m, s = predict(x)
    metrics: dict[str, Any] = {
        "num_test": len(x),
        "mdn_nll": float(-np.mean(log_density(w, m, s, y))),
        "baseline_nll": gaussian_nll(baseline(x), y, baseline_std),
    }
    names = list(test.target_names)
    metrics["calibration"] = {
        "mdn": mdn_calibration(w, m, s, y, names),
        "baseline": baseline_calibration(baseline(x), baseline_std, y, names),
    }
    if test.task == "inverse_sine":
        best = float(np.mean(inverse_sine_optimal_nll(x[:, 0].astype(np.float64))))
        metrics["optimal_nll"] = best
        metrics["nll_gap"] = metrics["mdn_nll"] - best
    if test.arm is not None and test.arm.num_joints == 2:
        modes = mixture_modes(w, m, s)
        metrics.update(arm_metrics(test.arm, x.astype(np.float64), modes.modes, modes.num_modes))
    if test.arm is not None:
        ls_fk = np.linalg.norm(test.arm.forward(baseline(x).astype(np.float64)) - x, axis=-1)
        metrics["baseline_fk_error"] = _quantiles(ls_fk)
        metrics["ik"] = ik_metrics(test.arm, x.astype(np.float64), w, m, s)
    return metrics


def ik_metrics(
    arm: PlanarArm, targets: NDArray[np.float64], w: NDArray[np.float32], m: NDArray[np.float32], s: NDArray[np.float32]
) -> dict[str, Any]:
    """The served IK path (mdn_serve.ik.solve): modes as seeds, refined within the joint limits."""
    raw = solve(arm.chain, targets, w, m, s, refine_solutions=False)
    found = solve(arm.chain, targets, w, m, s)
    returned = ~np.isnan(found.position_error)
    batch = min(1024, len(targets))
    start = time.perf_counter()
    timed = solve(arm.chain, targets[:batch], w[:batch], m[:batch], s[:batch])
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {
        "targets_with_a_solution": float(np.mean(found.num_solutions > 0)),
        "solutions_per_target": float(np.mean(found.num_solutions)),
        "fk_error_before_refinement": _quantiles(raw.position_error[~np.isnan(raw.position_error)]),
        "fk_error_after_refinement": _quantiles(found.position_error[returned]),
        "joint_limit_violations": int(np.sum(returned & ~found.within_limits)),
        "targets_per_second_batch_1024": batch / seconds,
        "solutions_per_second_batch_1024": float(timed.num_solutions.sum()) / seconds,
    }
    if arm.num_joints == 2:
        branches, feasible = arm.two_link_ik(targets)
        sol = np.where(returned[..., None], found.solutions, np.nan)
        out["branch_coverage"] = coverage(branch_gaps(branches, sol), feasible)
    else:
        # A redundant arm has a continuum of solutions: how far apart are the ones returned?
        several = found.num_solutions > 1
        sol = np.where(returned[..., None], found.solutions, np.nan)[several]
        spread = np.nanstd(sol, axis=1).mean(axis=-1) if several.any() else np.zeros(0)
        out["joint_spread_rad"] = _quantiles(spread)
    return out


ARM_TARGETS = {
    "branch_coverage": (">=", 0.98),
    "mdn_fk_error.median": ("<=", 0.001),
    "mdn_fk_error.p95": ("<=", 0.005),
    "ik.branch_coverage": (">=", 0.99),
    "ik.fk_error_after_refinement.p95": ("<=", 1e-6),
    "ik.joint_limit_violations": ("<=", 0),
}
TOY_TARGETS = {"nll_gap": ("<=", 0.12)}


def _lookup(metrics: dict[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


ROBOT_TARGETS = {
    "ik.served.success_rate": (">=", 0.995),
    "ik.served.joint_limit_violations": ("<=", 0),
}
# Solutions per second are the Panda's target: a UR5 pose has only a handful of solutions to find.
PANDA_TARGETS = {"ik.served.solutions_per_target": (">=", 8), "ik.solutions_per_second_batch_256": (">=", 20_000)}
UR5_TARGETS = {"ik.finds_every_restart_solution": (">=", 0.99)}


def target_checks(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Each project target that applies to these metrics, with whether it was met."""
    robot = isinstance(metrics.get("ik"), dict) and "served" in metrics["ik"]
    targets = {
        **(ARM_TARGETS if "branch_coverage" in metrics else {}),
        **(TOY_TARGETS if "nll_gap" in metrics else {}),
        **(ROBOT_TARGETS if robot else {}),
        **(PANDA_TARGETS if robot and metrics.get("robot") == "panda" else {}),
        **(UR5_TARGETS if robot and metrics.get("robot") == "ur5" else {}),
    }
    checks = []
    for key, (op, bound) in targets.items():
        value = _lookup(metrics, key)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        checks.append({"metric": key, "target": f"{op} {bound}", "value": value, "met": bool(met)})
    return checks


def write_report(run_dir: Path, model_name: str, version: str, metrics: dict[str, Any], plots: list[Path]) -> None:
    """runs/<model>/report.json and report.md."""
    checks = target_checks(metrics)
    report = {
        "model": model_name,
        "version": version,
        "metrics": metrics,
        "targets": checks,
        "plots": [p.name for p in plots],
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    lines = [
        f"# Evaluation: {model_name} version {version}",
        "",
        f"Held-out test set of {metrics['num_test']} rows, exported ONNX model run through ONNX Runtime.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, value in _flatten(metrics):
        lines.append(f"| {key} | {_fmt(value)} |")
    if checks:
        lines += ["", "## Targets", "", "| metric | target | value | met |", "|---|---|---|---|"]
        lines += [
            f"| {c['metric']} | {c['target']} | {_fmt(c['value'])} | {'yes' if c['met'] else 'no'} |" for c in checks
        ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((prefix + key, value))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)
