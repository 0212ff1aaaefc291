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

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating]

_LOG_2PI = float(np.log(2.0 * np.pi))


# numpy's reductions are slow along a short last axis (components K, dimensions D): these
# work slice by slice, or sum with one matrix product over the array seen as 2-D (a product
# of a 3-D array with a vector loops over its leading axes, one small product each: 15x slower
# on (5,000, 3, 2)). Measured on (5,000, 3, 2), (1,000, 32, 7) and (256, 512, 32) arrays.
_FEW = 4  # up to this many slices, adding them beats the matrix product


def _max_last(a: FloatArray) -> FloatArray:
    """np.max(a, axis=-1)."""
    out: FloatArray = functools.reduce(np.maximum, [a[..., j] for j in range(a.shape[-1])])
    return out


def _min_last(a: FloatArray) -> FloatArray:
    """np.min(a, axis=-1)."""
    out: FloatArray = functools.reduce(np.minimum, [a[..., j] for j in range(a.shape[-1])])
    return out


def _sum_last(a: FloatArray) -> FloatArray:
    """np.sum(a, axis=-1) of a floating array (a new array)."""
    n = a.shape[-1]
    if n == 1:
        return a[..., 0].copy()
    if n <= _FEW:
        out: FloatArray = functools.reduce(np.add, [a[..., j] for j in range(n)])
        return out
    if a.ndim > 2 and a.flags.c_contiguous:
        return (a.reshape(-1, n) @ np.ones(n, dtype=a.dtype)).reshape(a.shape[:-1])
    out = a @ np.ones(n, dtype=a.dtype)
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
    scale_temperature: float | None = None,
) -> NDArray[np.float32]:
    """Turn draws into mixture samples (B, N, D): inverse-CDF component choice, then scale and shift.

    The weights are tempered by `temperature`, the scales by `scale_temperature` (times its square
    root; None: the same temperature). As a temperature goes to 0 the draw goes to the heaviest
    component's mean, with no NaN at any finite temperature > 0.
    """
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
    spread = temperature if scale_temperature is None else scale_temperature
    sigma = np.take(scales.reshape(batch * k, -1), index, axis=0) * np.sqrt(spread)
    out: NDArray[np.float32] = (mu + sigma * normals).astype(np.float32)
    return out


def sample_mixture(
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    num_samples: int,
    rng: np.random.Generator,
    temperature: float = 1.0,
    scale_temperature: float | None = None,
) -> NDArray[np.float32]:
    """Draw num_samples points from each row's mixture -> (B, N, D) float32.

    Temperature tau reshapes the mixture: weights proportional to pi^(1/tau) and scales
    times sqrt(tau) (or sqrt(scale_temperature) when given). tau < 1 sharpens towards the dominant
    components, tau > 1 flattens.
    The draws depend only on the inputs and the generator's state.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    tempered_weights(weights[:0], temperature)  # validates the temperature before drawing
    uniforms, normals = sample_draws(rng, means.shape[0], num_samples, means.shape[-1])
    return samples_from_draws(weights, means, scales, uniforms, normals, temperature, scale_temperature)


class DrawStream:
    """num_samples draws from each row's mixture, handed out a block of rows at a time, the same
    whatever the blocks: the uniforms (component choices) and the normals come from two streams
    spawned from one seed, each consumed in row order. For work done in chunks (see mdn_core.ik)."""

    def __init__(self, seed: int | None, num_samples: int) -> None:
        uniforms, normals = np.random.SeedSequence(seed).spawn(2)
        self._uniforms, self._normals = np.random.default_rng(uniforms), np.random.default_rng(normals)
        self.num_samples = num_samples

    def next(self, weights: FloatArray, means: FloatArray, scales: FloatArray) -> NDArray[np.float32]:
        """Draws (B, N, D) for the next B rows."""
        batch, _, dim = means.shape
        u = self._uniforms.random((batch, self.num_samples))
        z = self._normals.standard_normal((batch, self.num_samples, dim))
        return samples_from_draws(weights, means, scales, u, z)
