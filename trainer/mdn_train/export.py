"""Export trained MDNs to ONNX, check parity, evaluate and plot: `mdn-export`.

Writes models/<name>/<version>/model.onnx. The file is built in a hidden staging folder
inside the repository and renamed into place only once it is complete, so a reader never
sees a half-written version.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from mdn_core.contract import (
    INPUT_NAME,
    METADATA_KEY,
    MODEL_FILENAME,
    OUTPUT_NAMES,
    ContractError,
    build_metadata,
    parse_kinematics,
)
from mdn_core.kinematics import PlanarArm
from mdn_core.model import load_model

from mdn_train.config import RunConfig
from mdn_train.data import Dataset, make_dataset, split
from mdn_train.errors import TrainerError
from mdn_train.evaluate import OnnxMixture, evaluate, target_checks, write_report
from mdn_train.model import MDN, LeastSquares, MixtureExport
from mdn_train.plots import calibration_plot, make_plots
from mdn_train.robot_eval import robot_ik_metrics
from mdn_train.train import CHECKPOINT, load_checkpoint

PARITY_TOLERANCE = 1e-5  # absolute, plus PARITY_RELATIVE times the output's largest value
PARITY_RELATIVE = 1e-4
PARITY_BATCHES = (1, 1000)
OPSET = 20


def restore_models(checkpoint: dict[str, Any]) -> tuple[RunConfig, MDN, LeastSquares]:
    run = RunConfig.from_dict(checkpoint["config"])
    in_dim, out_dim = len(checkpoint["input_names"]), len(checkpoint["output_names"])
    mdn = MDN(in_dim, out_dim, run.model)
    mdn.load_state_dict(checkpoint["mdn_state"])
    baseline = LeastSquares(in_dim, out_dim, run.train.baseline_hidden, run.model.activation)
    baseline.load_state_dict(checkpoint["baseline_state"])
    return run, mdn.eval(), baseline.eval()


def export_onnx(mdn: MDN, path: Path) -> None:
    """Trace the raw-unit mixture head to ONNX with a dynamic batch dimension."""
    example = torch.zeros(2, mdn.in_dim)
    batch = torch.export.Dim("batch")
    # The exporter reports progress on stdout and through warnings; keep the CLI's output ours.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        program = torch.onnx.export(
            MixtureExport(mdn),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"x": {0: batch}},
            opset_version=OPSET,
            verbose=False,
        )
    assert program is not None
    program.save(str(path))


def check_parity(mdn: MDN, model_bytes: bytes, seed: int = 0) -> float:
    """Max abs difference between ONNX Runtime and PyTorch; raises where an output differs by more
    than PARITY_TOLERANCE + PARITY_RELATIVE * (that output's largest magnitude): float32 kernels
    sum in another order, and wide networks fed inputs far from the data reach large values."""
    runner = OnnxMixture(model_bytes)
    rng = np.random.default_rng(seed)
    mean, std = mdn.x_norm.mean.numpy(), mdn.x_norm.std.numpy()
    worst = 0.0
    for batch in PARITY_BATCHES:
        x = (mean + std * rng.standard_normal((batch, mdn.in_dim))).astype(np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in mdn.mixture(torch.from_numpy(x))]
        got = runner(x)
        for name, a, b in zip(OUTPUT_NAMES, got, expected, strict=True):
            if a.shape != b.shape:
                raise TrainerError(f"parity: {name} has shape {a.shape} in ONNX, {b.shape} in PyTorch")
            gap = np.abs(a - b)
            worst = max(worst, float(np.max(gap)))
            allowed = PARITY_TOLERANCE + PARITY_RELATIVE * float(np.max(np.abs(b)))
            if np.max(gap) > allowed:
                raise TrainerError(
                    f"ONNX Runtime differs from PyTorch in {name} by {np.max(gap):.3g} (allowed {allowed:.3g}: "
                    f"{PARITY_TOLERANCE:g} + {PARITY_RELATIVE:g} x the largest |{name}|)"
                )
    return worst


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def checkpoint_digest(path: Path) -> str:
    """sha256 of a checkpoint file: the same digest means the same trained weights."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def exported_from(model_dir: Path) -> tuple[int, str] | None:
    """(latest version, the checkpoint digest it was exported from), if it records one."""
    latest = next_version(model_dir) - 1
    path = model_dir / str(latest) / MODEL_FILENAME
    if latest < 1 or not path.is_file():
        return None
    try:
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        digest = json.loads(props[METADATA_KEY]).get("checkpoint_sha256")
    except Exception:  # no metadata, or a file onnx cannot read: nothing to compare, export as usual
        return None
    return (latest, digest) if isinstance(digest, str) else None


def export_run(
    run_dir: Path, models_dir: Path, version: int | None = None, plots: bool = True, force: bool = False
) -> Path:
    """Export, check and evaluate one trained run; returns the final model.onnx path.

    Without a version and without force, a run whose checkpoint is the one the latest version was
    exported from is not exported again (that version's path is returned).
    """
    checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    run, mdn, baseline = restore_models(checkpoint)
    target_dir = models_dir / run.name
    digest = checkpoint_digest(run_dir / CHECKPOINT)
    previous = exported_from(target_dir) if version is None and not force else None
    if previous is not None and previous[1] == digest:
        print(f"{run.name}: unchanged since version {previous[0]} (same checkpoint, sha256 {digest[:12]}); "
              "not exported again (--force exports a new version anyway)", flush=True)  # fmt: skip
        return target_dir / str(previous[0]) / MODEL_FILENAME
    ver = version if version is not None else next_version(target_dir)
    if ver < 1:
        raise TrainerError(f"versions are positive integers, got {ver}")
    final = target_dir / str(ver)
    if final.exists():
        raise TrainerError(f"{final} already exists; pick another --version or omit it for the next free one")

    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=models_dir))
    try:
        onnx_path = staging / MODEL_FILENAME
        export_onnx(mdn, onnx_path)
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model, full_check=True)
        max_err = check_parity(mdn, model.SerializeToString())

        test = _test_split(run, checkpoint)
        predictor = OnnxMixture(model.SerializeToString())

        def predict_baseline(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                pred, _ = baseline(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
            out: np.ndarray = pred.numpy()
            return out

        residual_std = checkpoint["baseline_residual_std"].numpy().astype(np.float64)
        metrics = evaluate(predictor, predict_baseline, residual_std, test)
        if test.arm is None and test.chain is not None:  # a robot arm: the served IK on held-out poses
            metrics["ik"] = robot_ik_metrics(predictor, test)
            metrics["robot"] = run.data.dataset
        metrics["onnx_parity_max_abs_error"] = max_err

        # The chain as the dataset describes it now (a URDF is read again), else the checkpoint's block.
        kinematics = test.kinematics if test.chain is not None else checkpoint["kinematics"]
        try:
            meta = build_metadata(
                name=run.name,
                version=str(ver),
                task=checkpoint["task"],
                input_names=checkpoint["input_names"],
                output_names=checkpoint["output_names"],
                components=run.model.components,
                config=run.to_dict(),
                metrics=metrics,
                kinematics=kinematics,
                extra={"training": checkpoint["summary"], **_input_range(run), "checkpoint_sha256": digest},
            )
        except ContractError as exc:
            raise TrainerError(f"{run.name}: the metadata to export breaks the contract: {exc}") from None
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta.to_json()
        model.producer_name = "mdn-serve"
        onnx.save(model, str(onnx_path))
        try:  # the file as the server will open it, before it can be served
            load_model(onnx_path)
        except ContractError as exc:
            raise TrainerError(f"the exported file breaks the serving contract: {exc}") from None

        plot_paths = []
        if plots:
            plot_paths = make_plots(run_dir / "plots", test, predictor, predict_baseline)
            plot_paths.append(calibration_plot(run_dir / "plots", metrics["calibration"]))
        write_report(run_dir, run.name, str(ver), metrics, plot_paths)

        target_dir.mkdir(parents=True, exist_ok=True)
        staging.rename(final)  # atomic: the version appears complete or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _print_summary(run.name, ver, final / MODEL_FILENAME, metrics)
    return final / MODEL_FILENAME


def _input_range(run: RunConfig) -> dict[str, list[float]]:
    """The training inputs' per-column range, so clients and load generators can make valid inputs."""
    train = split(make_dataset(run.data), run.data).train
    return {"input_min": train.inputs.min(axis=0).tolist(), "input_max": train.inputs.max(axis=0).tolist()}


def _test_split(run: RunConfig, checkpoint: dict[str, Any]) -> Dataset:
    """Rebuild the held-out split exactly as training made it (data and splits are seeded)."""
    test = split(make_dataset(run.data), run.data).test
    if checkpoint["kinematics"] is not None and test.arm is None and test.chain is None:
        return Dataset(
            test.inputs,
            test.targets,
            test.input_names,
            test.target_names,
            test.task,
            planar_arm(checkpoint["kinematics"]),
        )
    return test


def planar_arm(block: dict[str, Any]) -> PlanarArm:
    """The planar arm a checkpoint's `kinematics` block describes, checked by the contract's parser first."""
    parse_kinematics(block)
    return PlanarArm(tuple(block["link_lengths"]), tuple((float(a), float(b)) for a, b in block["joint_limits"]))


def _print_summary(name: str, version: int, path: Path, m: dict[str, Any]) -> None:
    parts = [f"MDN NLL {m['mdn_nll']:.4f}", f"least squares NLL {m['baseline_nll']:.4f}"]
    if "nll_gap" in m:
        parts.append(f"gap to optimum {m['nll_gap']:.4f}")
    if "branch_coverage" in m:
        fk = m["mdn_fk_error"]
        parts.append(f"coverage {m['branch_coverage']:.4f}, FK error median {fk['median']:.2g} p95 {fk['p95']:.2g}")
        parts.append(f"least squares FK median {m['baseline_fk_error']['median']:.2g}")
    print(f"{name} v{version}: " + ", ".join(parts) + f" -> {path}", flush=True)
    for check in target_checks(m):
        if not check["met"]:
            print(f"warning: {name} v{version} misses its target {check['metric']} {check['target']} "
                  f"(got {check['value']})", flush=True)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mdn-export", description="Export trained MDNs to ONNX for mdn-serve.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--all", action="store_true", help="every run under --runs with a checkpoint")
    what.add_argument("--name", help="one run, by model name")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="trained runs (default: runs)")
    p.add_argument("--models", type=Path, default=Path("models"), help="model repository (default: models)")
    p.add_argument("--version", type=int, help="version to write (default: the next free one)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--force", action="store_true", help="export a new version even when the checkpoint is unchanged")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.all:
            run_dirs = sorted(p.parent for p in args.runs.glob(f"*/{CHECKPOINT}"))
            if not run_dirs:
                raise TrainerError(f"no trained runs under {args.runs}; run `make train` (mdn-train) first")
            if args.version is not None and len(run_dirs) > 1:
                raise TrainerError("--version applies to one model; use --name with it")
        else:
            run_dirs = [args.runs / args.name]
        for run_dir in run_dirs:
            export_run(run_dir, args.models, args.version, plots=not args.no_plots, force=args.force)
    except TrainerError as exc:
        print(f"mdn-export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
