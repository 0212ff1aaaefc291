"""Levenberg-Marquardt refinement of IK seeds within the joint limits (for mdn_core.ik).

Damped least squares on the task error: position for planar and position-only targets, position
and rotation (the log map) for poses. Every array has the seeds last, as SerialChain.columns
computes them ((J, n) angles, (m, J, n) Jacobians, ...), so each numpy operation runs along the
seeds; only the (m, m) solve of each step takes them first, for LAPACK.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from mdn_core.chain import SerialChain
from mdn_core.rotations import quaternion_matrix, rotation_log_columns

FloatArray = NDArray[np.floating]

MAX_ITERATIONS = 40
MIN_DAMPING = 1e-6
STALL_WINDOW = 5  # steps between checks that a seed still makes progress
STALL_RATIO = 0.3  # ... by cutting its squared error to under this fraction


def meets_tolerances(
    pos: NDArray[np.float64], rot: NDArray[np.float64], tolerance: float, orientation_tolerance: float
) -> NDArray[np.bool_]:
    """Where position errors are at most tolerance and orientation errors (NaN without a pose) at most
    orientation_tolerance: what counts as a solution."""
    out: NDArray[np.bool_] = (pos <= tolerance) & ((rot <= orientation_tolerance) | np.isnan(rot))
    return out


def clip_columns(chain: SerialChain, q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Joint values (J, n) clipped into the limits (continuous joints aside)."""
    lim = chain.limits
    out: NDArray[np.float64] = np.where(chain.unbounded[:, None], q, np.clip(q, lim[:, :1], lim[:, 1:]))
    return out


class _Goal:
    """Each seed's target, seeds last: positions (w, n) and, for poses, rotations (3, 3, n)."""

    def __init__(self, chain: SerialChain, targets: FloatArray, copies: int) -> None:
        t = np.repeat(np.asarray(targets, dtype=np.float64), copies, axis=0)
        self.pose = chain.target == "pose"
        width = 3 if self.pose else t.shape[1]
        self.position = np.ascontiguousarray(t[:, :width].T)
        self.rotation = np.ascontiguousarray(quaternion_matrix(t[:, 3:7]).transpose(1, 2, 0)) if self.pose else None

    def errors(
        self, at: NDArray[np.intp], position: NDArray[np.float64], rotation: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """For seeds `at` whose tips are at position (3, P), rotation (3, 3, P): the error vector (m, P),
        the position error (P,) and the orientation error (P,) (NaN without a pose)."""
        e_pos = np.take(self.position, at, axis=1) - position[: len(self.position)]
        pos = np.sqrt(np.einsum("ap,ap->p", e_pos, e_pos))
        if self.rotation is None:
            return e_pos, pos, np.full(len(at), np.nan)
        # log(R* R^T), R* the goal's rotation: (R* R^T)[a, b] = sum_c R*[a, c] R[b, c].
        e_rot = rotation_log_columns(np.einsum("acp,bcp->abp", np.take(self.rotation, at, axis=2), rotation))
        rot = np.sqrt(np.einsum("ap,ap->p", e_rot, e_rot))
        return np.concatenate([e_pos, e_rot]), pos, rot


def refine(
    chain: SerialChain,
    targets: FloatArray,
    seeds: FloatArray,
    tolerance: float,
    orientation_tolerance: float,
    iterations: int = MAX_ITERATIONS,
    skip: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    """Levenberg-Marquardt on the task error from each seed, kept inside the joint limits.

    targets (B, width), seeds (B, S, J) -> (refined values (B, S, J), steps taken (B, S)). Only the
    seeds still moving are computed; a step is kept if it lowers the weighted error (rotation
    weighted by tolerance / orientation_tolerance, so both tolerances weigh the same), and the
    damping shrinks after a good step and grows after a bad one. Seeds where `skip` (B, S) is True
    (padding) are left as they are.
    """
    batch, num, joints = np.shape(seeds)
    goal = _Goal(chain, targets, num)
    theta = clip_columns(chain, np.asarray(seeds, dtype=np.float64).reshape(batch * num, joints).T.copy())
    rows = chain.task_rows
    weight = np.ones((rows, 1))
    weight[3:] = tolerance / orientation_tolerance
    steps = np.zeros(batch * num, dtype=np.int32)

    def cost(q: NDArray[np.float64], at: NDArray[np.intp]) -> tuple[NDArray[np.float64], ...]:
        walk = chain.columns(q)
        assert walk.jacobian is not None
        e, pos, rot = goal.errors(at, walk.position, walk.rotation)
        return e * weight, pos, rot, walk.jacobian[:rows] * weight[:, :, None]

    everyone = np.arange(batch * num)
    e, pos, rot, jac = cost(theta, everyone)
    done = meets_tolerances(pos, rot, tolerance, orientation_tolerance)
    if skip is not None:
        done |= np.asarray(skip, dtype=bool).reshape(-1)
    active = np.flatnonzero(~done)
    damping = np.full(batch * num, 1e-3)
    diagonal = np.arange(rows)
    then = np.einsum("ap,ap->p", e, e)  # the squared weighted error at the last stall check
    for step_number in range(1, iterations + 1):
        if not active.size:
            break
        q, ea, ja = (np.take(a, active, axis=-1) for a in (theta, e, jac))
        lam = damping[active]
        jjt = np.einsum("ajp,bjp->pab", ja, ja)  # (P, m, m) for LAPACK
        jjt[:, diagonal, diagonal] += (lam**2)[:, None]
        step = np.einsum("ajp,pa->jp", ja, np.linalg.solve(jjt, ea.T[..., None])[..., 0])
        trial = clip_columns(chain, q + step)
        te, tpos, trot, tjac = cost(trial, active)
        better = np.einsum("ap,ap->p", te, te) < np.einsum("ap,ap->p", ea, ea)
        kept = active[better]
        theta[:, kept], e[:, kept], jac[:, :, kept] = trial[:, better], te[:, better], tjac[:, :, better]
        pos[kept], rot[kept] = tpos[better], trot[better]
        # Never below MIN_DAMPING: at a singular configuration J J^T alone cannot be inverted.
        damping[active] = np.where(better, np.maximum(lam * 0.3, MIN_DAMPING), lam * 4.0)
        steps[active] += 1
        converged = meets_tolerances(pos[active], rot[active], tolerance, orientation_tolerance)
        active = active[~converged & (damping[active] < 1e6)]
        if step_number % STALL_WINDOW == 0 and active.size:
            # A seed that has not cut its squared error to STALL_RATIO in STALL_WINDOW steps is stuck
            # (against a limit, or crawling along a singular direction): converging ones are far faster.
            ea = np.take(e, active, axis=1)
            now = np.einsum("ap,ap->p", ea, ea)
            moving = now < STALL_RATIO * then[active]
            active = active[moving]
            then[active] = now[moving]
    return theta.T.reshape(batch, num, joints), steps.reshape(batch, num)
