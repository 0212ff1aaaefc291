"""The dominance bound (mdn_core.dominance) that lets the mode search skip components: its tail
probabilities, clear cases either way, and its claim checked by brute force on random mixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mdn_core.dominance import TAIL, chi_square_tail, dominant, ellipsoid_radius

from tests.mode_references import grid_basins, steepest_ascent


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 7, 12])
def test_the_ellipsoid_leaves_tail_of_the_probability_outside(dim):
    x = np.random.default_rng(dim).standard_normal((400_000, dim))
    rho = ellipsoid_radius(dim)
    assert chi_square_tail(rho * rho, dim) == pytest.approx(TAIL, rel=1e-9)
    outside = np.mean(np.sum(x * x, axis=1) > rho * rho)
    assert abs(outside - TAIL) < 5 * math.sqrt(TAIL / len(x))  # five standard errors
    # closed forms: two dimensions, exp(-x/2); one, erfc(sqrt(x/2))
    assert chi_square_tail(9.0, 2) == pytest.approx(math.exp(-4.5))
    assert chi_square_tail(9.0, 1) == pytest.approx(math.erfc(math.sqrt(4.5)))


def _one(w, m, s):
    w, m, s = (np.asarray(a, dtype=np.float32)[None] for a in (w, m, s))
    return dominant(w, m, s, w > 0)[0].tolist()


def test_clear_cases():
    unit = np.ones((2, 2))
    assert _one([0.5, 0.5], [[0, 0], [10, 0]], unit) == [True, True]  # far apart
    assert _one([0.5, 0.5], [[0, 0], [2, 0]], unit) == [False, False]  # one broad peak, or two close ones
    # A narrow heavy component inside a broad, light one: the light one hardly moves the narrow
    # one's climbs, unless it weighs enough.
    narrow_in_broad = [[0, 0], [0.05, 0]], [[0.01, 0.01], [1.0, 1.0]]
    assert _one([0.999, 0.001], *narrow_in_broad)[0]
    assert not _one([0.5, 0.5], *narrow_in_broad)[0]
    # ... while a narrow spike on a broad component's slope is a second peak in its ellipsoid.
    assert _one([0.9, 0.1], [[0, 0], [1.5, 0]], [[1.0, 1.0], [0.01, 0.01]])[0] is False
    # A component of no weight changes nothing; a searched component of no weight dominates nothing.
    assert _one([1.0, 0.0], [[0, 0], [0.1, 0]], [[1, 1], [0.01, 0.01]]) == [True, False]


def test_a_dominant_components_ellipsoid_climbs_to_one_peak_at_its_mean_by_brute_force():
    """Random 2-D mixtures, spread out so that some components dominate and some do not: every grid
    point in a dominant component's ellipsoid ascends to one grid maximum near its mean, whose basin
    holds the component's weight (to the grid's resolution)."""
    rng = np.random.default_rng(5)
    rho = ellipsoid_radius(2)
    checked = rejected = 0
    for _ in range(100):
        k = int(rng.integers(2, 6))
        w = rng.dirichlet(np.ones(k))
        w[rng.random(k) < 0.3] *= 1e-3  # some light components
        w /= w.sum()
        m = rng.uniform(-4.0, 4.0, (k, 2))
        s = np.exp(rng.uniform(math.log(0.1), math.log(1.5), (k, 2)))
        alone = dominant(w[None], m[None], s[None], np.ones((1, k), dtype=bool))[0]
        rejected += int(np.sum(~alone))
        if not alone.any():
            continue
        step = 0.2 * float(s[alone].min())
        points, root, _ = steepest_ascent(w, m, s, step)
        peaks, masses = grid_basins(w, m, s, step)
        for c in np.flatnonzero(alone):
            z = np.sqrt(np.sum(((points - m[c]) / s[c]) ** 2, axis=1))
            inside = z <= rho - 0.5  # away from the surface, where the grid's cells straddle it
            ends = np.unique(root[inside])
            assert len(ends) == 1, "one peak for the whole ellipsoid"
            peak = points[ends[0]]
            assert np.all(np.abs(peak - m[c]) <= 2 * step + 0.05 * s[c])  # near its mean
            basin = masses[int(np.argmin(np.max(np.abs(peaks - peak), axis=1)))]
            assert basin >= w[c] * (1.0 - TAIL) - 0.01
            checked += 1
    assert checked >= 40 and rejected >= 40  # both kinds were there
