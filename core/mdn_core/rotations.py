"""Rotations: quaternions (qx, qy, qz, qw, ROS order), matrices, rotation vectors (the log map) and
the continuous 6-D encoding the networks take."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating]


def quaternion_matrix(quat: FloatArray) -> NDArray[np.float64]:
    """Rotation matrices (..., 3, 3) of unit quaternions (..., 4) in (qx, qy, qz, qw) order."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    out = np.empty((*q.shape[:-1], 3, 3))
    out[..., 0, 0] = 1 - 2 * (y * y + z * z)
    out[..., 0, 1] = 2 * (x * y - z * w)
    out[..., 0, 2] = 2 * (x * z + y * w)
    out[..., 1, 0] = 2 * (x * y + z * w)
    out[..., 1, 1] = 1 - 2 * (x * x + z * z)
    out[..., 1, 2] = 2 * (y * z - x * w)
    out[..., 2, 0] = 2 * (x * z - y * w)
    out[..., 2, 1] = 2 * (y * z + x * w)
    out[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return out


def matrix_quaternion(rot: FloatArray) -> NDArray[np.float64]:
    """Unit quaternions (..., 4), (qx, qy, qz, qw) with qw >= 0, of rotation matrices (..., 3, 3)."""
    r = np.asarray(rot, dtype=np.float64)
    # Each candidate is accurate where its component is large; take the largest per matrix.
    t = np.stack([1 + r[..., 0, 0] - r[..., 1, 1] - r[..., 2, 2], 1 - r[..., 0, 0] + r[..., 1, 1] - r[..., 2, 2],
                  1 - r[..., 0, 0] - r[..., 1, 1] + r[..., 2, 2], 1 + r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]],
                 axis=-1)  # fmt: skip
    which = np.argmax(t, axis=-1)
    x01, x02, x12 = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    d21, d02, d10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    cands = np.stack(
        [
            np.stack([t[..., 0], x01, x02, d21], -1),
            np.stack([x01, t[..., 1], x12, d02], -1),
            np.stack([x02, x12, t[..., 2], d10], -1),
            np.stack([d21, d02, d10, t[..., 3]], -1),
        ],
        axis=-2,
    )  # (..., 4 candidates, 4)
    q = np.take_along_axis(cands, which[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    out: NDArray[np.float64] = np.where(q[..., 3:4] < 0, -q, q)
    return out


def rotation_log(rot: FloatArray) -> NDArray[np.float64]:
    """The rotation vector (axis times angle, (..., 3)) of rotation matrices (..., 3, 3), stable near 0 and pi."""
    r = np.asarray(rot, dtype=np.float64)
    vee = 0.5 * np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = np.linalg.norm(vee, axis=-1)
    cos = 0.5 * (np.trace(r, axis1=-2, axis2=-1) - 1.0)
    angle = np.arctan2(sin, cos)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(sin > 1e-12, angle / sin, 1.0)
    out = vee * scale[..., None]
    # Near pi, sin is tiny and the skew part loses the axis: read it from the symmetric part.
    near_pi = (cos < 0.0) & (sin < 1e-4)
    if np.any(near_pi):
        # (R + R^T) / 2 - cos I = (1 - cos) a a^T: any column with a large diagonal entry is along a.
        sym = 0.5 * (r[near_pi] + np.swapaxes(r[near_pi], -1, -2)) - cos[near_pi][:, None, None] * np.eye(3)
        col = np.argmax(np.einsum("nii->ni", sym), axis=-1)
        axis = np.take_along_axis(sym, col[:, None, None], axis=-1)[..., 0]
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        sign = np.where(np.sum(axis * vee[near_pi], axis=-1) < 0, -1.0, 1.0)[:, None]
        out[near_pi] = sign * axis * angle[near_pi][:, None]
    return out


def rotation_6d(rot: FloatArray) -> NDArray[np.float64]:
    """The continuous 6-D encoding of rotations (..., 3, 3): the first two columns, (..., 6)."""
    r = np.asarray(rot, dtype=np.float64)
    out: NDArray[np.float64] = np.concatenate([r[..., :, 0], r[..., :, 1]], axis=-1)
    return out


def rotation_log_columns(rot: FloatArray) -> NDArray[np.float64]:
    """rotation_log of matrices laid out (3, 3, n), as (3, n)."""
    r = np.asarray(rot, dtype=np.float64)
    vee = 0.5 * np.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    sin = np.sqrt(vee[0] * vee[0] + vee[1] * vee[1] + vee[2] * vee[2])
    cos = 0.5 * (r[0, 0] + r[1, 1] + r[2, 2] - 1.0)
    angle = np.arctan2(sin, cos)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(sin > 1e-12, angle / sin, 1.0)
    out: NDArray[np.float64] = vee * scale
    near_pi = (cos < 0.0) & (sin < 1e-4)  # the few the general form handles (see rotation_log)
    if near_pi.any():
        out[:, near_pi] = rotation_log(np.moveaxis(r[:, :, near_pi], -1, 0)).T
    return out
