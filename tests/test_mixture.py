"""The mixture math against brute force: direct evaluation, moments and dense grid search."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mdn_core.climb import MixtureSearch
from mdn_core.mixture import log_density, sample_mixture, tempered_weights
from mdn_core.modes import mixture_modes


def random_mixture(rng: np.random.Generator, batch: int, k: int, d: int, spread: float = 3.0):
    logits = rng.normal(size=(batch, k))
    w = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    m = rng.uniform(-spread, spread, (batch, k, d))
    s = rng.uniform(0.2, 0.8, (batch, k, d))
    return w.astype(np.float32), m.astype(np.float32), s.astype(np.float32)


def direct_density(w, m, s, y) -> float:
    """p(y) of one row, written out term by term."""
    total = 0.0
    for k in range(len(w)):
        p = float(w[k])
        for d in range(len(y)):
            z = (float(y[d]) - float(m[k, d])) / float(s[k, d])
            p *= math.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * float(s[k, d]))
        total += p
    return total


def test_log_density_matches_direct_evaluation():
    rng = np.random.default_rng(0)
    w, m, s = random_mixture(rng, 6, 4, 3)
    y = rng.normal(size=(6, 5, 3))
    got = log_density(w, m, s, y)
    assert got.shape == (6, 5)
    for b in range(6):
        for n in range(5):
            assert got[b, n] == pytest.approx(math.log(direct_density(w[b], m[b], s[b], y[b, n])), rel=1e-9, abs=1e-9)
    single = log_density(w, m, s, y[:, 0])
    np.testing.assert_allclose(single, got[:, 0])


def test_log_density_is_finite_far_in_the_tails():
    w = np.array([[0.5, 0.5]], np.float32)
    m = np.zeros((1, 2, 1), np.float32)
    s = np.full((1, 2, 1), 0.01, np.float32)
    value = log_density(w, m, s, np.array([[50.0]]))
    assert np.isfinite(value).all() and value[0] < -1e6


def test_samples_match_mixture_moments():
    rng = np.random.default_rng(1)
    w, m, s = random_mixture(rng, 3, 3, 2)
    n = 200_000
    samples = sample_mixture(w, m, s, n, np.random.default_rng(2))
    assert samples.shape == (3, n, 2) and samples.dtype == np.float32
    mean = np.einsum("bk,bkd->bd", w, m)
    var = np.einsum("bk,bkd->bd", w, s**2 + m**2) - mean**2
    np.testing.assert_allclose(samples.mean(1), mean, atol=5 * np.sqrt(var.max() / n))
    np.testing.assert_allclose(samples.var(1), var, rtol=0.03)


def test_sampling_is_deterministic_for_a_seed():
    w, m, s = random_mixture(np.random.default_rng(3), 4, 3, 2)
    a = sample_mixture(w, m, s, 50, np.random.default_rng(7))
    b = sample_mixture(w, m, s, 50, np.random.default_rng(7))
    c = sample_mixture(w, m, s, 50, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_temperature_reweights_components_and_scales_spread():
    w = np.array([[0.8, 0.2]], np.float32)
    m = np.array([[[-10.0], [10.0]]], np.float32)
    s = np.ones((1, 2, 1), np.float32)
    for tau in (0.5, 1.0, 2.0):
        samples = sample_mixture(w, m, s, 100_000, np.random.default_rng(0), temperature=tau)[0, :, 0]
        expected = tempered_weights(w, tau)[0]
        assert expected[0] == pytest.approx(0.8 ** (1 / tau) / (0.8 ** (1 / tau) + 0.2 ** (1 / tau)))
        assert np.mean(samples < 0) == pytest.approx(expected[0], abs=0.01)
        assert np.var(samples[samples < 0]) == pytest.approx(tau, rel=0.05)


def test_scale_temperature_tempers_the_scales_alone():
    w = np.array([[0.8, 0.2]], np.float32)
    m = np.array([[[-10.0], [10.0]]], np.float32)
    s = np.ones((1, 2, 1), np.float32)
    samples = sample_mixture(w, m, s, 100_000, np.random.default_rng(0), temperature=0.5, scale_temperature=3.0)[
        0, :, 0
    ]
    assert np.mean(samples < 0) == pytest.approx(tempered_weights(w, 0.5)[0, 0], abs=0.01)
    assert np.var(samples[samples < 0]) == pytest.approx(3.0, rel=0.05)
    same = sample_mixture(w, m, s, 1000, np.random.default_rng(1), temperature=0.5)
    np.testing.assert_array_equal(same, sample_mixture(w, m, s, 1000, np.random.default_rng(1), 0.5, 0.5))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_temperature_is_rejected(bad):
    w, m, s = random_mixture(np.random.default_rng(0), 1, 2, 1)
    with pytest.raises(ValueError, match="temperature"):
        sample_mixture(w, m, s, 3, np.random.default_rng(0), temperature=bad)


def test_bad_counts_are_rejected():
    w, m, s = random_mixture(np.random.default_rng(0), 1, 2, 1)
    with pytest.raises(ValueError, match="num_samples"):
        sample_mixture(w, m, s, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_modes"):
        mixture_modes(w, m, s, max_modes=-1)


def grid_modes_1d(w, m, s, grid):
    dens = np.exp(log_density(w[None], m[None], s[None], grid[None, :, None]))[0]
    peak = (dens[1:-1] > dens[:-2]) & (dens[1:-1] > dens[2:])
    return grid[1:-1][peak]


def test_modes_match_dense_grid_in_one_dimension():
    rng = np.random.default_rng(4)
    w, m, s = random_mixture(rng, 40, 4, 1)
    found = mixture_modes(w, m, s)
    grid = np.linspace(-8, 8, 160_001)
    step = grid[1] - grid[0]
    for b in range(40):
        expected = np.sort(grid_modes_1d(w[b], m[b], s[b], grid))
        got = np.sort(found.modes[b, : found.num_modes[b], 0])
        assert len(got) == len(expected), (b, got, expected)
        np.testing.assert_allclose(got, expected, atol=2 * step)
        assert np.isnan(found.modes[b, found.num_modes[b] :]).all()


def test_modes_match_dense_grid_in_two_dimensions():
    rng = np.random.default_rng(5)
    w, m, s = random_mixture(rng, 12, 3, 2)
    found = mixture_modes(w, m, s)
    axis = np.linspace(-5, 5, 801)
    step = axis[1] - axis[0]
    gx, gy = np.meshgrid(axis, axis, indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel()], -1)
    for b in range(12):
        dens = np.exp(log_density(w[b : b + 1], m[b : b + 1], s[b : b + 1], points[None]))[0].reshape(gx.shape)
        core = dens[1:-1, 1:-1]
        peak = np.ones_like(core, dtype=bool)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                if dx or dy:
                    peak &= core > dens[1 + dx : dens.shape[0] - 1 + dx, 1 + dy : dens.shape[1] - 1 + dy]
        ix, iy = np.nonzero(peak)
        expected = np.stack([axis[1:-1][ix], axis[1:-1][iy]], -1)
        got = found.modes[b, : found.num_modes[b]]
        assert len(got) == len(expected), (b, got, expected)
        for point in expected:
            assert np.min(np.max(np.abs(got - point), axis=-1)) <= 1.5 * step


def test_identical_components_merge_into_one_mode_with_their_mass():
    w = np.array([[0.3, 0.3, 0.4]], np.float32)
    m = np.array([[[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]]], np.float32)
    s = np.full((1, 3, 2), 0.5, np.float32)
    found = mixture_modes(w, m, s)
    assert found.num_modes.tolist() == [2]
    np.testing.assert_allclose(found.mass[0], [0.6, 0.4], atol=1e-6)  # sorted by mass
    np.testing.assert_allclose(found.modes[0, 0], [1.0, 1.0], atol=1e-4)
    np.testing.assert_allclose(found.log_density[0], log_density(w, m, s, found.modes)[0], rtol=1e-5)


def test_overlapping_components_give_one_mode_not_two():
    # Two components 1 sigma apart form a single peak between them; the largest-weight mean is not it.
    w = np.array([[0.6, 0.4]], np.float32)
    m = np.array([[[0.0], [1.0]]], np.float32)
    s = np.ones((1, 2, 1), np.float32)
    found = mixture_modes(w, m, s)
    assert found.num_modes.tolist() == [1]
    assert found.mass[0, 0] == pytest.approx(1.0)
    assert 0.1 < found.modes[0, 0, 0] < 0.6


def test_max_modes_truncates_and_padding_is_per_batch_width():
    w = np.array([[0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]], np.float32)
    m = np.array([[[0.0], [10.0], [20.0]], [[0.0], [0.0], [0.0]]], np.float32)
    s = np.ones((2, 3, 1), np.float32)
    found = mixture_modes(w, m, s)
    assert found.num_modes.tolist() == [3, 1]
    assert found.modes.shape == (2, 3, 1)
    np.testing.assert_allclose(found.modes[0, :, 0], [20.0, 10.0, 0.0], atol=1e-3)
    assert np.isnan(found.modes[1, 1:]).all() and np.isnan(found.mass[1, 1:]).all()
    top = mixture_modes(w, m, s, max_modes=1)
    assert top.num_modes.tolist() == [1, 1] and top.modes.shape == (2, 1, 1)
    np.testing.assert_allclose(top.modes[0, 0, 0], 20.0, atol=1e-3)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_saddle_is_not_a_mode(dim):
    # Two equal components 2*sqrt(2) sigma apart: the midpoint is a minimum along the axis joining
    # them (and a maximum across it when dim > 1), so never a mode; the means are modes.
    w = np.array([[0.5, 0.5]])
    m = np.zeros((1, 2, dim))
    m[0, :, 0] = [-1.0, 1.0]
    s = np.full((1, 2, dim), 0.7)
    points = np.zeros((3, dim))
    points[1:, 0] = [-0.93, 0.93]  # near the means (the peaks move inwards slightly)
    row = np.zeros(3, dtype=np.intp)
    x, log_p, peak, _ = MixtureSearch.of(w, m, s, s[:, 0]).polish(points, row)
    assert peak.tolist() == [False, True, True]
    np.testing.assert_allclose(x[0], 0.0, atol=1e-12)  # the saddle is stationary: polishing stays there
    np.testing.assert_allclose(log_p, log_density(w, m, s, x[None])[0])
    assert mixture_modes(w, m, s).num_modes.tolist() == [2]


def test_min_mass_drops_negligible_modes():
    w = np.array([[0.9999, 0.0001]], np.float32)
    m = np.array([[[0.0], [10.0]]], np.float32)
    s = np.ones((1, 2, 1), np.float32)
    assert mixture_modes(w, m, s, min_mass=0.0).num_modes.tolist() == [2]
    assert mixture_modes(w, m, s).num_modes.tolist() == [1]  # the default drops a 0.01% component


def test_tiny_temperatures_pick_the_heaviest_component_without_nan():
    weights = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    for temperature in (1e-3, 1e-200, 1e-320):
        tempered = tempered_weights(weights, temperature)
        assert np.isfinite(tempered).all()
        np.testing.assert_allclose(tempered, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(tempered_weights(weights, 1.0), weights, atol=1e-12)
