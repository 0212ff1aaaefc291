"""How close the served modes' masses are to the basins' true probabilities, on sets of random 2-D
mixtures drawn as tests/test_modes.py draws them (the README's and mdn_core.modes' figures).

    .venv/bin/python -m tests.mode_accuracy --seeds 2 3 4 5 6 7 8
    .venv/bin/python -m tests.mode_accuracy --seeds 2 3 4 5 6 7 8 --flow   # minutes

Against grid-integrated basins (steepest ascent on a grid, as the test; its chains take one of the
grid's eight directions, which moves a mass by up to about 0.09), or with --flow against the
gradient flow from a quadrature of every component (FLOW_CELLS ** 2 cells of equal probability
each; tests.mode_references.flow_basins), whose own error is about a thousandth. Flat-topped mixtures
are left out of the flow reference (its ascents end anywhere on a flat top).
"""

from __future__ import annotations

import argparse

import numpy as np
from mdn_core.modes import mixture_modes

from tests.mode_references import compare, flat_topped, flow_basins, random_mixtures

FLOW_CELLS = 64
GRID_STEP = 2e-2


def _mixtures(seed: int, flat: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = random_mixtures(rng, 40, 2, 6, (0.15, 1.5), 2.0)
    tops = flat_topped(rng, 10, 2)
    return out + tops if flat else out


def _against_flow(w: np.ndarray, m: np.ndarray, s: np.ndarray) -> tuple[int, list[float]]:
    """(maxima holding >= 1% missed, |mass errors| of those holding >= 0.2%) against flow_basins."""
    peaks, share = flow_basins(w, m, s, FLOW_CELLS)
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
    parser.add_argument("--flow", action="store_true")
    args = parser.parse_args()
    everything: list[float] = []
    for seed in args.seeds:
        missed = spurious = 0
        errors: list[float] = []
        for w, m, s in _mixtures(seed, flat=not args.flow):
            if args.flow:
                a, e = _against_flow(w, m, s)
                b = 0
            else:
                a, b, e = compare(w, m, s, GRID_STEP)
            missed, spurious, errors = missed + a, spurious + b, errors + e
        everything += errors
        q = np.quantile(errors, [0.5, 0.95])
        print(f"seed {seed}: missed {missed}, invented {spurious}, |mass error| median {q[0]:.4f} "
              f"p95 {q[1]:.4f} worst {max(errors):.4f} ({len(errors)} modes)", flush=True)  # fmt: skip
    q = np.quantile(everything, [0.5, 0.95])
    print(f"all: median {q[0]:.4f} p95 {q[1]:.4f} worst {max(everything):.4f} ({len(everything)} modes)")


if __name__ == "__main__":
    main()
