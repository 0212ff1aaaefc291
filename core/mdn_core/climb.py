"""Search primitives on one batch's Gaussian mixture, for mdn_core.modes: climbing, Newton polishing
and dip checks."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_core.mixture import _LOG_2PI, _max_last, _sum_last

FloatArray = NDArray[np.floating]

CAP = 1.0  # a climbing step is at most this many local scales long
FLOW_TIME = 0.5  # a flow step moves the slowest axis at most 1 - exp(-FLOW_TIME) of its way
NEWTON_TOL = 1e-7  # polishing stops when a Newton step is below this fraction of the finest scale
NEWTON_STEPS = 60
ROUNDING = 16 * float(np.finfo(np.float64).eps)  # a step this fraction of |x| is float64 rounding
DIP_POINTS = 7  # density checks on the segment between two nearby modes
_FEW_STARTS = 64
_STEPS_PER_GATHER = 8
_CHUNK = 1 << 15  # starts per climbing chunk: bounds the (K, D, starts) temporaries


@dataclass(frozen=True)
class MixtureSearch:
    """One batch's mixture in the form the searches use (float64).

    Besides the (B, K, D) arrays, the same with the components first and the rows last: the
    per-point work gathers its rows from those into (K, D, N) arrays and reduces over their
    leading axes, so that every numpy operation runs along the long axis of N points. (On the
    (N, K, D) layout, with K and D small, each operation loops over tiny inner axes: ten times
    slower on a planar arm's (5,000, 3, 2) arrays.)
    """

    means: FloatArray  # (B, K, D)
    precisions: FloatArray  # (B, K, D): 1 / scale^2
    log_norm: FloatArray  # (B, K): log weight + log of the normal's constant
    unit: FloatArray  # (B, D): the finest scale searched, the unit of every tolerance
    by_row: _ByRow  # means, precisions, means * precisions and log norms with the rows last

    @classmethod
    def of(cls, weights: FloatArray, means: FloatArray, scales: FloatArray, unit: FloatArray) -> MixtureSearch:
        with np.errstate(divide="ignore"):
            log_w = np.log(weights.astype(np.float64))
        mu = means.astype(np.float64)
        precisions = 1.0 / np.square(scales.astype(np.float64))
        log_norm = log_w + 0.5 * _sum_last(np.log(precisions)) - 0.5 * mu.shape[-1] * _LOG_2PI
        return cls(mu, precisions, log_norm, unit, _ByRow.of(mu, precisions, mu * precisions, log_norm))

    def single(self) -> MixtureSearch:
        """The same in float32: enough to tell which basin a climb ends in, and half the memory traffic."""
        f = np.float32
        r = self.by_row
        by_row = _ByRow(r.means.astype(f), r.precisions.astype(f), r.weighted.astype(f), r.log_norm.astype(f))
        return MixtureSearch(self.means.astype(f), self.precisions.astype(f), self.log_norm.astype(f),
                             self.unit.astype(f), by_row)  # fmt: skip

    def climb(
        self,
        x: FloatArray,
        row: NDArray[np.intp],
        tol: FloatArray,
        max_iter: int,
        known: tuple[NDArray[np.intp], FloatArray, FloatArray] | None = None,
        cap: float = CAP,
        flow: bool = False,
    ) -> tuple[FloatArray, NDArray[np.intp]]:
        """Fixed-point steps from points x (N, D) of rows `row` until a step is below tol (N, D).

        A fixed-point step raises p but may leap across a valley into another mode's basin. So a
        step is at most `cap` (CAP unless given) local scales long (1 / sqrt of the responsibility-weighted precision),
        and a step after which the density falls along its own direction (the climb passed a
        crest) is halved, back towards where it came from: each start stays in the basin it began
        in, and its end point says which basin that is. With `known` = (table (B, W) of mode
        indices per row, -1 padded; their points (M, D); their capture radii (M,)), a climb that
        comes within a known mode's radius stops there. Returns the end points and the capturing mode (or -1) of each.

        A fixed-point step jumps straight to the top of a local quadratic model of log p (Hessian
        -P per axis); where components are elongated that line bends away from the gradient flow's
        path, whose basins these are. With `flow`, a step follows the model's own flow, x(t) = c +
        (x - c) exp(-P t) (c its top), for a time that moves no axis past the cap nor the slowest
        more than 1 - exp(-FLOW_TIME) of its way: still an ascent, in a few more steps.
        """
        ends = np.array(x.T, order="C")  # (D, N), as every array below: points last
        caught = np.full(len(x), -1, dtype=np.intp)
        modes = _Known(*known) if known is not None and known[0].shape[1] else None
        for lo in range(0, len(x), _CHUNK):
            index = np.arange(lo, min(lo + _CHUNK, len(x)))
            b = row[index]
            xa, sa = ends[:, index], np.zeros((x.shape[1], len(index)), dtype=ends.dtype)
            limit = np.ascontiguousarray(tol[index].T)
            mb, pb, nb = self.by_row.at(b)
            wb = self.by_row.weighted_at(b)
            near = modes.near(b) if modes is not None else None
            alive = np.ones(len(index), dtype=bool)  # columns still climbing (the others are done)
            steps = 0
            while alive.any() and steps < max_iter:
                # With few starts left (slow ones on flat, overlapping components), several steps per
                # check: numpy's per-call cost, not arithmetic, is what they spend.
                for _ in range(1 if index.size > _FEW_STARTS else _STEPS_PER_GATHER):
                    log_r = _log_joint(xa, mb, pb, nb)
                    r = np.exp(log_r - log_r.max(axis=0))  # unnormalised: the ratios cancel it
                    rp = np.einsum("kn,kdn->dn", r, pb)
                    ahead = np.einsum("kn,kdn->dn", r, wb) / rp - xa  # the fixed-point step, along D grad log p
                    uphill = rp * ahead  # along grad log p
                    rate = rp / r.sum(axis=0)  # the model's curvature per axis
                    reach = cap / np.sqrt(rate)
                    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a zero step: no shortening
                        if flow:  # the time at which the first axis has moved its reach, or FLOW_TIME's
                            size = np.abs(ahead)
                            t = np.where(size > reach, -np.log1p(-reach / size) / rate, np.inf).min(axis=0)
                            ahead *= -np.expm1(-rate * np.minimum(t, FLOW_TIME / rate.min(axis=0)))
                        else:
                            ahead *= np.minimum(1.0, (reach / np.abs(ahead)).min(axis=0))
                    passed = (uphill * sa).sum(axis=0) < 0.0  # the density now falls along the last step
                    sa = np.where(passed, 0.5 * sa, ahead)
                    xa = np.where(passed, xa - sa, xa + ahead)
                    steps += 1
                moving = alive & ((np.abs(sa) / limit).max(axis=0) > 1.0)
                if near is not None:
                    inside, mode = near.capture(xa)
                    inside &= moving
                    caught[index[inside]] = mode[inside]
                    moving &= ~inside
                done = alive & ~moving
                if done.any():  # their end points out; the others go on
                    ends[:, index[done]] = xa[:, done]
                    alive = moving
                    count = np.count_nonzero(alive)
                    if count <= 0.75 * len(alive) or (count <= _FEW_STARTS < len(alive)):
                        keep = np.flatnonzero(alive)  # fewer columns to compute: worth the copies
                        index, b, nb, alive = index[keep], b[keep], np.take(nb, keep, axis=1), alive[keep]
                        xa, sa, limit = (np.take(a, keep, axis=1) for a in (xa, sa, limit))
                        mb, pb, wb = (np.take(a, keep, axis=2) for a in (mb, pb, wb))
                        near = near.take(keep) if near is not None else None
            ends[:, index[alive]] = xa[:, alive]  # out of steps: where they got to
        return np.ascontiguousarray(ends.T), caught

    def fixed_point(self, x: FloatArray, row: NDArray[np.intp]) -> FloatArray:
        """Where one fixed-point step from points x (N, D) of rows `row` lands (uncapped)."""
        mb, pb, nb = self.by_row.at(row)
        log_r = _log_joint(x.T, mb, pb, nb)
        r = np.exp(log_r - log_r.max(axis=0))
        wb = self.by_row.weighted_at(row)
        out: FloatArray = (np.einsum("kn,kdn->dn", r, wb) / np.einsum("kn,kdn->dn", r, pb)).T
        return out

    def log_p(self, x: FloatArray, row: NDArray[np.intp]) -> FloatArray:
        """log p at points x (N, D) of rows `row`."""
        return _logsumexp_first(_log_joint(x.T, *self.by_row.at(row)))

    def local(self, x: FloatArray, row: NDArray[np.intp]) -> tuple[FloatArray, ...]:
        """At points x (N, D) of rows `row`: log p (N,), its gradient (N, D) and Hessian (N, D, D), and
        the fixed-point step's destination (N, D)."""
        mb, pb, nb = self.by_row.at(row)
        diff = x.T[None] - mb  # (K, D, N)
        grad_k = -diff * pb  # gradient of log N_k
        log_joint = nb + 0.5 * _sum_middle(diff * grad_k)
        log_p = _logsumexp_first(log_joint)
        r = np.exp(log_joint - log_p)  # responsibilities (K, N)
        grad = np.einsum("kn,kdn->nd", r, grad_k)
        hess = np.einsum("kdn,ken->nde", r[:, None, :] * grad_k, grad_k) - grad[:, :, None] * grad[:, None, :]
        diag = np.einsum("kn,kdn->nd", r, pb)
        hess -= diag[:, :, None] * np.eye(x.shape[-1])
        fixed = np.einsum("kn,kdn->nd", r, self.by_row.weighted_at(row)) / diag
        return log_p, grad, hess, fixed, diag

    def polish(
        self, x: FloatArray, row: NDArray[np.intp]
    ) -> tuple[FloatArray, FloatArray, NDArray[np.bool_], FloatArray]:
        """Newton steps on log p from x (N, D): (points, log p, whether each is a converged peak, and
        the largest curvature -d2 log p there, along the peak's narrowest direction)."""
        x = x.copy()
        n, dim = x.shape
        converged = np.zeros(n, dtype=bool)
        # log p, Hessian and precision sum where each point stopped (a point that stops does not move, so
        # what its last step computed there is what the end needs: no second pass over every point).
        at_log_p, at_hess, at_diag = np.empty(n), np.empty((n, dim, dim)), np.empty((n, dim))
        active = np.arange(n)
        for _ in range(NEWTON_STEPS):
            if not active.size:
                break
            b = row[active]
            xa = x[active]
            log_p, grad, hess, fixed, diag = self.local(xa, b)
            newton = _newton_steps(hess, grad, diag)
            # NEWTON_TOL of the finest scale, unless that is below float64's resolution at x (a
            # scale under 3.6e-8 of the coordinates): then ROUNDING of |x|, as close as steps get.
            unit = np.maximum(self.unit[b], np.abs(xa) * (ROUNDING / NEWTON_TOL))
            # A Newton step, halved up to twice until it climbs, else the fixed-point step (which
            # never lowers p). Converged: the Newton step is below NEWTON_TOL, or (at the very top of a
            # flat peak, where the curvature vanishes to rounding and Newton fails) the fixed-point step.
            newton_small = _max_last(np.abs(newton) / unit) <= NEWTON_TOL
            step = fixed.copy()
            newton_failed = _newton_where_it_climbs(self, xa, b, newton, log_p, step, ~newton_small)
            done = newton_small | (newton_failed & (_max_last(np.abs(fixed - xa) / unit) <= NEWTON_TOL))
            converged[active[done]] = True
            stopped = active[done]
            at_log_p[stopped], at_hess[stopped], at_diag[stopped] = log_p[done], hess[done], diag[done]
            x[active[~done]] = step[~done]
            active = active[~done]
        if active.size:  # ran out of steps: where they ended
            at_log_p[active], _, at_hess[active], _, at_diag[active] = self.local(x[active], row[active])
        log_p, hess, diag = at_log_p, at_hess, at_diag
        # A peak: no direction of positive curvature. The allowance (relative to the precisions)
        # admits flat-topped peaks, where the curvature itself goes to 0; a saddle's is far larger.
        eig = _eigenvalues(hess)
        peak = converged & (eig[:, -1] <= 1e-6 * _max_last(diag))
        return x, log_p, peak, -eig[:, 0]  # ..., and the sharpest curvature of log p

    def no_dip(self, a: FloatArray, b: FloatArray, row: NDArray[np.intp], floor: FloatArray) -> NDArray[np.bool_]:
        """True where log p stays at or above floor (N,) all along the segments from a to b (N, D)."""
        t = np.arange(1, DIP_POINTS + 1) / (DIP_POINTS + 1)
        points = a[:, None, :] + t[None, :, None] * (b - a)[:, None, :]  # (N, T, D)
        n, count, dim = points.shape
        log_p = self.log_p(points.reshape(n * count, dim), np.repeat(row, count)).reshape(n, count)
        out: NDArray[np.bool_] = np.min(log_p, axis=1) >= floor - 1e-12 * np.abs(floor)
        return out


class _Known:
    """Known modes a climb stops at: a table (B, W) of mode indices per row (-1 padded), their points
    (M, D) and capture radii (M,)."""

    def __init__(self, table: NDArray[np.intp], points: FloatArray, radius: FloatArray) -> None:
        self.table = np.ascontiguousarray(table.T)  # (W, B): the points last, as in the climb
        self.axes, self.radius2 = np.ascontiguousarray(points.T), np.square(radius)

    def near(self, row: NDArray[np.intp]) -> _Near:
        """The known modes of the rows of climbing points, gathered once for as long as they climb."""
        mode = np.take(self.table, row, axis=1)  # (W, P)
        valid = mode >= 0
        there = np.where(valid, mode, 0)
        coords = np.stack([np.take(c, there) for c in self.axes])
        inverse = np.where(valid, 1.0 / np.take(self.radius2, there), 0.0).astype(self.axes.dtype)
        return _Near(mode, coords, inverse, valid)


@dataclass(frozen=True)
class _Near:
    """Climbing points' known modes, with the points last (W known modes per row, P points): indices
    (W, P), coordinates (D, W, P), 1 / radius^2 (W, P), and which slots hold a mode (W, P)."""

    mode: NDArray[np.intp]
    coords: FloatArray
    inverse: FloatArray
    valid: NDArray[np.bool_]

    def take(self, keep: NDArray[np.intp]) -> _Near:
        return _Near(np.take(self.mode, keep, axis=1), np.take(self.coords, keep, axis=2),
                     np.take(self.inverse, keep, axis=1), np.take(self.valid, keep, axis=1))  # fmt: skip

    def capture(self, xt: FloatArray) -> tuple[NDArray[np.bool_], NDArray[np.intp]]:
        """For points xt (D, P): whether each is within a known mode's radius, and which (the nearest
        in radii; meaningful where within). One axis at a time over (W, P) arrays: a 7-joint arm's
        rows know a dozen modes or more, and a loop over them would cost W x D numpy calls per check."""
        gap = functools.reduce(np.add, [np.square(c - x) for c, x in zip(self.coords, xt, strict=True)])
        gap *= self.inverse
        gap[~self.valid] = np.inf
        slot = np.argmin(gap, axis=0)  # the first of equals, as known modes are listed
        column = np.arange(xt.shape[1])
        return gap[slot, column] < 1.0, self.mode[slot, column]


@dataclass(frozen=True)
class _ByRow:
    """A mixture's arrays with the rows last: (K, D, B) and (K, B)."""

    means: FloatArray
    precisions: FloatArray
    weighted: FloatArray
    log_norm: FloatArray

    @classmethod
    def of(cls, means: FloatArray, precisions: FloatArray, weighted: FloatArray, log_norm: FloatArray) -> _ByRow:
        def last(a: FloatArray) -> FloatArray:
            out: FloatArray = np.ascontiguousarray(a.transpose(1, 2, 0))
            return out

        return cls(last(means), last(precisions), last(weighted), np.ascontiguousarray(log_norm.T))

    def at(self, row: NDArray[np.intp]) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Means and precisions (K, D, N) and log norms (K, N) of rows `row`."""
        take = functools.partial(np.take, indices=row, axis=-1)
        return take(self.means), take(self.precisions), take(self.log_norm)

    def weighted_at(self, row: NDArray[np.intp]) -> FloatArray:
        """Weighted means (K, D, N) of rows `row`."""
        out: FloatArray = np.take(self.weighted, row, axis=2)
        return out


def _sum_middle(a: FloatArray) -> FloatArray:
    """(K, D, N) -> (K, N): the sum over D, slice by slice (each slice a long contiguous run)."""
    out: FloatArray = functools.reduce(np.add, [a[:, d] for d in range(a.shape[1])])
    return out


def _log_joint(xt: FloatArray, mb: FloatArray, pb: FloatArray, nb: FloatArray) -> FloatArray:
    """log (w_k N_k(x)) (K, N) at points xt (D, N) from rows' means and precisions (K, D, N), log norms (K, N)."""
    diff = xt[None] - mb
    return nb - 0.5 * _sum_middle(diff * diff * pb)


def _logsumexp_first(a: FloatArray) -> FloatArray:
    """log sum exp over the first axis."""
    peak = a.max(axis=0)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    out: FloatArray = np.log(np.exp(a - peak).sum(axis=0)) + peak
    return out


def _newton_where_it_climbs(
    mix: MixtureSearch, x: FloatArray, row: NDArray[np.intp], newton: FloatArray, log_p: FloatArray,
    step: FloatArray, tried: NDArray[np.bool_],
) -> NDArray[np.bool_]:  # fmt: skip
    """Where `tried`, the Newton step from x (N, D), halved up to twice until it climbs, replaces `step`
    (in place; the fixed-point step, which never lowers p). Returns where no Newton step climbed."""
    pending = np.flatnonzero(tried)
    for fraction in (1.0, 0.5, 0.25):
        if not pending.size:
            break
        trial = x[pending] + fraction * newton[pending]
        climbed = mix.log_p(trial, row[pending]) >= log_p[pending] - 1e-12 * np.abs(log_p[pending])
        step[pending[climbed]] = trial[climbed]
        pending = pending[~climbed]
    failed = np.zeros(len(x), dtype=bool)
    failed[pending] = True
    return failed


def _newton_steps(hess: FloatArray, grad: FloatArray, diag: FloatArray) -> FloatArray:
    """-H^-1 g for each point (N, D, D), (N, D); H shifted by a rounding-sized multiple of the identity
    so that a singular one (a flat top) still solves. Where H is not concave the step may point
    anywhere: the caller only takes it if it climbs. In one and two dimensions by the closed form
    (numpy's batched solve costs more than the arithmetic there)."""
    shifted = hess - 1e-12 * _max_last(diag)[:, None, None] * np.eye(hess.shape[-1])
    dim = hess.shape[-1]
    if dim <= 2:
        a, b, c = shifted[:, 0, 0], shifted[:, 0, -1], shifted[:, -1, -1]
        det = a if dim == 1 else a * c - b * b
        if np.all(det != 0.0):
            if dim == 1:
                step: FloatArray = -grad / a[:, None]
                return step
            g0, g1 = grad[:, 0], grad[:, 1]
            return np.stack([(b * g1 - c * g0) / det, (b * g0 - a * g1) / det], axis=1)
    try:
        out: FloatArray = -np.linalg.solve(shifted, grad[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:  # an exactly singular one in the batch: the pseudo-inverse
        out = -(np.linalg.pinv(shifted) @ grad[:, :, None])[:, :, 0]
    return out


def _eigenvalues(hess: FloatArray) -> FloatArray:
    """Eigenvalues of symmetric matrices (N, D, D), ascending; in one and two dimensions by the closed form."""
    dim = hess.shape[-1]
    if dim == 1:
        return hess[:, :, 0]
    if dim == 2:
        a, b, c = hess[:, 0, 0], 0.5 * (hess[:, 0, 1] + hess[:, 1, 0]), hess[:, 1, 1]
        mid, radius = 0.5 * (a + c), np.hypot(0.5 * (a - c), b)
        return np.stack([mid - radius, mid + radius], axis=1)
    out: FloatArray = np.linalg.eigvalsh(hess)
    return out
