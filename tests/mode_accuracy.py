"""How close the served modes' masses are to the basins' true probabilities, on sets of random 2-D
mixtures drawn as tests/test_modes.py draws them (the README's and mdn_core.modes' figures).

    .venv/bin/python -m tests.mode_accuracy --seeds 2 3 4 5 6 7 8
    .venv/bin/python -m tests.mode_accuracy --seeds 2 3 4 --monte-carlo   # minutes

Against grid-integrated basins (steepest ascent on a grid, as the test), or with --monte-carlo
against DRAWS draws of each mixture, each followed by continuous gradient ascent to the maximum it
reaches (no grid directions; its own noise is a binomial one, about 0.01 at a mass of 0.5).
Flat-topped mixtures are left out of the Monte Carlo reference (ascents end anywhere on a flat top).
"""

from __future__ import annotations

import argparse

import numpy as np
from mdn_core.modes import mixture_modes

from tests.test_modes import _ascend, compare, flat_topped, random_mixtures

DRAWS = 3000
GRID_STEP = 2e-2


def _mixtures(seed: int, flat: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = random_mixtures(rng, 40, 2, 6, (0.15, 1.5), 2.0)
    tops = flat_topped(rng, 10, 2)
    return out + tops if flat else out


def _monte_carlo(w: np.ndarray, m: np.ndarray, s: np.ndarray, seed: int) -> tuple[int, list[float]]:
    """(modes holding >= 1% missed, |mass errors|) against continuous ascent from DRAWS draws."""
    rng = np.random.default_rng(seed)
    k = rng.choice(len(w), DRAWS, p=w)
    ends = _ascend(w, m, s, m[k] + s[k] * rng.standard_normal((DRAWS, 2)), GRID_STEP)
    _, first, label = np.unique(np.round(ends / GRID_STEP).astype(np.int64), axis=0, return_index=True,
                                return_inverse=True)  # fmt: skip
    peaks, share = ends[first], np.bincount(label.ravel()) / DRAWS
    found = mixture_modes(w[None], m[None], s[None], min_mass=0.0)
    ours, mass = found.modes[0, : found.num_modes[0]], found.mass[0, : found.num_modes[0]]
    missed, errors = 0, []
    for point, p in zip(peaks[share > 0.002], share[share > 0.002], strict=True):
        gap = np.max(np.abs(ours - point), axis=-1)
        if gap.min() <= 2.5 * GRID_STEP:
            errors.append(abs(float(mass[np.argmin(gap)]) - p))
        elif p >= 0.01:
            missed += 1
    return missed, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2])
    parser.add_argument("--monte-carlo", action="store_true")
    args = parser.parse_args()
    everything: list[float] = []
    for seed in args.seeds:
        missed = spurious = 0
        errors: list[float] = []
        for i, (w, m, s) in enumerate(_mixtures(seed, flat=not args.monte_carlo)):
            if args.monte_carlo:
                a, e = _monte_carlo(w, m, s, 1000 + i)
                b = 0
            else:
                a, b, e = compare(w, m, s, GRID_STEP)
            missed, spurious, errors = missed + a, spurious + b, errors + e
        everything += errors
        q = np.quantile(errors, [0.5, 0.95])
        print(f"seed {seed}: missed {missed}, invented {spurious}, |mass error| median {q[0]:.4f} "
              f"p95 {q[1]:.4f} worst {max(errors):.4f} ({len(errors)} modes)")  # fmt: skip
    q = np.quantile(everything, [0.5, 0.95])
    print(f"all: median {q[0]:.4f} p95 {q[1]:.4f} worst {max(everything):.4f} ({len(everything)} modes)")


if __name__ == "__main__":
    main()
