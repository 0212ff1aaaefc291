"""PNG plots of a trained model (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from mdn_core.chain import SerialChain, target_features
from mdn_core.ik import solve
from mdn_core.kinematics import PlanarArm
from mdn_core.mixture import log_density, sample_mixture
from mdn_core.modes import mixture_modes
from mdn_core.solutions import Solutions
from numpy.typing import NDArray

from mdn_train.data import Dataset
from mdn_train.evaluate import Baseline, Predictor
from mdn_train.robot_eval import held_out_targets


def make_plots(out_dir: Path, test: Dataset, predict: Predictor, baseline: Baseline) -> list[Path]:
    """The plots that apply to this dataset; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if test.task == "inverse_sine":
        return [_toy_density(out_dir, test, predict, baseline), _toy_weights(out_dir, test, predict)]
    if test.arm is None and test.chain is not None:
        return [_robot_solutions(out_dir, test, predict), _seed_errors(out_dir, test, predict)]
    if test.arm is not None:
        plots = [_arm_errors(out_dir, test, predict, baseline)]
        if test.arm.num_joints == 2:
            plots.append(_arm_solutions(out_dir, test, predict, baseline))
        return [*plots, _arm_ik_configurations(out_dir, test, predict)]
    return [_table_samples(out_dir, test, predict, baseline), _table_weights(out_dir, test, predict)]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _toy_density(out_dir: Path, test: Dataset, predict: Predictor, baseline: Baseline) -> Path:
    t = np.linspace(test.inputs.min(), test.inputs.max(), 300, dtype=np.float32)[:, None]
    xs = np.linspace(-0.1, 1.1, 300)
    w, m, s = predict(t)
    grid = np.broadcast_to(xs[None, :, None], (len(t), len(xs), 1))
    density = np.exp(log_density(w, m, s, grid))  # (T, X)
    modes = mixture_modes(w, m, s)

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    ax = axes[0]
    ax.scatter(test.inputs[:, 0], test.targets[:, 0], s=2, alpha=0.3, color="0.4", label="held-out data")
    ax.plot(t[:, 0], baseline(t)[:, 0], color="tab:red", lw=2, label="least squares (conditional mean)")
    ax.set(xlabel="t (input)", ylabel="x (target)", title="Least squares averages the branches")
    ax.legend(loc="upper left")
    ax = axes[1]
    # Scaled per column so every t shows the shape of its conditional, wide or narrow.
    shape = density / density.max(axis=1, keepdims=True)
    ax.pcolormesh(t[:, 0], xs, shape.T, shading="auto", cmap="viridis")
    tt = np.broadcast_to(t[:, None, :], (*modes.modes.shape[:2], 1))
    ax.scatter(tt[..., 0], modes.modes[..., 0], s=2, color="tab:red", label="modes of p(x|t)")
    ax.set(xlabel="t (input)", title="MDN p(x|t), scaled to its maximum at each t, and its modes")
    ax.legend(loc="upper left")
    return _save(fig, out_dir / "toy_density.png")


def _toy_weights(out_dir: Path, test: Dataset, predict: Predictor) -> Path:
    t = np.linspace(test.inputs.min(), test.inputs.max(), 300, dtype=np.float32)[:, None]
    w, _, _ = predict(t)
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in range(w.shape[1]):
        ax.plot(t[:, 0], w[:, k], label=f"pi_{k}")
    ax.set(xlabel="t (input)", ylabel="mixing coefficient", title="Mixing coefficients against the input")
    ax.legend(ncol=2, fontsize="small")
    return _save(fig, out_dir / "toy_weights.png")


def _arm_errors(out_dir: Path, test: Dataset, predict: Predictor, baseline: Baseline) -> Path:
    arm = test.arm
    assert arm is not None
    x = test.inputs[:3000]
    ls_err = np.linalg.norm(arm.forward(baseline(x).astype(np.float64)) - x, axis=-1)
    w, m, s = predict(x)
    modes = mixture_modes(w, m, s)
    mdn_err = np.linalg.norm(arm.forward(modes.modes[:, 0].astype(np.float64)) - x, axis=-1)
    low = max(1e-6, float(min(ls_err.min(), mdn_err.min())))
    norm = LogNorm(vmin=low, vmax=max(float(ls_err.max()), float(mdn_err.max()), low * 10))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, err, title in (
        (axes[0], ls_err, "least squares"),
        (axes[1], mdn_err, "MDN (highest-mass mode)"),
    ):
        sc = ax.scatter(x[:, 0], x[:, 1], c=err, s=4, cmap="magma", norm=norm)
        ax.set(xlabel="ee_x", title=f"{title}: median FK error {np.median(err):.2g}", aspect="equal")
    axes[0].set_ylabel("ee_y")
    fig.colorbar(sc, ax=axes, label="end-effector position error", shrink=0.8)
    fig.savefig(out_dir / "arm_workspace_errors.png", dpi=110)
    plt.close(fig)
    return out_dir / "arm_workspace_errors.png"


def _draw_arm(ax: Axes, arm: PlanarArm, angles: NDArray[np.floating], **style: Any) -> None:
    cumulative = np.cumsum(angles)
    lengths = np.asarray(arm.link_lengths)
    joints = np.vstack(
        [[0.0, 0.0], np.cumsum(np.stack([lengths * np.cos(cumulative), lengths * np.sin(cumulative)], 1), 0)]
    )
    ax.plot(joints[:, 0], joints[:, 1], marker="o", ms=3, **style)


def _arm_solutions(out_dir: Path, test: Dataset, predict: Predictor, baseline: Baseline) -> Path:
    arm = test.arm
    assert arm is not None
    _, feasible = arm.two_link_ik(test.inputs.astype(np.float64))
    both = np.flatnonzero(feasible.all(-1))[:4]
    x = test.inputs[both]
    w, m, s = predict(x)
    modes = mixture_modes(w, m, s)
    ls = baseline(x)
    fig, axes = plt.subplots(1, len(both), figsize=(4 * max(1, len(both)), 4.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for j in range(int(modes.num_modes[i])):
            _draw_arm(
                ax,
                arm,
                modes.modes[i, j],
                color=f"C{j}",
                lw=2,
                label=f"MDN mode {j + 1} (mass {modes.mass[i, j]:.2f})",
            )
        _draw_arm(ax, arm, ls[i], color="tab:red", lw=1.5, ls="--", label="least squares")
        ax.plot(*x[i], marker="*", ms=14, color="k", ls="none", label="target")
        ax.set(
            aspect="equal",
            xlim=(-0.1, 1.05),
            ylim=(-0.1, 1.05),
            title=f"target ({x[i, 0]:.2f}, {x[i, 1]:.2f})",
        )
        ax.legend(fontsize="x-small", loc="upper left")
    return _save(fig, out_dir / "arm_solutions.png")


def _arm_ik_configurations(out_dir: Path, test: Dataset, predict: Predictor) -> Path:
    """One target reached by every configuration the served IK returns for it."""
    arm = test.arm
    assert arm is not None
    x = test.inputs[:200]
    w, m, s = predict(x)
    found = solve(arm.chain, x.astype(np.float64), w, m, s)
    b = int(np.argmax(found.num_solutions))
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for j in range(int(found.num_solutions[b])):
        _draw_arm(ax, arm, found.solutions[b, j].astype(np.float64), color=f"C{j % 10}", lw=1.8, alpha=0.8,
                  label=f"mass {found.score[b, j]:.2f}, error {found.position_error[b, j]:.1e}")  # fmt: skip
    ax.plot(*x[b], marker="*", ms=16, color="k", ls="none", label="target")
    reach = arm.reach
    ax.set(aspect="equal", xlim=(-0.3 * reach, 1.05 * reach), ylim=(-0.3 * reach, 1.05 * reach),
           title=f"{found.num_solutions[b]} IK solutions for ({x[b, 0]:.2f}, {x[b, 1]:.2f})")  # fmt: skip
    ax.legend(fontsize="x-small", loc="lower right")
    return _save(fig, out_dir / "arm_ik_solutions.png")


def _robot_solve(
    test: Dataset, predict: Predictor, count: int, **options: Any
) -> tuple[SerialChain, NDArray[np.float64], Solutions]:
    """The served solve on `count` held-out targets: (chain, targets, solutions)."""
    chain, targets = held_out_targets(test, count)
    w, m, s = predict(target_features(chain.target, targets))
    return chain, targets, solve(chain, targets, w, m, s, seed=0, **options)


def _robot_solutions(out_dir: Path, test: Dataset, predict: Predictor) -> Path:
    """Several served solutions for one pose, drawn as 3-D stick figures of the arm."""
    chain, targets, found = _robot_solve(test, predict, 64)
    b = int(np.argmax(found.num_solutions))
    fig = plt.figure(figsize=(6.5, 6))
    ax = fig.add_subplot(projection="3d")
    shown = min(int(found.num_solutions[b]), 8)
    for j in range(shown):
        points = chain.joint_positions(found.solutions[b, j].astype(np.float64))
        ax.plot(*points.T, marker="o", ms=3, lw=2, color=f"C{j}", label=f"mass {found.score[b, j]:.2f}")
    ax.scatter(*targets[b, :3], marker="*", s=200, color="k", label="target")
    ax.set(xlabel="x (m)", ylabel="y (m)", zlabel="z (m)",
           title=f"{shown} of {int(found.num_solutions[b])} solutions for one pose ({test.task})")  # fmt: skip
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, out_dir / "robot_solutions.png")


def _seed_errors(out_dir: Path, test: Dataset, predict: Predictor) -> Path:
    """How far the mixture's modes land from the target before refinement, against uniform seeds."""
    chain, targets, raw = _robot_solve(test, predict, 500, refine_solutions=False, num_samples=0)
    errors = raw.position_error[~np.isnan(raw.position_error)]
    uniform = np.random.default_rng(0).uniform(chain.limits[:, 0], chain.limits[:, 1], (len(targets), chain.num_joints))
    random_errors = np.linalg.norm(chain.forward(uniform)[:, :3, 3] - targets[:, :3], axis=-1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.logspace(-4, 0.5, 50).tolist()
    ax.hist(np.clip(errors, 1e-4, None), bins=bins, alpha=0.7, label="mixture modes")
    ax.hist(np.clip(random_errors, 1e-4, None), bins=bins, alpha=0.7, label="uniform random seeds")
    ax.set(xscale="log", xlabel="position error of the seed before refinement (m)", ylabel="seeds",
           title="Where refinement starts")  # fmt: skip
    ax.legend()
    return _save(fig, out_dir / "seed_errors.png")


def calibration_plot(out_dir: Path, calibration: dict[str, Any]) -> Path:
    """PIT histograms per output (flat at 1 when calibrated) and nominal against observed coverage."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mdn, base = calibration["mdn"], calibration["baseline"]
    names = list(mdn["outputs"])
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.2 * (len(names) + 1), 3.0), squeeze=False)
    edges = np.linspace(0.0, 1.0, len(mdn["outputs"][names[0]]["pit_histogram"]) + 1)
    for ax, name in zip(axes[0], names, strict=False):
        for label, source, style in (("MDN", mdn, {"color": "C0"}), ("least squares", base, {"color": "C3"})):
            density = np.asarray(source["outputs"][name]["pit_histogram"]) * (len(edges) - 1)
            ax.stairs(density, edges, label=label, linewidth=1.5, **style)
        ax.axhline(1.0, color="k", linestyle=":", linewidth=1)
        ax.set_title(f"PIT: {name}")
        ax.set_xlabel("predicted CDF at the true value")
    axes[0][0].set_ylabel("density (1 = calibrated)")
    axes[0][0].legend(fontsize=7)
    ax = axes[0][-1]
    levels = np.array([0.5, 0.9, 0.95])
    for label, source, color in (("MDN", mdn, "C0"), ("least squares", base, "C3")):
        hdr = [source[f"hdr_{int(c * 100)}"] for c in levels]
        central = [np.mean([source["outputs"][n][f"central_{int(c * 100)}"] for n in names]) for c in levels]
        ax.plot(levels, hdr, "o-", color=color, label=f"{label}: highest-density region")
        ax.plot(levels, central, "s--", color=color, label=f"{label}: central intervals", alpha=0.6)
    ax.plot([0.4, 1.0], [0.4, 1.0], "k:", linewidth=1)
    ax.set_xlabel("nominal probability")
    ax.set_ylabel("observed fraction")
    ax.set_title("coverage")
    ax.legend(fontsize=6)
    return _save(fig, out_dir / "calibration.png")


TABLE_PANELS = 4  # inputs and outputs shown at most, each


def _table_samples(out_dir: Path, test: Dataset, predict: Predictor, baseline: Baseline) -> Path:
    """Any table: each output against each input, for the held-out rows, one draw of the mixture at
    each row's inputs, the heaviest mode and the least-squares prediction."""
    rows = test.subset(np.arange(min(len(test.inputs), 2000)))
    w, m, s = predict(rows.inputs)
    draws = sample_mixture(w, m, s, 1, np.random.default_rng(0))[:, 0]
    top = mixture_modes(w, m, s, max_modes=1).modes[:, 0]
    least_squares = baseline(rows.inputs)
    ins, outs = min(len(rows.input_names), TABLE_PANELS), min(len(rows.target_names), TABLE_PANELS)
    fig, axes = plt.subplots(outs, ins, figsize=(4.2 * ins, 3.4 * outs), squeeze=False)
    for j in range(outs):
        for i in range(ins):
            ax = axes[j][i]
            x = rows.inputs[:, i]
            ax.scatter(x, rows.targets[:, j], s=4, color="0.7", label="held-out data")
            ax.scatter(x, draws[:, j], s=4, color="tab:blue", alpha=0.6, label="MDN: one draw per row")
            ax.scatter(x, top[:, j], s=4, color="tab:green", alpha=0.6, label="MDN: heaviest mode")
            ax.scatter(x, least_squares[:, j], s=4, color="tab:orange", alpha=0.6, label="least squares")
            ax.set_xlabel(rows.input_names[i])
            ax.set_ylabel(rows.target_names[j])
    axes[0][0].legend(fontsize=7, markerscale=3)
    fig.suptitle("held-out data, MDN draws and modes, least squares", fontsize=10)
    return _save(fig, out_dir / "table_samples.png")


def _table_weights(out_dir: Path, test: Dataset, predict: Predictor) -> Path:
    """Any table: the mixture weights against each input (which components the network uses where)."""
    rows = test.subset(np.arange(min(len(test.inputs), 2000)))
    w, _, _ = predict(rows.inputs)
    used = np.argsort(w.mean(axis=0))[::-1][:8]  # the components with the most weight on average
    ins = min(len(rows.input_names), TABLE_PANELS)
    fig, axes = plt.subplots(1, ins, figsize=(4.2 * ins, 3.4), squeeze=False)
    for i in range(ins):
        order = np.argsort(rows.inputs[:, i])
        for k in used:
            axes[0][i].plot(rows.inputs[order, i], w[order, k], lw=0.8, label=f"component {k}")
        axes[0][i].set_xlabel(rows.input_names[i])
        axes[0][i].set_ylabel("weight")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("mixture weights (most used components)", fontsize=10)
    return _save(fig, out_dir / "table_weights.png")
