"""Planar serial arms: how the built-in arm datasets are described, their closed-form forward
kinematics and the closed-form inverse of a two-link arm (numpy). Serving sees them as chains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_core.chain import SerialChain, planar_chain

FloatArray = NDArray[np.floating]


@dataclass(frozen=True)
class PlanarArm:
    """A planar serial arm: joint i turns link i relative to link i-1 (angles in radians)."""

    link_lengths: tuple[float, ...]
    joint_limits: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.link_lengths) < 1:
            raise ValueError("an arm needs at least one link")
        if len(self.joint_limits) != len(self.link_lengths):
            raise ValueError(f"{len(self.link_lengths)} link lengths but {len(self.joint_limits)} joint limits")
        if any(not length > 0 for length in self.link_lengths):
            raise ValueError(f"link lengths must be > 0, got {list(self.link_lengths)}")
        for low, high in self.joint_limits:
            if not low < high:
                raise ValueError(f"joint limits must be (low, high) with low < high, got {(low, high)}")

    @property
    def num_joints(self) -> int:
        return len(self.link_lengths)

    @property
    def chain(self) -> SerialChain:
        """The same arm as a serial chain: what forward kinematics, IK and serving use."""
        return planar_chain(self.link_lengths, self.joint_limits)

    @property
    def reach(self) -> float:
        return float(sum(self.link_lengths))

    def to_metadata(self) -> dict[str, object]:
        """The metadata's `kinematics` block; mdn_core.contract.parse_kinematics reads it back."""
        return {
            "type": "planar_serial",
            "link_lengths": list(self.link_lengths),
            "joint_limits": [list(limit) for limit in self.joint_limits],
        }

    def forward(self, angles: FloatArray) -> FloatArray:
        """End-effector positions (..., 2) of joint angles (..., J)."""
        cumulative = np.cumsum(angles, axis=-1)
        lengths = np.asarray(self.link_lengths)
        x = np.sum(lengths * np.cos(cumulative), axis=-1)
        y = np.sum(lengths * np.sin(cumulative), axis=-1)
        out: FloatArray = np.stack([x, y], axis=-1)
        return out

    def within_limits(self, angles: FloatArray, slack: float = 0.0) -> NDArray[np.bool_]:
        """True where every joint angle (..., J) lies inside its limits (widened by slack)."""
        limits = np.asarray(self.joint_limits)
        out: NDArray[np.bool_] = np.all((angles >= limits[:, 0] - slack) & (angles <= limits[:, 1] + slack), axis=-1)
        return out

    def two_link_ik(self, targets: FloatArray) -> tuple[FloatArray, NDArray[np.bool_]]:
        """Both analytic branches for targets (B, 2) of a two-link arm.

        Returns solutions (B, 2, 2), branch 0 with theta2 >= 0 and branch 1 with theta2 <= 0,
        and feasible (B, 2): the target is reachable and the branch lies within the joint limits.
        """
        if self.num_joints != 2:
            raise ValueError(f"closed-form IK is for two-link arms, this one has {self.num_joints} links")
        l1, l2 = self.link_lengths
        x, y = targets[:, 0], targets[:, 1]
        c2 = (x * x + y * y - l1 * l1 - l2 * l2) / (2.0 * l1 * l2)
        reachable = np.abs(c2) <= 1.0
        s2 = np.sqrt(np.clip(1.0 - c2 * c2, 0.0, None))
        theta2 = np.stack([np.arctan2(s2, c2), np.arctan2(-s2, c2)], axis=1)  # (B, 2)
        theta1 = np.arctan2(y, x)[:, None] - np.arctan2(l2 * np.sin(theta2), l1 + l2 * np.cos(theta2))
        solutions = np.stack([theta1, theta2], axis=-1)  # (B, 2 branches, 2 joints)
        feasible = reachable[:, None] & self.within_limits(solutions)
        return solutions, feasible
