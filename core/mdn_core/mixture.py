"""Gaussian-mixture math on the outputs of an exported MDN (numpy only).

Every function takes the three tensors the ONNX graph returns, in raw units:

    weights  (B, K)      mixing coefficients, rows sum to 1
    means    (B, K, D)   component means
    scales   (B, K, D)   component standard deviations (diagonal covariance), > 0

The server calls these at request time and the trainer's evaluation calls the same
functions, so what is evaluated is exactly what is served. Everything is vectorised
over the batch and the components; nothing loops over rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating]

_LOG_2PI = float(np.log(2.0 * np.pi))


# numpy's reductions are slow along a short last axis (components K, dimensions D): these
# take the maximum slice by slice and sum with a matrix product, several times faster.


def _max_last(a: FloatArray) -> FloatArray:
    """np.max(a, axis=-1)."""
    out: FloatArray = functools.reduce(np.maximum, [a[..., j] for j in range(a.shape[-1])])
    return out


def _sum_last(a: FloatArray) -> FloatArray:
    """np.sum(a, axis=-1) of a floating array."""
    out: FloatArray = a @ np.ones(a.shape[-1], dtype=a.dtype)
    return out


def _logsumexp(a: FloatArray) -> FloatArray:
    """log sum exp over the last axis."""
    peak = _max_last(a)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    out: FloatArray = np.log(_sum_last(np.exp(a - peak[..., None]))) + peak
    return out


def _component_log_density(points: FloatArray, means: FloatArray, scales: FloatArray) -> FloatArray:
    """log N(points | mean_k, diag(scale_k^2)) for every point and component.

    points (B, N, D), means and scales (B, K, D)  ->  (B, N, K)
    """
    z = (points[:, :, None, :] - means[:, None, :, :]) / scales[:, None, :, :]  # (B, N, K, D)
    log_norm = -np.sum(np.log(scales), axis=-1) - 0.5 * means.shape[-1] * _LOG_2PI  # (B, K)
    out: FloatArray = -0.5 * np.sum(z * z, axis=-1) + log_norm[:, None, :]
    return out


def log_density(weights: FloatArray, means: FloatArray, scales: FloatArray, points: FloatArray) -> FloatArray:
    """log p(y | x) of the mixture in each row at the given points.

    points (B, D) -> (B,), or points (B, N, D) -> (B, N).
    """
    single = points.ndim == 2
    pts = points[:, None, :] if single else points
    with np.errstate(divide="ignore"):
        log_w = np.log(weights.astype(np.float64))
    comp = _component_log_density(pts.astype(np.float64), means.astype(np.float64), scales.astype(np.float64))
    out = _logsumexp(comp + log_w[:, None, :])  # (B, N)
    return out[:, 0] if single else out


def tempered_weights(weights: FloatArray, temperature: float) -> FloatArray:
    """Weights proportional to pi^(1/temperature), renormalised per row."""
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with np.errstate(divide="ignore"):
        log_w = np.log(weights.astype(np.float64))
    # Shift each row's largest log-weight to 0 before dividing: however small the temperature,
    # the heaviest component stays at 0 and the others go to -inf, never inf - inf (NaN).
    peak = np.max(log_w, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_w = (log_w - np.where(np.isfinite(peak), peak, 0.0)) / temperature
    log_w = np.where(np.isnan(log_w), -np.inf, log_w)
    log_w -= _logsumexp(log_w)[:, None]
    out: FloatArray = np.exp(log_w)
    return out


def sample_draws(
    rng: np.random.Generator, rows: int, num_samples: int, dim: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The random numbers sample_mixture consumes: uniforms (B, N) and standard normals (B, N, D)."""
    return rng.random((rows, num_samples)), rng.standard_normal((rows, num_samples, dim))


def samples_from_draws(
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    uniforms: NDArray[np.float64],
    normals: NDArray[np.float64],
    temperature: float = 1.0,
) -> NDArray[np.float32]:
    """Turn draws into mixture samples (B, N, D): inverse-CDF component choice, then scale and shift."""
    batch = means.shape[0]
    w = tempered_weights(weights, temperature)
    cdf = np.cumsum(w, axis=-1)  # (B, K)
    cdf[:, -1] = 1.0
    # Vectorised inverse CDF: count the cdf entries at or below each draw (one slice at a time:
    # see _max_last for why not np.sum over the component axis).
    comp = np.zeros(uniforms.shape, dtype=np.intp)  # (B, N)
    for j in range(cdf.shape[1] - 1):
        comp += uniforms >= cdf[:, j : j + 1]
    # Gather from the flattened (B*K, D) parameters: np.take on one axis is several times
    # faster than indexing (rows, comp) on two.
    k = means.shape[1]
    index = np.arange(batch)[:, None] * k + comp  # (B, N)
    mu = np.take(means.reshape(batch * k, -1), index, axis=0)  # (B, N, D)
    sigma = np.take(scales.reshape(batch * k, -1), index, axis=0) * np.sqrt(temperature)
    out: NDArray[np.float32] = (mu + sigma * normals).astype(np.float32)
    return out


def sample_mixture(
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    num_samples: int,
    rng: np.random.Generator,
    temperature: float = 1.0,
) -> NDArray[np.float32]:
    """Draw num_samples points from each row's mixture -> (B, N, D) float32.

    Temperature tau reshapes the mixture: weights proportional to pi^(1/tau) and scales
    times sqrt(tau). tau < 1 sharpens towards the dominant components, tau > 1 flattens.
    The draws depend only on the inputs and the generator's state.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    tempered_weights(weights[:0], temperature)  # validates the temperature before drawing
    uniforms, normals = sample_draws(rng, means.shape[0], num_samples, means.shape[-1])
    return samples_from_draws(weights, means, scales, uniforms, normals, temperature)


DEFAULT_MIN_MASS = 1e-3


@dataclass(frozen=True)
class Modes:
    """Modes of each row's mixture, sorted by mass (largest first) and padded with NaN.

    modes (B, M, D), log_density (B, M), mass (B, M), num_modes (B,) with M = max(num_modes).
    """

    modes: NDArray[np.float32]
    log_density: NDArray[np.float32]
    mass: NDArray[np.float32]
    num_modes: NDArray[np.int32]

    def take(self, start: int, stop: int, max_modes: int = 0) -> Modes:
        """Rows start:stop, at most max_modes each (0: all), padded to their own widest row."""
        num = self.num_modes[start:stop]
        if max_modes:
            num = np.minimum(num, max_modes)
        width = int(num.max()) if len(num) else 0
        return Modes(
            self.modes[start:stop, :width],
            self.log_density[start:stop, :width],
            self.mass[start:stop, :width],
            num,
        )


_UNSEARCHED_MASS_FRACTION = 1e-3
_FEW_STARTS = 64
_STEPS_PER_GATHER = 8


def _fixed_point(
    log_w: FloatArray,
    means: FloatArray,
    precisions: FloatArray,
    max_iter: int,
    tol: FloatArray,
    searched: NDArray[np.bool_],
) -> FloatArray:
    """Iterate the mean-shift / EM fixed point from every component mean.

    Update per dimension: x_d <- sum_k r_k mu_kd / s_kd^2  /  sum_k r_k / s_kd^2, where
    r_k are the responsibilities at x. It increases p(x) at every step. Only the starts that
    have not converged are computed, so a few slow starts (on flat, overlapping components)
    do not keep the whole batch iterating. Starts where searched (B, K) is False stay put.
    """
    batch, k, dim = means.shape
    log_norm = 0.5 * np.sum(np.log(precisions), axis=-1) + log_w  # (B, K): log weight + log 1/prod(s)
    weighted_means = means * precisions  # (B, K, D)
    # The first step, from every component mean at once, broadcasts instead of gathering.
    diff = means[:, :, None, :] - means[:, None, :, :]  # (B, S, K, D), one start S per component
    log_r = log_norm[:, None, :] - 0.5 * _sum_last(diff * diff * precisions[:, None, :, :])
    r = np.exp(log_r - _max_last(log_r)[..., None])
    first = (r @ weighted_means) / (r @ precisions)  # (B, S, D)
    moving = searched & (_max_last(np.abs(first - means) / tol) > 1.0)
    x = np.where(searched[:, :, None], first, means).reshape(batch * k, dim)
    row = np.repeat(np.arange(batch), k)
    tol_flat = np.broadcast_to(tol, (batch, k, dim)).reshape(batch * k, dim)
    active = np.flatnonzero(moving)
    steps = 1
    while active.size and steps < max_iter:
        b = row[active]
        xa, mb, pb, wb, nb = x[active], means[b], precisions[b], weighted_means[b], log_norm[b]
        # Once few starts are left (the slow ones, on flat overlapping components), take
        # several steps per gather: numpy's per-call cost, not arithmetic, is what they spend.
        for _ in range(1 if active.size > _FEW_STARTS else _STEPS_PER_GATHER):
            previous = xa
            diff = xa[:, None, :] - mb  # (P, K, D)
            log_r = nb - 0.5 * _sum_last(diff * diff * pb)
            r = np.exp(log_r - _max_last(log_r)[:, None])[:, None, :]  # unnormalised: the ratio cancels the sum
            xa = ((r @ wb) / (r @ pb))[:, 0]
            steps += 1
        x[active] = xa
        active = active[_max_last(np.abs(xa - previous) / tol_flat[active]) > 1.0]
    out: FloatArray = x.reshape(batch, k, dim)
    return out


def _density_and_peak(
    log_w: FloatArray, means: FloatArray, precisions: FloatArray, x: FloatArray
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """log p(x) at each point (B, S), and whether the Hessian of p is negative definite there.

    A point where the Hessian is not negative definite is a saddle (or a flat spot), not a mode.
    """
    dim = x.shape[-1]
    diff = x[:, :, None, :] - means[:, None, :, :]  # (B, S, K, D)
    grad = -diff * precisions[:, None, :, :]  # gradient of log N_k at each point
    log_norm = 0.5 * _sum_last(np.log(precisions)) - 0.5 * dim * _LOG_2PI + log_w  # (B, K)
    log_joint = log_norm[:, None, :] + 0.5 * _sum_last(diff * grad)  # (B, S, K): log w_k N_k
    log_p = _logsumexp(log_joint)
    r = np.exp(log_joint - log_p[:, :, None])  # responsibilities
    weighted = r[..., None] * grad  # (B, S, K, D)
    diag = r @ precisions  # (B, S, D)
    # H / p = sum_k r_k (g_k g_k^T - diag(1 / s_k^2)), g_k the gradient of log N_k
    if dim == 1:
        peak = _sum_last(weighted[..., 0] * grad[..., 0]) - diag[..., 0] < 0.0
    elif dim == 2:  # a symmetric 2x2 matrix is negative definite iff its trace < 0 and det > 0
        a = _sum_last(weighted[..., 0] * grad[..., 0]) - diag[..., 0]
        b = _sum_last(weighted[..., 0] * grad[..., 1])
        d = _sum_last(weighted[..., 1] * grad[..., 1]) - diag[..., 1]
        peak = (a + d < 0.0) & (a * d - b * b > 0.0)
    else:
        hessian = np.einsum("bskd,bske->bsde", weighted, grad) - diag[..., None] * np.eye(dim)
        peak = np.all(np.linalg.eigvalsh(hessian) < 0.0, axis=-1)
    return log_p, peak


def mixture_modes(
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    max_modes: int = 0,
    max_iter: int = 500,
    tol: float = 1e-7,
    merge_tol: float = 1e-3,
    min_mass: float = DEFAULT_MIN_MASS,
) -> Modes:
    """Find the modes of each row's mixture by a fixed-point search from every component mean.

    tol and merge_tol are relative to the smallest component scale of the row in each
    dimension: the search stops when a step is below tol, and converged points closer than
    merge_tol are one mode. Each mode carries its log-density and its mass, the summed
    weight of the components whose search converged to it. Saddle points are discarded,
    and so are modes whose mass is below min_mass: a trained MDN parks the components it
    does not need at near-zero weight, anywhere, and their means are not answers. Components
    lighter than a thousandth of min_mass are not searched from at all (K of them together
    cannot lift a mode to min_mass), which spares the slowest searches. max_modes = 0 keeps
    all the modes.
    """
    if max_modes < 0:
        raise ValueError(f"max_modes must be >= 0, got {max_modes}")
    w = weights.astype(np.float64)
    mu = means.astype(np.float64)
    sigma = scales.astype(np.float64)
    batch, k, _dim = mu.shape
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    precisions = 1.0 / (sigma * sigma)
    unit = np.min(sigma, axis=1)[:, None, :]  # (B, 1, D): the row's finest scale per dimension

    searched = w >= min_mass * _UNSEARCHED_MASS_FRACTION
    x = _fixed_point(log_w, mu, precisions, max_iter, tol * unit, searched)
    x[~searched] = np.nan

    # Merge starts that reached the same point: each start points at the first start close
    # to it; pointer jumping then makes every chain end at its representative.
    gap = _max_last(np.abs(x[:, :, None, :] - x[:, None, :, :]) / unit[:, :, None, :])  # (B, S, S)
    parent = np.argmax(gap < merge_tol, axis=-1)  # (B, S); the diagonal guarantees a hit
    rows = np.arange(batch)[:, None]
    for _ in range(max(1, int(np.ceil(np.log2(k))) + 1)):
        parent = parent[rows, parent]
    is_rep = (parent == np.arange(k)[None, :]) & searched
    mass = np.einsum("bs,bsj->bj", np.where(searched, w, 0.0), parent[:, :, None] == np.arange(k))

    # Density and the saddle test only where a mode may be kept.
    candidate = is_rep & (mass >= min_mass)
    b, s = np.nonzero(candidate)
    dens = np.full((batch, k), np.nan)
    peak = np.zeros((batch, k), dtype=bool)
    dens[b, s], peak[b, s] = (v[:, 0] for v in _density_and_peak(log_w[b], mu[b], precisions[b], x[b, s][:, None]))
    keep = candidate & peak

    num_modes = keep.sum(axis=1).astype(np.int32)
    if max_modes:
        num_modes = np.minimum(num_modes, max_modes)
    width = int(num_modes.max()) if batch else 0
    # Sort the kept modes by mass (then density) first; dropped starts sink to the end.
    order = np.lexsort((-dens, -mass, ~keep), axis=-1)[:, :width]  # (B, M)
    valid = np.arange(width)[None, :] < num_modes[:, None]
    out_modes = np.where(valid[:, :, None], x[rows, order], np.nan).astype(np.float32)
    out_dens = np.where(valid, dens[rows, order], np.nan).astype(np.float32)
    out_mass = np.where(valid, mass[rows, order], np.nan).astype(np.float32)
    return Modes(out_modes, out_dens, out_mass, num_modes)
