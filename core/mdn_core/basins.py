"""Basin probabilities, for mdn_core.modes: the fixed quasi-random points that split a component
between basins, where a component's probes start, and exact basin masses in one dimension."""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray

from mdn_core.climb import MixtureSearch
from mdn_core.settle import Settled

FloatArray = NDArray[np.floating]

CUT_TOL = 1e-10  # the minimum between two modes is bisected to this fraction of the finest scale
PROBE = 2.0  # probes sit this many scales from a component's mean along each axis
PROBE_AXES = 2  # ... along this many of its widest axes (all of them in one dimension)
PLANE_PROBES = 8  # in two dimensions, quasi-random draws of the component instead
SLIVER = 2e-3  # a component that may hold this much of another mode's basin is split (see sliver_risk)
SLIVER_MARGIN = 3.0  # ... by an estimate that takes this many times the basin's core volume


@functools.lru_cache(maxsize=32)
def basin_points(count: int, dim: int) -> NDArray[np.float64]:
    """`count` fixed points spread evenly over the standard normal in `dim` dimensions (read-only).

    Quasi-random rather than random: the uniforms are the midpoints (j + 1/2) / count in one
    dimension and, in more, antithetic pairs (u, 1 - u) from a Kronecker sequence (the R_d
    sequence: frac(1/2 + j * alpha), alpha the powers of the inverse of the d-dimensional golden
    ratio), mapped through the normal's inverse CDF. A basin's share of a component is then
    estimated with an error nearer 1 / count than the 1 / sqrt(count) of random draws.
    """
    if dim == 1:
        uniform = (np.arange(count, dtype=np.float64)[:, None] + 0.5) / count
    else:
        phi = 2.0
        for _ in range(64):  # the root of x^(d+1) = x + 1
            phi = (1.0 + phi) ** (1.0 / (dim + 1))
        alpha = (1.0 / phi) ** np.arange(1, dim + 1)
        half = (0.5 + np.arange((count + 1) // 2, dtype=np.float64)[:, None] * alpha[None, :]) % 1.0
        uniform = np.concatenate([half, 1.0 - half])[:count]  # antithetic: symmetric about the mean
    points: NDArray[np.float64] = np.vectorize(_normal_quantile, otypes=[np.float64])(uniform)
    points.setflags(write=False)
    return points


def probe_offsets(spread: FloatArray) -> FloatArray:
    """Where the probes of components of scales `spread` (P, D) start, from their means (P, Q, D)."""
    count, dim = len(spread), spread.shape[1]
    if dim == 2:
        out: FloatArray = spread[:, None, :] * basin_points(PLANE_PROBES, 2)[None]
        return out
    axes = min(dim, PROBE_AXES)
    widest = np.argsort(spread, axis=1)[:, -axes:]  # (P, axes)
    offsets = np.zeros((count, 2 * axes, dim))
    index = np.arange(count)[:, None]
    reach = PROBE * np.take_along_axis(spread, widest, axis=1)
    offsets[index, np.arange(axes)[None, :], widest] = reach
    offsets[index, axes + np.arange(axes)[None, :], widest] = -reach
    return offsets


def _normal_quantile(u: float) -> float:
    """The standard normal's inverse CDF by bisection on math.erf (only for the cached points above)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < u:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def sliver_risk(
    log_norm: FloatArray,
    means: FloatArray,
    spread: FloatArray,
    owner: NDArray[np.intp],
    others: NDArray[np.intp],
    known: Settled,
    held: FloatArray,
) -> NDArray[np.bool_]:
    """For components (C,) whose mean and probes all reached mode `owner`: whether they may hold
    SLIVER of probability in the basin of another mode of their row all the same (a sliver of a
    broad component around a narrow peak, which a few probes miss).

    log_norm (C,): log weight + log of the normal's constant (as MixtureSearch holds it); means and
    spread (C, D); others (C, W): the modes of each one's row (-1 padded), as indices of `known`'s
    candidates; held: the weight whose means reached each candidate. The estimate: the component's
    density at the mode, times the volume that the mode's weight would fill at the mode's density,
    times SLIVER_MARGIN (the basin reaches beyond that core, and the component's density rises
    towards its mean).
    """
    at = np.maximum(others, 0)
    z = (known.x[at] - means[:, None, :]) / spread[:, None, :]  # (C, W, D)
    log_share = log_norm[:, None] - 0.5 * np.sum(z * z, axis=-1) - known.log_p[at]
    with np.errstate(over="ignore"):
        share = SLIVER_MARGIN * np.exp(np.minimum(log_share, 50.0)) * held[at]
    out: NDArray[np.bool_] = np.any((others >= 0) & (others != owner[:, None]) & (share > SLIVER), axis=1)
    return out


def normal_cdf(z: FloatArray) -> FloatArray:
    """The standard normal CDF, through erf by Abramowitz and Stegun 7.1.26 (absolute error < 1.5e-7)."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    out: FloatArray = 0.5 * (1.0 + np.sign(z) * erf)
    return out


def interval_masses(
    mix: MixtureSearch,
    weights: FloatArray,
    scales: FloatArray,
    x: FloatArray,
    row: NDArray[np.intp],
    is_mode: NDArray[np.bool_],
) -> FloatArray:
    """One dimension: each mode's basin is the interval between the density's minima on either side
    of it; its probability is the mixture's CDF difference over that interval (exact to 1.5e-7; the
    minima are found to CUT_TOL of the finest scale, which moves a mass by less than 1e-9)."""
    mass = np.zeros(len(x))
    modes = np.flatnonzero(is_mode)
    modes = modes[np.lexsort((x[modes], row[modes]))]  # by row, then position
    r = row[modes]
    inner = np.flatnonzero(r[1:] == r[:-1])  # gaps between neighbouring modes of one row
    lo, hi = x[modes[inner]], x[modes[inner + 1]]
    gr = r[inner]
    # Components first, gaps last (each operation runs along the gaps).
    mu, prec = mix.means[gr, :, 0].T.copy(), mix.precisions[gr, :, 0].T.copy()
    log_norm, close = mix.log_norm[gr].T.copy(), CUT_TOL * mix.unit[gr, 0]
    for _ in range(64):  # bisection for where d/dx log p turns from falling to rising
        mid = 0.5 * (lo + hi)
        log_joint = log_norm - 0.5 * (mid - mu) ** 2 * prec
        r_mid = np.exp(log_joint - log_joint.max(axis=0))
        falling = (r_mid * (mu - mid) * prec).sum(axis=0) < 0.0
        lo, hi = np.where(falling, mid, lo), np.where(falling, hi, mid)
        if np.all(hi - lo <= close):
            break
    cut = 0.5 * (lo + hi)
    left = np.full(len(modes), -np.inf)
    right = np.full(len(modes), np.inf)
    left[inner + 1], right[inner] = cut, cut
    mu, sigma = mix.means[r, :, 0], scales.astype(np.float64)[r, :, 0]
    with np.errstate(invalid="ignore"):
        share = normal_cdf((right[:, None] - mu) / sigma) - normal_cdf((left[:, None] - mu) / sigma)
    mass[modes] = np.sum(weights[r] * share, axis=1)
    return mass
