"""Which components of a Gaussian mixture have a basin of their own, for mdn_core.modes: a bound
that lets the mode search skip what it need not search.

Component k *dominates* when, within the ellipsoid of Mahalanobis radius rho around its mean (rho:
k puts TAIL of its probability outside), the other components (all of them, searched or not)
change the gradient of log p too little to lead a climb out, or to make a second peak. Then every gradient-ascent path
that starts in the ellipsoid ends at one mode near k's mean (the proof below): that mode's basin
holds k's whole weight but for at most TAIL, and no other mode lies in the ellipsoid.

The bound. In k's whitened coordinates z (x = mu_k + sigma_k z, per dimension d), for another
component j,

    log f_j = log (w_j N_j(x) / (w_k N_k(x))) = c + sum_d (a_d z_d^2 + b_d z_d),
    a_d = (1 - sigma_kd^2 / sigma_jd^2) / 2,  b_d = -sigma_kd delta_d / sigma_jd^2,
    c = log (w_j / w_k) + sum_d log (sigma_kd / sigma_jd) - sum_d delta_d^2 / (2 sigma_jd^2),

with delta = mu_k - mu_j. On ||z|| <= rho, sum_d a_d z_d^2 <= max(0, max_d a_d) rho^2 and
b . z <= ||b|| rho, so f_j <= exp(c + max(0, max_d a_d) rho^2 + ||b|| rho) =: F_j; the gradient of
log f_j, 2 a z + b, is at most G_j = 2 max_d |a_d| rho + ||b|| long, and its Hessian, 2 diag(a),
at most 2 max_d |a_d| =: A_j.

The flow. Gradient ascent on log p = log (w_k N_k) + log (1 + sum_j f_j) moves z as
dz_d/dt = (-z_d + h_d) / sigma_kd^2, with h = grad log (1 + sum_j f_j), so ||h|| <= eta = sum_j F_j G_j.
With u^2 = sum_d z_d^2 / sigma_kd^2 >= ||z||^2 / sigma_max^2, d||z||^2/dt <= -2 u (u - eta / sigma_min):
the sphere ||z|| = rho is crossed inwards only when rho > eta kappa (kappa = sigma_max / sigma_min),
and a path that starts inside stays inside. There, a stationary point is a fixed point z = h(z), and
h's Jacobian (the Hessian of log (1 + sum f_j)) is at most L = sum_j F_j (G_j^2 + A_j) + eta^2: when
L < 1, h is a contraction of the ball (||h|| <= eta < rho) and has one fixed point, the mode (within
eta of the mean), to which every path inside converges. DOMINANCE asks eta kappa <= rho / 2 and
L <= 1/2.

Computed in float32, the network's own precision: its rounding is far inside those margins.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating]

TAIL = 1e-4  # a dominating component's probability outside its ellipsoid
INWARD = 0.5  # eta kappa at most this fraction of rho: the flow on the ellipsoid's surface points in
CONTRACTION = 0.5  # L at most this: one peak inside


def chi_square_tail(x: float, dim: int) -> float:
    """P(chi^2 with `dim` degrees of freedom > x): the probability a standard normal in `dim`
    dimensions puts outside the ball of radius sqrt(x). Closed forms (even and odd `dim`)."""
    half = x / 2.0
    if dim % 2 == 0:
        return math.exp(-half) * math.fsum(half**i / math.factorial(i) for i in range(dim // 2))
    series = math.fsum(half ** (i + 0.5) / math.gamma(i + 1.5) for i in range((dim - 1) // 2))
    return math.erfc(math.sqrt(half)) + math.exp(-half) * series


@functools.lru_cache(maxsize=64)
def ellipsoid_radius(dim: int, tail: float = TAIL) -> float:
    """The Mahalanobis radius outside which a normal in `dim` dimensions puts `tail` of its probability."""
    lo, hi = 0.0, 4.0 * dim + 200.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if chi_square_tail(mid, dim) > tail else (lo, mid)
    return math.sqrt(hi)


def dominant(
    weights: FloatArray, means: FloatArray, scales: FloatArray, searched: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    """(B, K): the searched components that dominate their ellipsoid (module docstring). Vectorised
    over component pairs and rows, with the rows last (every operation runs along them): (D, K, K, B)
    arrays."""
    dim = means.shape[2]
    mu = np.ascontiguousarray(means.transpose(2, 1, 0), dtype=np.float32)  # (D, K, B)
    sigma = np.ascontiguousarray(scales.transpose(2, 1, 0), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # zero weights: -inf, then 0
        log_w = np.log(np.ascontiguousarray(weights.T, dtype=np.float32))
        return _dominant(log_w, mu, sigma, np.ascontiguousarray(searched.T), ellipsoid_radius(dim)).T


def _dominant(
    log_w: FloatArray, mu: FloatArray, sigma: FloatArray, searched: NDArray[np.bool_], rho: float
) -> NDArray[np.bool_]:
    """dominant() on log weights (K, B), means and scales (D, K, B); (K, B)."""
    inverse = 1.0 / sigma
    r2 = np.square(sigma[:, :, None, :] * inverse[:, None, :, :])  # (D, k, j, B): (sigma_k / sigma_j)^2
    t2 = np.square((mu[:, :, None, :] - mu[:, None, :, :]) * inverse[:, None, :, :])  # (delta / sigma_j)^2
    log_sigma = np.sum(np.log(sigma), axis=0)  # (K, B)
    c = (log_w - log_sigma)[None, :, :] - (log_w - log_sigma)[:, None, :] - 0.5 * np.sum(t2, axis=0)
    a_max = np.maximum(0.5 - 0.5 * np.min(r2, axis=0), 0.0)  # max(0, max_d a_d); a_d = (1 - r2_d) / 2
    norm_b = np.sqrt(np.sum(r2 * t2, axis=0))  # ||b||, b_d = -(sigma_k / sigma_j) delta_d / sigma_j
    other = ~np.eye(mu.shape[1], dtype=bool)[:, :, None]  # (k, j, 1): every other component, searched or not
    f = np.where(other, np.exp(np.minimum(c + a_max * rho * rho + norm_b * rho, 80.0)), 0.0)
    curve = np.maximum(1.0 - np.min(r2, axis=0), np.max(r2, axis=0) - 1.0)  # A_j = 2 max_d |a_d|
    grad = curve * rho + norm_b  # G_j
    eta = np.sum(f * grad, axis=1)
    lipschitz = np.sum(f * (grad * grad + curve), axis=1) + eta * eta
    kappa = np.max(sigma, axis=0) / np.min(sigma, axis=0)
    out: NDArray[np.bool_] = searched & (eta * kappa <= INWARD * rho) & (lipschitz <= CONTRACTION)
    return out
