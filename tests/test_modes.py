"""Modes and basin masses against brute force (tests.mode_references): hundreds of random 1-D and
2-D mixtures, flat tops, basin boundaries across components, and the search's own mechanisms
(chunks, the short way, capture by known modes, float64's resolution).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from mdn_core.climb import MixtureSearch
from mdn_core.modes import mixture_modes

from tests.mode_references import compare, flat_topped, flow_basins, grid_basins, random_mixtures


@pytest.mark.parametrize(
    ("dim", "mixtures", "step", "p95"),
    [
        # One dimension: masses are exact (CDF differences between the minima); the grid limits the check.
        (1, lambda rng: random_mixtures(rng, 300, 1, 10, (0.03, 3.0), 3.0) + flat_topped(rng, 40, 1), 2e-3, 0.002),
        # Two: whole components, or the quasi-random draws of those straddling a boundary (p95 0.015
        # on this set, where the grid's own error reaches 0.09; against the gradient flow itself
        # 0.0096-0.0156 on seven sets, see mdn_core.modes).
        (2, lambda rng: random_mixtures(rng, 40, 2, 6, (0.15, 1.5), 2.0) + flat_topped(rng, 10, 2), 2e-2, 0.02),
    ],
)
def test_every_mode_is_found_none_is_invented_and_masses_are_basin_probabilities(dim, mixtures, step, p95):
    missed = spurious = 0
    errors: list[float] = []
    for w, m, s in mixtures(np.random.default_rng(dim)):
        a, b, e = compare(w, m, s, step)
        missed, spurious, errors = missed + a, spurious + b, errors + e
    assert (missed, spurious) == (0, 0)
    assert np.quantile(errors, 0.95) <= p95


@pytest.mark.parametrize(("width", "expected"), [(1.001, [0.0]), (1.0005, [0.0]), (1.0, [0.0])])
def test_a_flat_topped_peak_is_one_mode(width, expected):
    w = np.array([[0.5, 0.5]])
    m = np.array([[[-1.0], [1.0]]])
    s = np.full((1, 2, 1), width)
    found = mixture_modes(w, m, s)
    assert found.num_modes.tolist() == [1]
    np.testing.assert_allclose(found.modes[0, :, 0], expected, atol=1e-3)
    assert found.mass[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_two_close_peaks_converge_to_where_they_are():
    # Two components at +-1 with scale 0.999: modes at +-x with x = tanh(x / 0.999^2) (0.07738...).
    w = np.array([[0.5, 0.5]])
    m = np.array([[[-1.0], [1.0]]])
    s = np.full((1, 2, 1), 0.999)
    lo, hi = 0.01, 1.0  # bisection on tanh(x / s^2) - x, positive below the root
    for _ in range(100):
        x = 0.5 * (lo + hi)
        lo, hi = (x, hi) if math.tanh(x / 0.999**2) > x else (lo, x)
    found = mixture_modes(w, m, s)
    assert found.num_modes.tolist() == [2]
    np.testing.assert_allclose(np.sort(found.modes[0, :, 0]), [-x, x], atol=1e-6)
    np.testing.assert_allclose(found.mass[0], [0.5, 0.5], atol=1e-6)


def test_a_mode_whose_basin_holds_no_component_mean_is_found():
    # Three equal narrow peaks under one broad component: the middle one lies between the two means
    # of its neighbours and holds no mean itself; the draws find it.
    w = np.array([[0.3, 0.3, 0.4]])
    m = np.array([[[-1.0], [1.0], [0.05]]])
    s = np.array([[[0.4], [0.4], [3.0]]])
    truth, share = grid_basins(w[0], m[0], s[0], 1e-3)
    found = mixture_modes(w, m, s, min_mass=0.0)
    assert found.num_modes[0] == len(truth)
    order = np.argsort(found.modes[0, :, 0])
    np.testing.assert_allclose(found.modes[0, order, 0], truth[:, 0], atol=2e-3)
    np.testing.assert_allclose(found.mass[0, order], share, atol=2e-3)


def _flow_error(w: np.ndarray, m: np.ndarray, s: np.ndarray) -> float:
    """The largest |served mass - the flow's basin probability| over the maxima holding 0.1% or more;
    inf if one of them is not served."""
    found = mixture_modes(w[None], m[None], s[None], min_mass=0.0)
    ours, mass = found.modes[0, : found.num_modes[0]], found.mass[0, : found.num_modes[0]]
    peaks, share = flow_basins(w, m, s, 32)
    worst = 0.0
    for peak, p in zip(peaks[share >= 1e-3], share[share >= 1e-3], strict=True):
        gap = np.max(np.abs(ours - peak), axis=-1)
        worst = max(worst, abs(float(mass[np.argmin(gap)]) - p) if gap.min() < 0.02 else math.inf)
    return worst


def test_a_mode_where_a_long_tail_crosses_a_narrow_band_is_found():
    # Two components: one long in y and narrow in x, one long in x and narrow in y. Where the first's
    # tail crosses the second's band there is a third peak (9% of the probability), which climbs from
    # the means and from probes on the components' axes stepped over, and long steps of the draws
    # that split the second component jumped over (3.4%).
    w = np.array([0.7258, 0.2742])
    m = np.array([[-0.2624, 1.6898], [-1.2498, -1.4068]])
    s = np.array([[0.1543, 1.0672], [1.4613, 0.2586]])
    assert len(grid_basins(w, m, s, 1e-2)[0]) == 3
    assert _flow_error(w, m, s) <= 0.01


def test_a_basin_boundary_across_a_component_splits_its_weight():
    # The boundary between the two modes crosses the heavy component diagonally: 18% of it climbs to
    # the other mode, which probes on its axes do not see (they gave it all to its own mode: 0.79
    # against 0.66).
    w = np.array([0.6591, 0.1977, 0.1432])
    m = np.array([[-1.4147, 0.7937], [-0.8321, 1.4846], [-0.8985, 0.2472]])
    s = np.array([[0.3765, 0.6152], [0.2359, 0.2272], [0.8374, 0.8478]])
    assert _flow_error(w, m, s) <= 0.025


def test_a_component_split_between_basins_is_split_as_the_gradient_flow_splits_it():
    # The heaviest component, long in x, has no peak of its own: the flow takes 54% of it to the peak
    # above and the rest to the one to its right. Straight fixed-point jumps, which settle both axes
    # at once, gave the peak above 23% of it (0.31 against 0.42).
    w = np.array([0.3604, 0.2145, 0.0004, 0.1119, 0.0848, 0.228])
    m = np.array([[-1.7071, -0.9403], [1.2506, -0.1218], [-0.1874, 1.8742], [-0.7204, -1.8331],
                  [-0.4312, -1.3865], [-1.6724, 0.2714]])  # fmt: skip
    s = np.array([[1.3479, 0.5695], [0.6656, 0.316], [0.5587, 0.8479], [0.5826, 0.9525], [0.5328, 0.2367],
                  [0.5739, 0.4645]])  # fmt: skip
    assert _flow_error(w, m, s) <= 0.02


@pytest.mark.parametrize(
    ("w", "m", "s"),
    [
        # A broad component around a narrow peak 2.1 of its scales away: 6% of it lies in that
        # peak's basin, and all eight of its probes missed it (the peak got 0.21 against 0.25).
        ([0.0372, 0.7555, 0.2073], [[-1.5504, 0.4151], [-0.0832, 0.3787], [0.6371, -0.7734]],
         [[1.3723, 0.4385], [0.6371, 0.6476], [0.2291, 0.173]]),
        # Two broad components around a small peak (0.03 against 0.09).
        ([0.0908, 0.4764, 0.0121, 0.0279, 0.3588, 0.0339],
         [[1.2939, -1.35], [-0.967, 0.7114], [0.3865, -0.6751], [-0.5317, -0.5904], [1.128, -1.7253],
          [-1.1684, 0.6659]],
         [[0.2286, 0.5996], [0.3987, 0.9691], [0.9097, 0.2931], [0.2386, 0.1727], [0.4099, 0.4129],
          [0.8093, 0.823]]),
    ],
)  # fmt: skip
def test_a_sliver_of_a_broad_component_in_a_narrow_peaks_basin_counts(w, m, s):
    assert _flow_error(np.array(w), np.array(m), np.array(s)) <= 0.02


def test_min_mass_applies_to_the_basin_not_the_component_weight():
    # A light narrow component on the flank of a broad one: its weight is under min_mass, but the
    # basin of its peak holds more than min_mass, so the mode stays.
    w = np.array([[0.9992, 0.0008]])
    m = np.array([[[0.0], [2.5]]])
    s = np.array([[[1.0], [0.05]]])
    truth, share = grid_basins(w[0], m[0], s[0], 1e-3)
    assert len(truth) == 2 and share.min() > 1e-3
    found = mixture_modes(w, m, s)
    assert found.num_modes.tolist() == [2]
    np.testing.assert_allclose(np.sort(found.mass[0]), np.sort(share), atol=2e-3)


def test_the_search_runs_in_chunks_that_give_the_same_answer_and_can_be_stopped(monkeypatch):
    import mdn_core.modes as modes_module
    from mdn_core.chunks import Interrupted

    rng = np.random.default_rng(5)
    rows = random_mixtures(rng, 40, 2, 4, (0.2, 1.0), 2.0)
    k = max(len(w) for w, _, _ in rows)
    w = np.zeros((40, k))
    m = np.zeros((40, k, 2))
    s = np.ones((40, k, 2))
    for i, (wi, mi, si) in enumerate(rows):  # padded with zero-weight components
        w[i, : len(wi)], m[i, : len(wi)], s[i, : len(wi)] = wi, mi, si
    whole = mixture_modes(w, m, s)
    monkeypatch.setattr(modes_module, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(modes_module, "CHUNK_WORK", 7 * k * k * 2)  # chunks of 7 rows
    chunked = mixture_modes(w, m, s)
    assert chunked.num_modes.tolist() == whole.num_modes.tolist()
    for name in ("modes", "log_density", "mass"):  # the same to float32 rounding (vector loops differ by length)
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-6, atol=1e-7)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) == 2

    with pytest.raises(Interrupted, match="after 14 of 40 rows"):
        mixture_modes(w, m, s, should_stop=stop)


def test_rows_where_only_dominant_components_count_take_the_short_way_to_the_same_answer(monkeypatch):
    import mdn_core.modes as modes_module

    rng = np.random.default_rng(11)
    batch, k, dim = 60, 4, 2
    w = rng.dirichlet(np.ones(k), batch)
    w[::5, -1] = 0.0
    w *= (1.0 - np.where(np.arange(batch) % 5 == 0, 2e-4, 0.0))[:, None] / w.sum(axis=1, keepdims=True)
    w[::5, -1] = 2e-4  # a component under min_mass: no mode of its own
    s = np.exp(rng.uniform(np.log(0.05), np.log(0.5), (batch, k, dim)))
    m = rng.uniform(-1.0, 1.0, (batch, k, dim))
    m[::2, :, 0] = 20.0 * np.arange(k)  # even rows: components far apart; odd rows: crowded
    # and in every tenth row the light component is broad and lies over a heavy one
    m[::10, -1], s[::10, -1] = m[::10, 0] + 0.1, 30.0 * s[::10, 0]
    monkeypatch.setattr(modes_module, "_search", counted := _Counted(modes_module._search))
    short = mixture_modes(w, m, s)
    assert counted.rows == batch // 2  # only the crowded rows were searched the long way
    monkeypatch.setattr(modes_module, "dominant", lambda w, m, s, searched: np.zeros_like(searched))
    full = mixture_modes(w, m, s)  # no component dominates: the whole search for every row
    assert short.num_modes.tolist() == full.num_modes.tolist()
    assert short.num_modes[::2].tolist() == np.sum(w[::2] >= 1e-3, axis=1).tolist()
    np.testing.assert_allclose(short.modes, full.modes, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(short.log_density, full.log_density, rtol=1e-6)
    # the same masses, but for the light component's weight (which the short way leaves out)
    np.testing.assert_allclose(short.mass, full.mass, rtol=1e-6, atol=2.5e-4)
    np.testing.assert_allclose(short.mass[1::2], full.mass[1::2], rtol=1e-6, atol=1e-7)


class _Counted:
    """A function wrapper counting the rows of the first argument it was called with."""

    def __init__(self, function):
        self.function, self.rows = function, 0

    def __call__(self, *args, **kwargs):
        self.rows += len(args[0])
        return self.function(*args, **kwargs)


def test_a_climb_stops_at_the_known_mode_nearest_in_radii_and_only_at_its_own_rows():
    # Two rows of one mixture (peaks at -3 and +3). Row 0 knows both peaks, row 1 only the one at
    # +3 (its table padded with -1); known mode 2 has a radius too small to reach from 2.5.
    w, m, s = np.array([[0.5, 0.5]] * 2), np.array([[[-3.0], [3.0]]] * 2), np.ones((2, 2, 1))
    mix = MixtureSearch.of(w, m, s, np.ones((2, 1)))
    table = np.array([[0, 1], [2, -1]])
    points, radius = np.array([[-3.0], [3.0], [3.0]]), np.array([0.5, 0.5, 1e-9])
    x = np.array([[-3.3], [3.3], [3.3], [-3.3]])
    row = np.array([0, 0, 1, 1])
    ends, caught = mix.climb(x, row, np.full((4, 1), 1e-6), 500, (table, points, radius), cap=0.01)
    assert caught.tolist() == [0, 1, -1, -1]  # row 1: the radius of 2 is not reached; -3 is not known there
    np.testing.assert_allclose(ends[2:, 0], [3.0, -3.0], atol=1e-4)  # they climbed to the peaks instead


def test_peaks_far_narrower_than_their_distance_from_the_origin_are_found():
    # Found by fuzzing: means near 8854.8, scales down to 5e-6. There NEWTON_TOL of the finest scale
    # (5e-13) is under float64's resolution (1.8e-12): polishing must stop at rounding instead of
    # waiting for a step it cannot take (it used to, and returned no mode at all).
    w = np.array([2.218e-4, 1.306e-3, 0.8023, 4.503e-3, 4.981e-4, 0.1579, 4.936e-4, 3.280e-2])
    m = np.array([8854.8193359375, 8854.8193359375, 8854.814453125, 8854.8115234375, 8854.8154296875,
                  8854.814453125, 8854.8193359375, 8854.814453125])  # fmt: skip
    s = np.array([4.937e-6, 1.690e-5, 1.381e-3, 3.497e-3, 2.424e-3, 7.104e-3, 2.993e-5, 3.458e-5])
    w /= w.sum()
    found = mixture_modes(w[None], m[None, :, None], s[None, :, None])
    # The reference: the density on a grid of 1e-7 and the probability between its minima.
    x = np.arange(8854.80, 8854.83, 1e-7)
    p = np.sum(w[:, None] * np.exp(-0.5 * ((x - m[:, None]) / s[:, None]) ** 2) / s[:, None], axis=0)
    peaks = np.flatnonzero((p[1:-1] > p[:-2]) & (p[1:-1] >= p[2:])) + 1
    cuts = np.concatenate([[0], np.flatnonzero((p[1:-1] < p[:-2]) & (p[1:-1] <= p[2:])) + 1, [len(x)]])
    share = np.add.reduceat(p, cuts[:-1]) / p.sum()
    true_mass = share[np.searchsorted(cuts, peaks, side="right") - 1]
    big = true_mass >= 1e-3
    n = found.num_modes[0]
    assert n == np.count_nonzero(big) >= 2
    order = np.argsort(found.modes[0, :n, 0])
    np.testing.assert_allclose(found.modes[0, order, 0], x[peaks[big]], rtol=0, atol=1e-3)  # float32's rounding
    np.testing.assert_allclose(found.mass[0, order], true_mass[big], atol=0.01)


def test_one_dimensional_modes_hold_across_five_orders_of_scale_and_far_from_the_origin():
    # Wider than the random mixtures above: scales spanning up to 1e5 within a mixture, the finest
    # down to 1e-5, a third of the mixtures moved up to 1e5 from the origin. The reference: peaks
    # of the density on the union of fine grids around every component (so the narrowest are
    # resolved), masses exactly, from the mixture's CDF between the density's minima.
    rng = np.random.default_rng(11)
    erf = np.vectorize(math.erf)
    missed, wrong_mass = [], []
    for _ in range(120):
        k = int(rng.integers(1, 11))
        w = rng.dirichlet(np.full(k, float(rng.choice([0.2, 1.0, 5.0])))).astype(np.float32)
        lo = 10 ** rng.uniform(-5, 0)
        s = np.exp(rng.uniform(np.log(lo), np.log(lo * 10 ** rng.uniform(0, 5)), k)).astype(np.float32)
        offset = 10 ** rng.uniform(0, 5) if rng.random() < 0.3 else 0.0
        m = (offset + rng.uniform(-1, 1, k) * float(s.max()) * rng.uniform(0.1, 5)).astype(np.float32)
        found = mixture_modes(w[None], m[None, :, None], s[None, :, None], min_mass=0.0)
        n = found.num_modes[0]
        ours, mass = found.modes[0, :n, 0].astype(np.float64), found.mass[0, :n]
        w64, m64, s64 = w / w.sum(dtype=np.float64), m.astype(np.float64), s.astype(np.float64)
        x = np.unique(np.concatenate([mk + sk * np.linspace(-8, 8, 2001) for mk, sk in zip(m64, s64, strict=True)]))
        p = np.sum(w64[:, None] * np.exp(-0.5 * ((x - m64[:, None]) / s64[:, None]) ** 2) / s64[:, None], axis=0)
        peaks = np.flatnonzero((p[1:-1] > p[:-2]) & (p[1:-1] >= p[2:])) + 1
        cuts = x[np.flatnonzero((p[1:-1] < p[:-2]) & (p[1:-1] <= p[2:])) + 1]
        cdf = np.concatenate(
            [[0.0], [float(np.sum(w64 * 0.5 * (1 + erf((c - m64) / (s64 * math.sqrt(2)))))) for c in cuts], [1.0]]
        )
        for i in peaks:
            j = np.searchsorted(cuts, x[i])
            share = cdf[j + 1] - cdf[j]
            if share < 0.01:
                continue
            nearest = s64[np.argmin(np.abs(m64 - x[i]) / s64)]
            grid = x[min(int(i) + 1, len(x) - 1)] - x[max(int(i) - 1, 0)]
            # within float32's rounding of the coordinate (served modes are float32), or closer
            j = int(np.argmin(np.abs(ours - x[i]))) if n else -1
            if j < 0 or abs(ours[j] - x[i]) > max(0.01 * nearest, 2 * grid, float(np.spacing(np.float32(x[i])))):
                missed.append((x[i], share))
            elif abs(float(mass[j]) - share) > 0.02:
                wrong_mass.append((x[i], share, float(mass[j])))
    assert missed == [] and wrong_mass == []
