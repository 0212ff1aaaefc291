"""Fit an MDN and a least-squares baseline with early stopping: `mdn-train`."""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mdn_train.config import BUILTIN_DATASETS, RunConfig, default_config, with_overrides
from mdn_train.data import Splits, make_dataset, split
from mdn_train.errors import TrainerError
from mdn_train.model import MDN, LeastSquares

CHECKPOINT = "checkpoint.pt"


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    best_val: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (train, val) per epoch
    final_lr: float = 0.0  # the learning rate at the end of the last epoch run


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _fit(
    model: torch.nn.Module,
    splits: Splits,
    run: RunConfig,
    label: str,
    progress: bool,
    epochs: int = 0,
) -> FitResult:
    """Adam on mini-batches with the configured learning-rate schedule (halved on plateaus, or one
    cosine cycle), early stopping on the validation loss; `epochs` at most (0: the config's)."""
    cfg = run.train
    epochs = epochs or cfg.epochs
    x, y = _tensor(splits.train.inputs), _tensor(splits.train.targets)
    xv, yv = _tensor(splits.val.inputs), _tensor(splits.val.targets)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, cfg.patience // 4))
    cycle = None
    if cfg.schedule == "cosine":
        steps = epochs * math.ceil(len(x) / cfg.batch_size)
        cycle = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.learning_rate, total_steps=steps, pct_start=0.05, div_factor=10, final_div_factor=100
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    best = math.inf
    best_state = copy.deepcopy(model.state_dict())
    result = FitResult(best_epoch=0, epochs_run=0, best_val=math.inf)
    bar = tqdm(range(1, epochs + 1), desc=label, unit="epoch", disable=not progress, leave=True)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            _, loss = model(x[idx], y[idx])
            assert loss is not None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cycle is not None:
                cycle.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        val = _evaluate_loss(model, xv, yv)
        train_loss = total / count
        result.history.append((train_loss, val))
        result.epochs_run = epoch
        if not math.isfinite(train_loss):
            raise TrainerError(f"{label}: training diverged at epoch {epoch}; try a smaller --lr")
        if cycle is None:
            plateau.step(val)
        result.final_lr = opt.param_groups[0]["lr"]
        if val < best:
            best, result.best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val:.4f}", best=f"{best:.4f}")
        if epoch - result.best_epoch >= cfg.patience:
            break
    bar.close()
    model.load_state_dict(best_state)
    result.best_val = best
    return result


@torch.no_grad()
def _evaluate_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    _, loss = model(x, y)
    return float(loss)


def fit_models(run: RunConfig, splits: Splits, progress: bool = True) -> dict[str, Any]:
    """Train the MDN and the baseline; returns everything the checkpoint holds."""
    torch.manual_seed(run.train.seed)
    in_dim, out_dim = splits.train.inputs.shape[1], splits.train.targets.shape[1]
    x, y = _tensor(splits.train.inputs), _tensor(splits.train.targets)

    mdn = MDN(in_dim, out_dim, run.model)
    mdn.x_norm.fit(x)
    mdn.y_norm.fit(y)
    mdn_fit = _fit(mdn, splits, run, f"{run.name} MDN", progress)

    baseline = LeastSquares(in_dim, out_dim, run.train.baseline_hidden, run.model.activation)
    baseline.x_norm.fit(x)
    baseline.y_norm.fit(y)
    # The baseline only has to show what least squares does: it may get fewer epochs than the MDN.
    ls_fit = _fit(baseline, splits, run, f"{run.name} least squares", progress, run.train.baseline_epochs)
    with torch.no_grad():
        baseline.eval()
        pred, _ = baseline(_tensor(splits.val.inputs))
        residual_std = (pred - _tensor(splits.val.targets)).pow(2).mean(0).sqrt()

    data = splits.train
    return {
        "format": 1,
        "config": run.to_dict(),
        "task": data.task,
        "input_names": list(data.input_names),
        "output_names": list(data.target_names),
        "kinematics": data.kinematics,
        "mdn_state": mdn.state_dict(),
        "baseline_state": baseline.state_dict(),
        "baseline_residual_std": residual_std,
        "summary": {
            "mdn_best_val_nll": mdn_fit.best_val,
            "mdn_best_epoch": mdn_fit.best_epoch,
            "mdn_epochs_run": mdn_fit.epochs_run,
            "baseline_best_val_mse": ls_fit.best_val,
            "baseline_best_epoch": ls_fit.best_epoch,
            "num_train": len(splits.train.inputs),
            "num_val": len(splits.val.inputs),
            "num_test": len(splits.test.inputs),
        },
        "history": {"mdn": mdn_fit.history, "baseline": ls_fit.history},
    }


def train_run(run: RunConfig, runs_dir: Path, progress: bool = True) -> Path:
    """Make the data, fit both models and save runs/<name>/checkpoint.pt; returns its path."""
    run.validate()
    dataset = make_dataset(run.data)
    splits = split(dataset, run.data)
    start = time.perf_counter()
    checkpoint = fit_models(run, splits, progress)
    elapsed = time.perf_counter() - start
    out_dir = runs_dir / run.name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)
    s = checkpoint["summary"]
    print(
        f"{run.name}: MDN val NLL {s['mdn_best_val_nll']:.4f} (best epoch {s['mdn_best_epoch']}"
        f"/{s['mdn_epochs_run']}), least squares val MSE {s['baseline_best_val_mse']:.4f} (standardised), "
        f"{s['num_train']} train rows, {elapsed:.0f} s -> {path}",
        flush=True,
    )
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint saved by train_run (plain tensors and containers only)."""
    if not path.is_file():
        raise TrainerError(f"no checkpoint at {path}; run mdn-train first")
    try:
        checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainerError(f"cannot load checkpoint {path}: {exc}") from None
    return checkpoint


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mdn-train",
        description="Fit Mixture Density Networks (and a least-squares baseline) on built-in or user data.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--all", action="store_true", help="train every built-in dataset with its defaults")
    what.add_argument("--dataset", help=f"a built-in dataset: {', '.join(BUILTIN_DATASETS)}")
    what.add_argument("--data", type=Path, help="a CSV (header row) or NPZ file of named columns")
    what.add_argument("--urdf", type=Path, help="a URDF file: train IK for the chain --base-link .. --tip-link")
    p.add_argument("--base-link", help="with --urdf: the chain's base link")
    p.add_argument("--tip-link", help="with --urdf: the chain's tip link")
    p.add_argument("--position-only", action="store_true", help="with --urdf: targets are positions, not poses")
    p.add_argument("--inputs", type=_csv_list, help="input columns of --data, comma-separated")
    p.add_argument("--targets", type=_csv_list, help="target columns of --data, comma-separated")
    p.add_argument("--name", help="model name (default: the dataset's name or the file's stem)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="output folder (default: runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("overrides (default: the dataset's config)")
    g.add_argument("--num-samples", type=int, help="rows to generate (built-in datasets)")
    g.add_argument("--seed", type=int, help="data seed")
    g.add_argument("--components", type=int, help="mixture components K")
    g.add_argument("--hidden", type=_int_list, help="hidden widths, e.g. 64,64")
    g.add_argument("--activation", help="tanh, relu, gelu or silu")
    g.add_argument("--scale-floor", type=float, help="floor on the scales (standardised units)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, dest="learning_rate")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    g.add_argument("--schedule", choices=("plateau", "cosine"), help="learning-rate schedule")
    g.add_argument("--baseline-epochs", type=int, help="the least-squares baseline's epochs at most (0: as the MDN)")
    return p


def configs_from_args(args: argparse.Namespace) -> list[RunConfig]:
    overrides = {
        "num_samples": args.num_samples,
        "seed": args.seed,
        "components": args.components,
        "hidden": args.hidden,
        "activation": args.activation,
        "scale_floor": args.scale_floor,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "patience": args.patience,
        "schedule": args.schedule,
        "baseline_epochs": args.baseline_epochs,
    }
    if args.all:
        bases = [default_config(name) for name in BUILTIN_DATASETS]
    elif args.dataset:
        bases = [default_config(args.dataset)]
    elif args.urdf:
        if not (args.base_link and args.tip_link):
            raise TrainerError("--urdf needs --base-link and --tip-link (the chain's first and last link)")
        base = default_config("urdf")
        data = {"dataset": "urdf", "urdf": str(args.urdf), "base_link": args.base_link, "tip_link": args.tip_link,
                "target": "position" if args.position_only else "pose"}  # fmt: skip
        bases = [
            RunConfig.from_dict({**base.to_dict(), "name": args.urdf.stem, "data": {**base.to_dict()["data"], **data}})
        ]
    else:
        base = default_config("inverse_sine")
        data = {
            "dataset": "table",
            "path": str(args.data),
            "input_columns": args.inputs or (),
            "target_columns": args.targets or (),
        }
        bases = [
            RunConfig.from_dict({**base.to_dict(), "name": args.data.stem, "data": {**base.to_dict()["data"], **data}})
        ]
    configs = [with_overrides(b, **overrides) for b in bases]
    if args.name:
        if len(configs) > 1:
            raise TrainerError("--name applies to one model; drop it with --all")
        configs[0] = RunConfig.from_dict({**configs[0].to_dict(), "name": args.name})
    return configs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configs = configs_from_args(args)
        for run in configs:
            run.validate()
        for run in configs:
            train_run(run, args.runs, progress=not args.quiet)
    except TrainerError as exc:
        print(f"mdn-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mdn-train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
