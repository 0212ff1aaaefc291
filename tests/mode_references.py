"""Brute-force references for the mode search's tests: random mixtures, and the modes and basin
probabilities of a mixture found without it.

grid_basins: the density on a fine grid, each grid point joined to its highest neighbour (steepest
ascent), chains followed to the local maxima; a maximum's basin probability is the density summed
over the points that end there. Its chains take one of a grid's directions, which moves a boundary
and so a mass by up to about 0.09; where that is too coarse, flow_basins follows the gradient flow
itself from a fine quadrature of every component.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from mdn_core.mixture import log_density
from mdn_core.modes import mixture_modes

Mixture = tuple[np.ndarray, np.ndarray, np.ndarray]


def random_mixtures(rng: np.random.Generator, count: int, dim: int, kmax: int, scales: tuple[float, float],
                    spread: float) -> list[Mixture]:  # fmt: skip
    out = []
    for _ in range(count):
        k = int(rng.integers(1, kmax + 1))
        w = rng.dirichlet(np.ones(k))
        m = rng.uniform(-spread, spread, (k, dim))
        s = np.exp(rng.uniform(math.log(scales[0]), math.log(scales[1]), (k, dim)))
        out.append((w, m, s))
    return out


def flat_topped(rng: np.random.Generator, count: int, dim: int) -> list[Mixture]:
    """Two equal components c scales either side of 0: one flat-topped peak (c <= 1) or two close ones."""
    out = []
    for _ in range(count):
        c = float(rng.choice([0.98, 0.995, 0.999, 1.0, 1.0005, 1.001, 1.01]))
        s = np.full((2, dim), float(rng.uniform(0.3, 2.0)))
        m = np.zeros((2, dim))
        m[:, 0] = [-s[0, 0] * c, s[0, 0] * c]
        out.append((np.array([0.5, 0.5]), m, s))
    return out


def steepest_ascent(w: np.ndarray, m: np.ndarray, s: np.ndarray, step: float) -> tuple[np.ndarray, ...]:
    """On a grid of `step` covering the mixture: the points (N, D), the local maximum each point's
    steepest-ascent chain (to its highest neighbour, and on) ends at (N,), and the density there (N,)."""
    dim = m.shape[1]
    lo, hi = (m - 7 * s).min(axis=0), (m + 7 * s).max(axis=0)
    axes = [np.arange(lo[d], hi[d] + step, step) for d in range(dim)]
    mesh = np.meshgrid(*axes, indexing="ij")
    points = np.stack([g.ravel() for g in mesh], -1)
    logp = log_density(w[None], m[None], s[None], points[None])[0].reshape(mesh[0].shape)
    index = np.arange(logp.size).reshape(logp.shape)
    best, best_value = index.ravel().copy(), logp.ravel().copy()
    padded = np.pad(logp, 1, constant_values=-np.inf)
    padded_index = np.pad(index, 1, constant_values=-1)
    for offset in np.ndindex(*([3] * dim)):
        if all(o == 1 for o in offset):
            continue
        window = tuple(slice(o, o + n) for o, n in zip(offset, logp.shape, strict=True))
        value, where = padded[window].ravel(), padded_index[window].ravel()
        higher = value > best_value
        best_value, best = np.where(higher, value, best_value), np.where(higher, where, best)
    root = best
    while not np.array_equal(root[root], root):
        root = root[root]
    return points, root, np.exp(logp.ravel())


def grid_basins(w: np.ndarray, m: np.ndarray, s: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(local maxima (M, D), their basin probabilities (M,)) by steepest ascent on a grid.

    A grid point can be higher than its neighbours without being near a maximum: on a narrow ridge
    rising across the grid's directions, towards a saddle and on. Such a point (one from which a
    continuous ascent goes further than two grid steps) is no mode; its basin belongs to the
    maximum that ascent reaches."""
    points, root, density = steepest_ascent(w, m, s, step)
    peaks = np.flatnonzero(root == np.arange(len(root)))
    mass = np.bincount(root, weights=density, minlength=len(root))[peaks] / density.sum()
    ends = _ascend(w, m, s, points[peaks], step)
    real = np.max(np.abs(ends - points[peaks]), axis=1) <= 2 * step
    if real.any() and not real.all():
        ends = ends[~real]
        to = np.flatnonzero(real)[np.argmin(np.max(np.abs(ends[:, None] - points[peaks[real]][None]), axis=-1), axis=1)]
        np.add.at(mass, to, mass[~real])
        peaks, mass = peaks[real], mass[real]
    return points[peaks], mass


def _ascend(w: np.ndarray, m: np.ndarray, s: np.ndarray, x: np.ndarray, step: float) -> np.ndarray:
    """Where gradient ascent on log p from points x (N, D) ends: steps along the gradient of at most
    `step` (so that the path stays near the flow's), halved where they do not climb."""

    def log_p_and_gradient(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (x[:, None, :] - m[None]) / s[None]  # (N, K, D)
        log_joint = np.log(w)[None] - np.sum(np.log(s), axis=1)[None] - 0.5 * np.sum(z * z, axis=-1)
        top = log_joint.max(axis=1, keepdims=True)
        r = np.exp(log_joint - top)
        total = r.sum(axis=1, keepdims=True)
        return np.log(total[:, 0]) + top[:, 0], np.sum((r / total)[:, :, None] * (-z / s[None]), axis=1)

    x, h = x.astype(np.float64).copy(), np.full(len(x), step)
    log_p, grad = log_p_and_gradient(x)
    active = np.arange(len(x))
    for _ in range(20_000):
        trial = x[active] + h[active, None] * grad[active] / np.maximum(
            np.linalg.norm(grad[active], axis=1, keepdims=True), 1e-300
        )
        trial_log_p, trial_grad = log_p_and_gradient(trial)
        up = trial_log_p > log_p[active]
        moved = active[up]
        x[moved], log_p[moved], grad[moved] = trial[up], trial_log_p[up], trial_grad[up]
        h[active] = np.where(up, np.minimum(1.5 * h[active], step), 0.5 * h[active])
        active = active[h[active] >= 1e-9 * step]
        if not active.size:
            break
    return x


def flow_basins(w: np.ndarray, m: np.ndarray, s: np.ndarray, per_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(local maxima (M, D), their basin probabilities (M,)) by the gradient flow: each component
    is cut into per_axis ** D cells of equal probability (a product of the normal's quantiles), and
    from each cell's midpoint gradient ascent with steps of at most a quarter of the smallest scale
    finds the maximum its weight goes to. Error: the quadrature's (about 1 / per_axis of a
    component's weight at a boundary) and the steps'."""
    dim = m.shape[1]
    z1 = np.array([NormalDist().inv_cdf((i + 0.5) / per_axis) for i in range(per_axis)])
    z = np.stack([g.ravel() for g in np.meshgrid(*([z1] * dim), indexing="ij")], -1)  # (P, D)
    ends = _ascend(w, m, s, (m[:, None, :] + s[:, None, :] * z[None]).reshape(-1, dim), 0.25 * float(s.min()))
    share = np.repeat(w / len(z), len(z))
    peaks: list[np.ndarray] = []
    label = np.empty(len(ends), dtype=np.intp)
    for i, end in enumerate(ends):  # maxima are few: each end joins the first within 1e-3
        gaps = [np.max(np.abs(end - p)) for p in peaks]
        if not gaps or min(gaps) > 1e-3:
            peaks.append(end)
            gaps.append(0.0)
        label[i] = int(np.argmin(gaps))
    return np.array(peaks), np.bincount(label, weights=share, minlength=len(peaks))


def compare(w: np.ndarray, m: np.ndarray, s: np.ndarray, step: float) -> tuple[int, int, list[float]]:
    """(true modes holding >= 1% missed, served modes matching no true mode, |mass errors| of matches)."""
    found = mixture_modes(w[None], m[None], s[None], min_mass=0.0)
    ours, mass = found.modes[0, : found.num_modes[0]], found.mass[0, : found.num_modes[0]]
    truth, true_mass = grid_basins(w, m, s, step)
    matched = np.zeros(len(ours), dtype=bool)
    missed, errors = 0, []
    for point, share in zip(truth, true_mass, strict=True):
        gap = np.max(np.abs(ours - point), axis=-1) if len(ours) else np.zeros(0)
        if len(gap) and gap.min() <= 2.5 * step:
            matched[int(np.argmin(gap))] = True
            errors.append(abs(float(mass[int(np.argmin(gap))]) - share))
        elif share >= 0.01:
            missed += 1
    # A served mode the grid did not resolve (a shallow peak beside a higher one) is no invention if
    # it is a local maximum on a grid twenty times finer around it.
    invented = [p for p in ours[~matched] if not _local_maximum(w, m, s, p.astype(np.float64), step / 20)]
    return missed, len(invented), errors


def _local_maximum(w: np.ndarray, m: np.ndarray, s: np.ndarray, point: np.ndarray, step: float) -> bool:
    dim = len(point)
    offsets = np.array([o for o in np.ndindex(*([3] * dim)) if any(v != 1 for v in o)], dtype=float) - 1.0
    around = point + np.concatenate([offsets * step * k for k in (1, 3, 10)])
    values = log_density(w[None], m[None], s[None], np.vstack([point, around])[None])[0]
    return bool(np.all(values[1:] < values[0]))
