"""Datasets the trainer makes itself (never downloaded) and user tables (CSV or NPZ)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mdn_core.chain import SerialChain, pose_targets, target_features
from mdn_core.kinematics import PlanarArm
from numpy.typing import NDArray

from mdn_train.config import ARM_DATASETS, ROBOT_DATASETS, DataConfig
from mdn_train.errors import TrainerError
from mdn_train.urdf import ROBOTS, load_chain, robot_urdf

Array = NDArray[np.float32]


@dataclass(frozen=True)
class Dataset:
    inputs: Array  # (N, in_dim)
    targets: Array  # (N, D)
    input_names: tuple[str, ...]
    target_names: tuple[str, ...]
    task: str  # "inverse_sine", "two_link_arm", "robot_ik" or "table"
    arm: PlanarArm | None = None  # planar arms (closed-form evaluation)
    chain: SerialChain | None = None  # what the exported metadata describes, for every arm

    def subset(self, index: NDArray[np.intp]) -> Dataset:
        return Dataset(
            self.inputs[index], self.targets[index], self.input_names, self.target_names, self.task, self.arm,
            self.chain,
        )  # fmt: skip

    @property
    def kinematics(self) -> dict[str, object] | None:
        """The metadata's kinematics block: planar arms as before, other chains as serial chains."""
        if self.arm is not None:
            return self.arm.to_metadata()
        return self.chain.to_metadata() if self.chain is not None else None


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


def inverse_sine_forward(x: NDArray[np.floating]) -> NDArray[np.floating]:
    """Bishop's forward map without noise: f(x) = x + 0.3 sin(2 pi x)."""
    out: NDArray[np.floating] = x + 0.3 * np.sin(2.0 * np.pi * x)
    return out


INVERSE_SINE_NOISE = 0.1  # t = f(x) + U(-0.1, 0.1)


def make_inverse_sine(num_samples: int, rng: np.random.Generator) -> Dataset:
    """Bishop's toy inverse problem: the model maps t to x, which is multi-valued in the middle."""
    x = rng.uniform(0.0, 1.0, num_samples)
    t = inverse_sine_forward(x) + rng.uniform(-INVERSE_SINE_NOISE, INVERSE_SINE_NOISE, num_samples)
    return Dataset(
        inputs=t[:, None].astype(np.float32),
        targets=x[:, None].astype(np.float32),
        input_names=("t",),
        target_names=("x",),
        task="inverse_sine",
    )


def make_planar_arm(arm: PlanarArm, num_samples: int, rng: np.random.Generator) -> Dataset:
    """Joint angles uniform within the limits, end-effector position by forward kinematics.

    The model maps the end-effector position (ee_x, ee_y) to the joint angles.
    """
    limits = np.asarray(arm.joint_limits)
    angles = rng.uniform(limits[:, 0], limits[:, 1], (num_samples, arm.num_joints))
    positions = arm.forward(angles)
    return Dataset(
        inputs=positions.astype(np.float32),
        targets=angles.astype(np.float32),
        input_names=("ee_x", "ee_y"),
        target_names=tuple(f"theta{i + 1}" for i in range(arm.num_joints)),
        task="two_link_arm" if arm.num_joints == 2 else "planar_arm",
        arm=arm,
        chain=arm.chain,
    )


POSE_INPUTS = ("x", "y", "z", "r11", "r21", "r31", "r12", "r22", "r32")  # position, then R's first two columns


def wrap_periodic(chain: SerialChain, q: NDArray[np.floating]) -> NDArray[np.float64]:
    """Periodic joints (range over 2 pi) as their principal value in (-pi, pi]: what the network learns."""
    wrapped = np.pi - np.mod(np.pi - np.asarray(q, dtype=np.float64), 2 * np.pi)
    out: NDArray[np.float64] = np.where(chain.periodic, wrapped, q)
    return out


def make_robot(chain: SerialChain, num_samples: int, rng: np.random.Generator) -> Dataset:
    """Joint values uniform within the limits; inputs the tip's pose (or position) by forward kinematics."""
    lim = chain.limits
    q = rng.uniform(lim[:, 0], lim[:, 1], (num_samples, chain.num_joints))
    reached = chain.forward(q)
    names: tuple[str, ...] = POSE_INPUTS
    if chain.target == "pose":
        inputs = target_features("pose", pose_targets(reached))
    else:
        inputs, names = reached[:, :3, 3].astype(np.float32), POSE_INPUTS[:3]
    return Dataset(
        inputs=inputs,
        targets=wrap_periodic(chain, q).astype(np.float32),
        input_names=names,
        target_names=tuple(j.name for j in chain.joints),
        task="robot_ik",
        chain=chain,
    )


def chain_from_config(config: DataConfig) -> SerialChain:
    if config.dataset in ROBOT_DATASETS:
        _, base, tip = ROBOTS[config.dataset]
        return load_chain(robot_urdf(config.dataset), base, tip, config.target)
    return load_chain(Path(config.urdf), config.base_link, config.tip_link, config.target)


def load_table(path: Path, input_columns: tuple[str, ...], target_columns: tuple[str, ...]) -> Dataset:
    """Named columns from a CSV file (with a header row) or an NPZ file (one 1-D array per name)."""
    if not input_columns or not target_columns:
        raise TrainerError("a table needs --inputs and --targets (comma-separated column names)")
    overlap = set(input_columns) & set(target_columns)
    if overlap:
        raise TrainerError(f"columns used as both input and target: {', '.join(sorted(overlap))}")
    if not path.is_file():
        raise TrainerError(f"data file {path} does not exist")
    wanted = (*input_columns, *target_columns)
    suffix = path.suffix.lower()
    lines: list[int] | None = None  # each row's line in a CSV file, for messages that point at it
    if suffix == ".csv":
        columns, lines = _read_csv(path, wanted)
    elif suffix == ".npz":
        columns = _read_npz(path, wanted)
    else:
        raise TrainerError(f"data file {path} must end in .csv or .npz")
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) != 1:
        raise TrainerError(f"columns in {path} have different lengths: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise TrainerError(f"data file {path} has no rows")
    for name, col in columns.items():
        bad = ~np.isfinite(col)
        if bad.any():
            first = int(np.argmax(bad))
            where = f"line {lines[first]}" if lines is not None else f"index {first}"
            raise TrainerError(
                f"column {name!r} in {path} has {int(bad.sum())} NaN or infinite values "
                f"(first at {where}); clean or drop them"
            )
    inputs = np.stack([columns[c] for c in input_columns], axis=1).astype(np.float32)
    targets = np.stack([columns[c] for c in target_columns], axis=1).astype(np.float32)
    return Dataset(inputs, targets, tuple(input_columns), tuple(target_columns), "table")


def _read_csv(path: Path, wanted: tuple[str, ...]) -> tuple[dict[str, NDArray[np.float64]], list[int]]:
    """The wanted columns, and the file line of each row (blank lines are skipped)."""
    lines: list[int] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise TrainerError(f"data file {path} is empty") from None
        missing = [c for c in wanted if c not in header]
        if missing:
            raise TrainerError(f"{path} has no column(s) {', '.join(missing)}; it has: {', '.join(header)}")
        index = [header.index(c) for c in wanted]
        values: list[list[float]] = [[] for _ in wanted]
        for row in reader:
            line_no = reader.line_num  # the file's line, blank and quoted multi-line cells included
            if not row:
                continue
            lines.append(line_no)
            for slot, col in enumerate(index):
                cell = row[col].strip() if col < len(row) else ""
                try:
                    values[slot].append(float(cell))
                except ValueError:
                    raise TrainerError(
                        f"{path} line {line_no}, column {wanted[slot]!r}: {cell!r} is not a number"
                    ) from None
    columns = {name: np.asarray(col, dtype=np.float64) for name, col in zip(wanted, values, strict=True)}
    return columns, lines


def _read_npz(path: Path, wanted: tuple[str, ...]) -> dict[str, NDArray[np.float64]]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a corrupt archive
        raise TrainerError(f"cannot read {path} as an NPZ archive: {exc}") from None
    with archive:
        missing = [c for c in wanted if c not in archive.files]
        if missing:
            raise TrainerError(
                f"{path} has no array(s) {', '.join(missing)}; it has: {', '.join(archive.files) or 'none'}"
            )
        columns = {}
        for name in wanted:
            col = archive[name]
            if col.ndim != 1:
                raise TrainerError(f"array {name!r} in {path} must be 1-D, it has shape {col.shape}")
            if not (np.issubdtype(col.dtype, np.number) or col.dtype == np.bool_):
                raise TrainerError(f"array {name!r} in {path} is not numeric (dtype {col.dtype})")
            columns[name] = col.astype(np.float64)
    return columns


def arm_from_config(config: DataConfig) -> PlanarArm:
    try:
        limits = tuple((float(low), float(high)) for low, high in config.joint_limits)
        return PlanarArm(tuple(float(v) for v in config.link_lengths), limits)
    except (TypeError, ValueError) as exc:
        raise TrainerError(f"invalid arm: {exc}") from None


def make_dataset(config: DataConfig) -> Dataset:
    rng = np.random.default_rng(config.seed)
    if config.dataset == "inverse_sine":
        return make_inverse_sine(config.num_samples, rng)
    if config.dataset in ARM_DATASETS:
        data = make_planar_arm(arm_from_config(config), config.num_samples, rng)
        return Dataset(data.inputs, data.targets, data.input_names, data.target_names, config.dataset, data.arm)
    if config.dataset in (*ROBOT_DATASETS, "urdf"):
        return make_robot(chain_from_config(config), config.num_samples, rng)
    if config.dataset == "table":
        return load_table(Path(config.path), config.input_columns, config.target_columns)
    raise TrainerError(f"unknown dataset {config.dataset!r}")


def split(dataset: Dataset, config: DataConfig) -> Splits:
    """Seeded shuffle into train / validation / test."""
    n = len(dataset.inputs)
    n_val = max(1, math.floor(n * config.val_fraction))
    n_test = max(1, math.floor(n * config.test_fraction))
    if n - n_val - n_test < 2:
        raise TrainerError(f"{n} rows are too few to split into train, validation and test")
    order = np.random.default_rng(config.seed + 1).permutation(n)
    return Splits(
        train=dataset.subset(order[n_val + n_test :]),
        val=dataset.subset(order[:n_val]),
        test=dataset.subset(order[n_val : n_val + n_test]),
    )
