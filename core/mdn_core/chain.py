"""Serial kinematic chains (a robot arm from its URDF, or a planar arm) and their poses (numpy).

A chain is a list of movable joints (revolute, continuous, prismatic). Each joint carries the
fixed transform from the previous joint's frame to its own (fixed URDF joints folded in), its
axis in its own frame and its limits; a last fixed transform leads to the tip link:

    T_tip(q) = O_1 M_1(q_1) O_2 M_2(q_2) ... O_J M_J(q_J) O_tip

Forward kinematics and the geometric Jacobian are vectorised over any leading shape, e.g.
(targets, seeds, J); the only Python loop runs over the joints.

What a client asks for is a `target` layout: `planar` (x, y), `position` (x, y, z) or `pose`
(x, y, z, qx, qy, qz, qw, ROS order). The network sees a pose as its position plus the first two
columns of its rotation matrix (a continuous encoding: q and -q are one rotation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from mdn_core.rotations import matrix_quaternion, quaternion_matrix, rotation_6d

FloatArray = NDArray[np.floating]

JOINT_TYPES = ("revolute", "continuous", "prismatic")
TARGET_WIDTH = {"planar": 2, "position": 3, "pose": 7}  # what Solve takes per target
TARGET_NAMES = {"planar": "x, y", "position": "x, y, z", "pose": "x, y, z, qx, qy, qz, qw"}  # ROS Pose order
FEATURE_WIDTH = {"planar": 2, "position": 3, "pose": 9}  # what the network takes per target
TASK_ROWS = {"planar": 2, "position": 3, "pose": 6}  # what refinement constrains per target
TWO_PI = 2.0 * math.pi
CHAIN_SCHEMA_VERSION = 1  # of the metadata's serial_chain block


def transform(xyz: tuple[float, float, float], rpy: tuple[float, float, float]) -> NDArray[np.float64]:
    """The 4x4 homogeneous transform of a URDF <origin xyz rpy> (R = Rz(yaw) Ry(pitch) Rx(roll))."""
    roll, pitch, yaw = rpy
    cr, sr, cp, sp, cy, sy = (
        math.cos(roll),
        math.sin(roll),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
    )
    out = np.eye(4)
    out[:3, :3] = [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ]
    out[:3, 3] = xyz
    return out


@dataclass(frozen=True)
class Joint:
    name: str
    kind: str  # revolute, continuous or prismatic
    origin: tuple[float, ...]  # 12 numbers: the top three rows of the 4x4 transform, row-major
    axis: tuple[float, float, float]  # unit vector in the joint's frame
    lower: float  # radians or metres; continuous joints: -pi
    upper: float  # continuous joints: pi

    def __post_init__(self) -> None:
        if self.kind not in JOINT_TYPES:
            raise ValueError(f"joint {self.name!r}: type {self.kind!r} is not one of {', '.join(JOINT_TYPES)}")
        if len(self.origin) != 12 or len(self.axis) != 3:
            raise ValueError(f"joint {self.name!r}: origin needs 12 numbers and axis 3")
        if not abs(float(np.linalg.norm(self.axis)) - 1.0) < 1e-6:
            raise ValueError(f"joint {self.name!r}: axis {list(self.axis)} is not a unit vector")
        if not self.lower < self.upper:
            raise ValueError(f"joint {self.name!r}: limits need lower < upper, got {self.lower}, {self.upper}")

    @property
    def periodic(self) -> bool:
        """An angle that comes back to itself within the limits: learned and merged modulo 2 pi."""
        return self.kind == "continuous" or (self.kind == "revolute" and self.upper - self.lower > TWO_PI + 1e-9)


def _matrix(rows: tuple[float, ...]) -> NDArray[np.float64]:
    out = np.eye(4)
    out[:3, :] = np.asarray(rows, dtype=np.float64).reshape(3, 4)
    return out


def _rows(matrix: NDArray[np.float64]) -> tuple[float, ...]:
    return tuple(float(v) for v in matrix[:3, :].ravel())


class Walk(NamedTuple):
    """What SerialChain.columns computes, the configurations last."""

    position: NDArray[np.float64]  # (3, n)
    rotation: NDArray[np.float64]  # (3, 3, n)
    jacobian: NDArray[np.float64] | None  # (6, J, n)
    origins: NDArray[np.float64]  # (J, 3, n): where each joint sits


@dataclass(frozen=True)
class SerialChain:
    joints: tuple[Joint, ...]
    tip: tuple[float, ...]  # 12 numbers: the fixed transform from the last joint to the tip link
    target: str = "pose"  # planar, position or pose
    base_link: str = "base"
    tip_link: str = "tip"
    source: str = ""  # the URDF's file name, when it came from one

    def __post_init__(self) -> None:
        if not self.joints:
            raise ValueError("a chain needs at least one movable joint")
        if self.target not in TARGET_WIDTH:
            raise ValueError(f"target {self.target!r} is not one of {', '.join(TARGET_WIDTH)}")
        if len(self.tip) != 12:
            raise ValueError("the tip transform needs 12 numbers")
        object.__setattr__(self, "_origins", np.stack([_matrix(j.origin) for j in self.joints]))
        object.__setattr__(self, "_tip", _matrix(self.tip))
        object.__setattr__(self, "_axes", np.array([j.axis for j in self.joints], dtype=np.float64))
        # Joint i's frame in its parent's: translation t_i, rotation O_i R(q) with, by Rodrigues,
        # O_i R(q) = O_i + sin(q) O_i K + (1 - cos(q)) O_i K^2 (K: the axis' cross-product matrix).
        # A frame's rotation times [t_i | O_i a | O_i | O_i K | O_i K^2] (3 x 11) gives, in one matrix
        # product, the joint's offset, its axis and the three parts of its rotation in the base frame.
        blocks = []
        for origin, (kx, ky, kz) in zip(self._origins, self._axes, strict=True):  # type: ignore[attr-defined]
            k = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
            rot = origin[:3, :3]
            axis = rot @ np.array([kx, ky, kz])
            blocks.append(np.concatenate([origin[:3, 3:], axis[:, None], rot, rot @ k, rot @ k @ k], axis=1))
        object.__setattr__(self, "_blocks", np.stack(blocks))
        object.__setattr__(self, "_prismatic", [j.kind == "prismatic" for j in self.joints])
        object.__setattr__(self, "_limits", np.array([(j.lower, j.upper) for j in self.joints], dtype=np.float64))
        # Asked for on every refinement step: built once.
        object.__setattr__(self, "_periodic", np.array([j.periodic for j in self.joints]))
        object.__setattr__(self, "_unbounded", np.array([j.kind == "continuous" for j in self.joints]))

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def limits(self) -> NDArray[np.float64]:
        """(J, 2) lower and upper limits."""
        out: NDArray[np.float64] = self._limits  # type: ignore[attr-defined]
        return out

    @property
    def periodic(self) -> NDArray[np.bool_]:
        out: NDArray[np.bool_] = self._periodic  # type: ignore[attr-defined]
        return out

    @property
    def unbounded(self) -> NDArray[np.bool_]:
        """Continuous joints: any angle is allowed."""
        out: NDArray[np.bool_] = self._unbounded  # type: ignore[attr-defined]
        return out

    @property
    def task_rows(self) -> int:
        """Rows of the task error and Jacobian: x, y; x, y, z; or position and rotation."""
        return TASK_ROWS[self.target]

    @property
    def target_width(self) -> int:
        return TARGET_WIDTH[self.target]

    @property
    def feature_width(self) -> int:
        return FEATURE_WIDTH[self.target]

    @property
    def reach(self) -> float:
        """An upper bound on the tip's distance from the first joint (links plus prismatic travel)."""
        offsets = [float(np.linalg.norm(np.asarray(j.origin).reshape(3, 4)[:, 3])) for j in self.joints[1:]]
        travel = [max(abs(j.lower), abs(j.upper)) for j in self.joints if j.kind == "prismatic"]
        return sum(offsets) + float(np.linalg.norm(np.asarray(self.tip).reshape(3, 4)[:, 3])) + sum(travel)

    @property
    def base_offset(self) -> NDArray[np.float64]:
        """Where the first joint sits in the base frame (the centre of the reachable ball)."""
        out: NDArray[np.float64] = self._origins[0, :3, 3]  # type: ignore[attr-defined]
        return out

    def forward(self, q: FloatArray) -> NDArray[np.float64]:
        """Tip transforms (..., 4, 4) for joint values q (..., J)."""
        return self._walk(np.asarray(q, dtype=np.float64), jacobian=False)[0]

    def joint_positions(self, q: FloatArray) -> NDArray[np.float64]:
        """Where each movable joint and then the tip sit in the base frame: (..., J + 1, 3), for drawing."""
        points = self._walk(np.asarray(q, dtype=np.float64), jacobian=False, keep_origins=True)[1]
        assert points is not None
        return points

    def forward_and_jacobian(self, q: FloatArray) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Tip transforms (..., 4, 4) and geometric Jacobians (..., 6, J) in the base frame.

        Rows 0-2: linear velocity of the tip; rows 3-5: angular velocity.
        """
        transforms, jac = self._walk(np.asarray(q, dtype=np.float64), jacobian=True)
        assert jac is not None
        return transforms, jac

    def columns(self, qt: NDArray[np.float64], jacobian: bool = True) -> Walk:
        """For joint values qt (J, n), laid out with the configurations last: tip positions (3, n),
        rotations (3, 3, n) and, with jacobian, geometric Jacobians (6, J, n) (rows as above).

        Every numpy operation runs along n: per joint, one (11, 3) x (3, n) matrix product for each
        of the rotation's three rows (see _blocks in __post_init__) and a few elementwise updates.
        (With n first, each operation looped over 3 x 3 inner blocks: three times slower.)
        """
        joints, n = qt.shape
        sin, one_minus_cos = np.sin(qt), 1.0 - np.cos(qt)
        blocks = self._blocks  # type: ignore[attr-defined]
        pos = np.zeros((3, n))
        axes, origins = np.empty((joints, 3, n)), np.empty((joints, 3, n))
        rot: NDArray[np.float64] | None = None  # the base frame's rotation is the identity
        for i, prismatic in enumerate(self._prismatic):  # type: ignore[attr-defined]
            # Row r of the rotation so far: (11, 3) x (3, n), the block seen from the base frame.
            parts = np.broadcast_to(blocks[i][:, :, None], (3, 11, n)) if rot is None else np.matmul(blocks[i].T, rot)
            pos = pos + parts[:, 0]
            axes[i] = parts[:, 1]
            if prismatic:
                rot = np.ascontiguousarray(parts[:, 2:5])
                pos = pos + parts[:, 1] * qt[i]
            else:
                rot = parts[:, 2:5] + sin[i] * parts[:, 5:8] + one_minus_cos[i] * parts[:, 8:11]
            origins[i] = pos
        assert rot is not None
        tip = self._tip  # type: ignore[attr-defined]
        tip_pos = pos + np.matmul(tip[:3, 3], rot)
        tip_rot = np.matmul(tip[:3, :3].T, rot)
        if not jacobian:
            return Walk(tip_pos, tip_rot, None, origins)
        r = tip_pos - origins  # (J, 3, n): from each joint to the tip
        a = axes
        jac = np.empty((6, joints, n))
        jac[0] = a[:, 1] * r[:, 2] - a[:, 2] * r[:, 1]  # a x r, written out
        jac[1] = a[:, 2] * r[:, 0] - a[:, 0] * r[:, 2]
        jac[2] = a[:, 0] * r[:, 1] - a[:, 1] * r[:, 0]
        jac[3:] = a.transpose(1, 0, 2)
        prismatic = np.array(self._prismatic)  # type: ignore[attr-defined]
        if prismatic.any():  # a sliding joint moves the tip along its axis and does not turn it
            jac[:3, prismatic] = a.transpose(1, 0, 2)[:, prismatic]
            jac[3:, prismatic] = 0.0
        return Walk(tip_pos, tip_rot, jac, origins)

    def _walk(
        self, q: NDArray[np.float64], jacobian: bool, keep_origins: bool = False
    ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
        """columns() for q (..., J): the tip transforms, and the Jacobian (jacobian=True) or the joints'
        positions (keep_origins=True), with the configurations first again."""
        lead, joints = q.shape[:-1], self.num_joints
        n = int(np.prod(lead))
        walk = self.columns(np.ascontiguousarray(q.reshape(n, joints).T), jacobian)
        out = np.zeros((n, 4, 4))
        out[:, :3, 3] = walk.position.T
        out[:, :3, :3] = walk.rotation.transpose(2, 0, 1)
        out[:, 3, 3] = 1.0
        if keep_origins:
            points = np.concatenate([walk.origins, walk.position[None]]).transpose(2, 0, 1)
            return out.reshape(*lead, 4, 4), points.reshape(*lead, joints + 1, 3)
        if walk.jacobian is None:
            return out.reshape(*lead, 4, 4), None
        jac = np.ascontiguousarray(walk.jacobian.transpose(2, 0, 1))
        return out.reshape(*lead, 4, 4), jac.reshape(*lead, 6, joints)

    def within_limits(self, q: FloatArray, slack: float = 0.0) -> NDArray[np.bool_]:
        """True where every joint value (..., J) lies inside its limits (widened by slack)."""
        lim = self.limits
        inside = (q >= lim[:, 0] - slack) & (q <= lim[:, 1] + slack)
        out: NDArray[np.bool_] = np.all(inside | self.unbounded, axis=-1)
        return out

    def to_metadata(self) -> dict[str, object]:
        """The metadata's `kinematics` block; mdn_core.contract.parse_kinematics reads it back."""
        return {
            "type": "serial_chain",
            "version": CHAIN_SCHEMA_VERSION,
            "target": self.target,
            "base_link": self.base_link,
            "tip_link": self.tip_link,
            "source": self.source,
            "joints": [
                {"name": j.name, "type": j.kind, "origin": list(j.origin), "axis": list(j.axis),
                 "lower": j.lower, "upper": j.upper}
                for j in self.joints
            ],
            "tip": list(self.tip),
        }  # fmt: skip


def planar_chain(link_lengths: tuple[float, ...], joint_limits: tuple[tuple[float, float], ...]) -> SerialChain:
    """A planar arm as a chain: z-axis revolute joints, each link along the previous one's x axis."""
    joints = []
    for i, (low, high) in enumerate(joint_limits):
        offset = link_lengths[i - 1] if i else 0.0
        joints.append(Joint(f"joint{i + 1}", "revolute", _rows(transform((offset, 0.0, 0.0), (0.0, 0.0, 0.0))),
                            (0.0, 0.0, 1.0), low, high))  # fmt: skip
    tip = _rows(transform((link_lengths[-1], 0.0, 0.0), (0.0, 0.0, 0.0)))
    return SerialChain(tuple(joints), tip, target="planar", base_link="base", tip_link="tip")


# ---------------------------------------------------------------- targets


def pose_targets(transforms: FloatArray) -> NDArray[np.float64]:
    """Transforms (..., 4, 4) as pose targets (..., 7): x, y, z, qx, qy, qz, qw."""
    t = np.asarray(transforms, dtype=np.float64)
    out: NDArray[np.float64] = np.concatenate([t[..., :3, 3], matrix_quaternion(t[..., :3, :3])], axis=-1)
    return out


def target_features(target: str, targets: FloatArray) -> NDArray[np.float32]:
    """What the network takes for targets in a layout: planar and position as they are, a pose as
    its position plus the 6-D encoding of its quaternion (normalised here)."""
    t = np.asarray(targets, dtype=np.float64)
    if target != "pose":
        return np.ascontiguousarray(t, dtype=np.float32)
    out = np.concatenate([t[..., :3], rotation_6d(quaternion_matrix(t[..., 3:7]))], axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def task_of(target: str, transforms: FloatArray) -> NDArray[np.float64]:
    """What a target layout constrains of tip transforms (..., 4, 4): (x, y), (x, y, z) or the transform."""
    t = np.asarray(transforms, dtype=np.float64)
    if target == "planar":
        return t[..., :2, 3]
    if target == "position":
        return t[..., :3, 3]
    return t
