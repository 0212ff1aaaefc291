"""The modes of a Gaussian mixture, each with the probability of its basin of attraction.

Same tensors as mdn_core.mixture: weights (B, K), means (B, K, D), scales (B, K, D).

How `mixture_modes` works, per row:

0. A component that dominates its neighbourhood (mdn_core.dominance: within the ellipsoid that
   holds all but TAIL of it, the others change the gradient of log p too little to lead a climb
   out or make a second peak) has one mode near its mean, whose basin holds its whole weight but
   for at most TAIL. A row whose other searched components weigh less than min_mass - TAIL
   together (nothing else can make a mode of min_mass) takes a short way: each dominant component
   has a mode, polished from its mean, with its weight as its basin's probability (off by at most
   TAIL plus that loose weight, under min_mass); components whose ellipsoids overlap share one.
   67% of the two-link arm's rows for targets within its joint limits take it (the others have
   a broad component of real weight around a narrow one), none of the Panda's (16 overlapping
   components in 7 dimensions). In the other rows dominant components are not probed (4.).
1. From the means: each searched component's mean climbs (below) to a candidate; end points in
   one grid cell (CELL of the row's finest searched scale) are one candidate.
2. Polish: Newton steps on log p with the exact Hessian (halved, or a fixed-point step, wherever
   a Newton step would not climb) until the Newton step is below NEWTON_TOL of the finest scale
   (or of |x| times climb.ROUNDING / NEWTON_TOL, where that is larger: float64's resolution).
   Near a flat-topped peak the fixed point crawls (its rate tends to 1) while Newton converges. A
   candidate that does not converge, or where the Hessian has a positive eigenvalue (a saddle),
   is not a mode: its points go to the nearest mode.
3. Merge: two modes closer than merge_tol are one; so are two closer than DIP_RANGE between
   which the density has no dip (checked at DIP_POINTS points on the segment joining them).
   Distinct local maxima always have a point lower than both on the segment between them (each
   is a maximum along that line too), so only points that a flat top left apart need it.
4. Probes: points PROBE scales either side of each searched component's mean along its
   PROBE_AXES widest axes (every axis in one dimension), or in two dimensions PLANE_PROBES
   quasi-random draws of the component (which also see a basin boundary that crosses it
   diagonally), climb too (a climb that enters a known mode's capture radius stops there; the
   others end at new candidates, settled with the first modes of their rows as in 1-3). They
   find a mode whose basin holds no mean. In one dimension FINDING_DRAWS more starts per
   component do the same.
   The climb: fixed-point steps x <- sum_k r_k mu_k / s_k^2 / sum_k r_k / s_k^2 (each raises p),
   at most CAP local scales long and halved back when they pass a crest, so that a climb stays
   in the basin it started in.
5. Mass, the probability of each mode's basin of attraction (the gradient flow's): in one
   dimension exactly (the mixture's CDF between the density's minima on either side of the mode,
   to 1.5e-7). In more, a component whose mean and probes all reach one mode gives that mode its
   whole weight, unless (in two dimensions) basins.sliver_risk finds that it may hold SLIVER of
   another mode's basin all the same; the others, straddling a basin boundary, are split by where
   STRADDLE_DRAWS (from three dimensions on WIDE_STRADDLE_DRAWS) fixed quasi-random draws of them
   (mean + scale * z, the same z for every row: the answer is deterministic) climb to; in two
   dimensions along the flow (climb's `flow`: straight jumps bend away from it where components
   are elongated), with steps of at most DRAW_CAP local scales (longer ones leap over a narrow
   peak's basin). On random 2-D mixtures (tests/test_modes.py's generator, K up to 6; python -m
   tests.mode_accuracy --seeds 2 3 4 5 6 7 8 --flow), against the gradient flow from a fine
   quadrature of every component: 95th percentile 0.0096-0.0156 per set of 50 (0.013 over 716
   modes), worst 0.030, none missed (grid-integrated basins, whose own chains move a mass by up
   to 0.09: 0.015-0.025 per set). min_mass applies to this probability; the masses returned sum
   to at most 1.

Every step is vectorised over rows, starts and components; loops run over iterations and chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_core.basins import basin_points, interval_masses, probe_offsets, sliver_risk
from mdn_core.chunks import spans, stack_padded
from mdn_core.climb import CAP, NEWTON_TOL, MixtureSearch
from mdn_core.dominance import TAIL, dominant
from mdn_core.mixture import _max_last
from mdn_core.settle import Settled, combine, merged, pairs_within_rows, settle

FloatArray = NDArray[np.floating]

DEFAULT_MIN_MASS = 1e-3
STRADDLE_DRAWS = 64  # quasi-random draws of a component whose probes reach more than one mode
WIDE_STRADDLE_DRAWS = 16  # ... from three output dimensions on, where each climb costs more
FINDING_DRAWS = 16  # more starts per component in one dimension, where they are cheap
DRAW_CAP = 0.5  # in two dimensions, the splitting draws' steps are at most this many local scales
MAX_DRAW_STEPS = 200  # climbing steps of a probe or draw at most
CLIMB_TOL = 1e-4  # climbs from the means stop when a step is below this fraction of the finest scale
DRAW_TOL = 1e-3  # ... and those of the draws, which only need to reach a candidate's cell
_UNSEARCHED_MASS_FRACTION = 1e-3  # components lighter than this times min_mass are not searched
# Rows x components^2 x dimensions per chunk of the search (every start climbs over every component):
# tens of milliseconds, from a 7-joint arm's 36 rows to a planar arm's 3,600.
CHUNK_WORK = 65_536
MIN_CHUNK_ROWS = 16


@dataclass(frozen=True)
class Modes:
    """Modes of each row's mixture, sorted by mass (largest first) and padded with NaN.

    modes (B, M, D), log_density (B, M), mass (B, M) (the probability of each mode's basin),
    num_modes (B,) with M = max(num_modes).
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


def _unit(scales: FloatArray, searched: NDArray[np.bool_]) -> FloatArray:
    """(B, D): each row's finest scale among its searched components (1 where none is searched)."""
    s = scales.astype(np.float64)
    out = np.min(np.where(searched[:, :, None], s, np.inf), axis=1)
    return np.where(np.isfinite(out), out, 1.0)


def mixture_modes(
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    max_modes: int = 0,
    max_iter: int = 500,
    merge_tol: float = 1e-3,
    min_mass: float = DEFAULT_MIN_MASS,
    should_stop: Callable[[], bool] | None = None,
) -> Modes:
    """Every mode of each row's mixture with its log-density and the probability of its basin.

    See the module docstring for the method and the mass estimator's error. Components lighter
    than a thousandth of min_mass are not searched (K of them together cannot make a mode of
    min_mass): a trained MDN parks the components it does not need at near-zero weight, anywhere.
    merge_tol is relative to the row's finest searched scale; max_iter bounds the climb of each
    start; max_modes = 0 keeps all the modes. The rows are searched in chunks of about CHUNK_WORK
    rows x components^2 x dimensions (tens of milliseconds each); should_stop() is asked between chunks and
    ends the search with Interrupted (see mdn_core.chunks). Rows are independent: chunks change
    the answer by float32 rounding at most.
    """
    if max_modes < 0:
        raise ValueError(f"max_modes must be >= 0, got {max_modes}")
    batch, k, dim = means.shape
    step = max(MIN_CHUNK_ROWS, CHUNK_WORK // (k * k * dim))
    if batch <= step:
        return _chunk(weights, means, scales, max_modes, max_iter, merge_tol, min_mass)
    parts = [
        _chunk(weights[a:b], means[a:b], scales[a:b], max_modes, max_iter, merge_tol, min_mass)
        for a, b in spans(batch, step, should_stop, "rows")
    ]
    return Modes(
        stack_padded([p.modes for p in parts], np.nan),
        stack_padded([p.log_density for p in parts], np.nan),
        stack_padded([p.mass for p in parts], np.nan),
        np.concatenate([p.num_modes for p in parts]),
    )


def _chunk(
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    max_modes: int,
    max_iter: int,
    merge_tol: float,
    min_mass: float,
) -> Modes:
    """mixture_modes for one chunk of rows: rows where only dominant components can make a mode of
    min_mass take the short way (0.)."""
    w = weights.astype(np.float64)
    searched = w >= min_mass * _UNSEARCHED_MASS_FRACTION
    alone = dominant(w, means, scales, searched)
    loose = np.sum(np.where(searched & ~alone, w, 0.0), axis=1)
    short = loose + TAIL < min_mass
    if not short.any():
        return _search(weights, means, scales, searched, alone, max_modes, max_iter, merge_tol, min_mass)
    fast, slow = np.flatnonzero(short), np.flatnonzero(~short)
    found = [(fast, _dominated(weights[fast], means[fast], scales[fast], searched[fast], alone[fast], max_modes,
                               merge_tol, min_mass))]  # fmt: skip
    if slow.size:
        rows = (weights[slow], means[slow], scales[slow], searched[slow], alone[slow])
        found.append((slow, _search(*rows, max_modes, max_iter, merge_tol, min_mass)))
    return _scatter(len(short), means.shape[2], found)


def _dominated(
    weights: FloatArray, means: FloatArray, scales: FloatArray, searched: NDArray[np.bool_],
    alone: NDArray[np.bool_], max_modes: int, merge_tol: float, min_mass: float,
) -> Modes:  # fmt: skip
    """Rows where only dominant components (`alone`) can make a mode of min_mass: each of them has a
    mode near its mean, with its weight as the probability of its basin; components whose modes
    coincide (their ellipsoids overlap, so their climbs end at one point) share theirs.

    There the others hardly pull, and a fixed-point step's rate is their responsibility: two steps
    from the mean, and where the second still moved more than NEWTON_TOL of the finest scale, Newton
    polishing as in 2. Modes closer than merge_tol of the finest scale are one, as in 3."""
    w = weights.astype(np.float64)
    mix = MixtureSearch.of(weights, means, scales, _unit(scales, searched))
    row, k = np.nonzero(alone & (w > 0.0))  # by row
    start = mix.fixed_point(mix.means[row, k], row)
    x = mix.fixed_point(start, row)
    slow = np.flatnonzero(_max_last(np.abs(x - start) / mix.unit[row]) > NEWTON_TOL)
    peak = np.ones(len(row), dtype=bool)
    log_p = mix.log_p(x, row)
    if slow.size:
        x[slow], log_p[slow], peak[slow], _ = mix.polish(x[slow], row[slow])
    i, j = pairs_within_rows(row)
    same = _max_last(np.abs(x[i] - x[j]) / mix.unit[row[i]]) < merge_tol if len(i) else np.zeros(0, dtype=bool)
    parent = merged(len(row), i[same], j[same])
    mass = np.bincount(parent, weights=w[row, k], minlength=len(row)).astype(np.float64)
    return _pack(len(w), x, log_p, mass, row, peak & (parent == np.arange(len(row))), max_modes, min_mass)


def _scatter(batch: int, dim: int, found: list[tuple[NDArray[np.intp], Modes]]) -> Modes:
    """One Modes of `batch` rows from parts, each for the rows listed beside it."""
    width = max(part.modes.shape[1] for _, part in found)
    out = Modes(
        np.full((batch, width, dim), np.nan, np.float32),
        np.full((batch, width), np.nan, np.float32),
        np.full((batch, width), np.nan, np.float32),
        np.zeros(batch, np.int32),
    )
    for rows, part in found:
        n = part.modes.shape[1]
        out.modes[rows, :n], out.log_density[rows, :n], out.mass[rows, :n] = part.modes, part.log_density, part.mass
        out.num_modes[rows] = part.num_modes
    return out


def _search(
    weights: FloatArray,
    means: FloatArray,
    scales: FloatArray,
    searched: NDArray[np.bool_],
    alone: NDArray[np.bool_],
    max_modes: int,
    max_iter: int,
    merge_tol: float,
    min_mass: float,
) -> Modes:
    """The whole search (1.-5.) on rows; `searched` and `alone` (B, K): which components are searched,
    which dominate their neighbourhood (mdn_core.dominance)."""
    dim = means.shape[2]
    w = weights.astype(np.float64)
    mix = MixtureSearch.of(weights, means, scales, _unit(scales, searched))
    mb, mk = np.nonzero(searched)

    # 1. From the means: candidates, polished and merged, are the first modes.
    row = mb.astype(np.intp)
    ends, _ = mix.climb(mix.means[mb, mk], row, CLIMB_TOL * mix.unit[row], max_iter)
    first = settle(mix, ends, row, merge_tol)

    # 2. Probes from each component (mean +- PROBE scales along its widest PROBE_AXES axes; in two
    # dimensions PLANE_PROBES quasi-random draws of it): they find modes whose basin holds no mean,
    # and tell which components lie inside one basin.
    # A dominant component lies in one basin and hides no other mode: it is not probed.
    sigma = scales.astype(np.float64)
    spread = sigma[mb, mk]  # (C, D)
    # Nor is one lighter than min_mass: its whole weight, wherever it goes, is below what counts.
    unprobed = alone[mb, mk] | (w[mb, mk] < min_mass)
    probed = np.flatnonzero(~unprobed)
    offsets = probe_offsets(spread[probed])  # (P, Q, D)
    per = offsets.shape[1]
    probes = (mix.means[mb[probed], mk[probed]][:, None, :] + offsets).reshape(-1, dim)
    probe_rows = np.repeat(row[probed], per)
    second, probe_owner, moved = _extend(mix, first, probes, probe_rows, searched, max_iter, merge_tol)
    mean_owner = _follow(moved, first.owner)  # each searched component's mean, in `second`

    # 3. Mass. One dimension: exactly, between the density's minima. More: a component whose mean
    # and probes all reach one mode gives it its whole weight; the others (straddling a basin
    # boundary) are split by the modes that STRADDLE_DRAWS quasi-random draws of them reach.
    if dim == 1:
        # Cheap here, and the masses need no draws: FINDING_DRAWS more starts per component to
        # find the shallow peaks that probes and means miss.
        z = basin_points(FINDING_DRAWS, 1)
        finders = (mix.means[mb, mk][:, None, :] + sigma[mb, mk][:, None, :] * z).reshape(-1, 1)
        final, _, _ = _extend(mix, second, finders, np.repeat(row, FINDING_DRAWS), searched, max_iter, merge_tol)
        mass = interval_masses(mix, w, scales, final.x[:, 0], final.row, final.is_mode)
    else:
        grouped = probe_owner.reshape(-1, per)
        reached = mean_owner >= 0
        inside = reached.copy()
        inside[probed] &= np.all(grouped == mean_owner[probed, None], axis=1)
        if dim == 2:  # nor if a sliver of it may lie in another mode's basin
            held = np.bincount(mean_owner[reached], weights=w[mb, mk][reached], minlength=len(second.x)).astype(float)
            c = np.flatnonzero(inside & ~unprobed)
            others = second.table()[0][row[c]]
            log_norm = mix.log_norm[mb[c], mk[c]]
            inside[c] = ~sliver_risk(log_norm, mix.means[mb[c], mk[c]], spread[c], mean_owner[c], others, second, held)
        split = np.flatnonzero(~inside)
        n = STRADDLE_DRAWS if dim <= 2 else WIDE_STRADDLE_DRAWS
        z = basin_points(n, dim)
        draws = (mix.means[mb[split], mk[split]][:, None, :] + spread[split][:, None, :] * z).reshape(-1, dim)
        draw_rows = np.repeat(row[split], n)
        cap = DRAW_CAP if dim == 2 else CAP
        final, draw_owner, moved_again = _extend(
            mix, second, draws, draw_rows, searched, max_iter, merge_tol, cap, flow=dim == 2
        )
        mean_owner = _follow(moved_again, mean_owner)
        whole = np.flatnonzero(inside)
        owners = np.concatenate([mean_owner[whole], draw_owner])
        parts = np.repeat(w[mb[split], mk[split]] / n, n)
        shares = np.concatenate([w[mb[whole], mk[whole]], parts])
        counted = owners >= 0
        mass = np.bincount(owners[counted], weights=shares[counted], minlength=len(final.x)).astype(np.float64)

    # 4. Keep modes of min_mass; sort each row's by mass, then density.
    return _pack(len(w), final.x, final.log_p, mass, final.row, final.is_mode, max_modes, min_mass)


def _pack(
    batch: int,
    x: FloatArray,
    log_p: FloatArray,
    mass: FloatArray,
    row: NDArray[np.intp],
    is_mode: NDArray[np.bool_],
    max_modes: int,
    min_mass: float = 0.0,
) -> Modes:
    """Modes from candidates (N, D) of rows `row`: those that are modes with mass >= min_mass, each row's
    sorted by mass, then density, at most max_modes (0: all)."""
    idx = np.flatnonzero(is_mode & (mass >= min_mass))
    idx = idx[np.lexsort((-log_p[idx], -mass[idx], row[idx]))]
    kr = row[idx]
    num_modes = np.bincount(kr, minlength=batch).astype(np.int32)
    slot = np.arange(len(idx)) - np.concatenate([[0], np.cumsum(num_modes)[:-1]])[kr]
    if max_modes:
        num_modes = np.minimum(num_modes, max_modes)
        shown = slot < max_modes
        idx, kr, slot = idx[shown], kr[shown], slot[shown]
    width = int(num_modes.max()) if batch else 0
    out_modes = np.full((batch, width, x.shape[1]), np.nan, np.float32)
    out_dens = np.full((batch, width), np.nan, np.float32)
    out_mass = np.full((batch, width), np.nan, np.float32)
    out_modes[kr, slot], out_dens[kr, slot], out_mass[kr, slot] = x[idx], log_p[idx], mass[idx]
    return Modes(out_modes, out_dens, out_mass, num_modes)


def _follow(moved: NDArray[np.intp], owner: NDArray[np.intp]) -> NDArray[np.intp]:
    """Candidate indices in an earlier settlement, as indices in the next one (-1 stays -1)."""
    out: NDArray[np.intp] = np.where(owner >= 0, moved[np.maximum(owner, 0)], -1)
    return out


def _extend(
    mix: MixtureSearch,
    known: Settled,
    points: FloatArray,
    rows: NDArray[np.intp],
    searched: NDArray[np.bool_],
    max_iter: int,
    merge_tol: float,
    cap: float = CAP,
    flow: bool = False,
) -> tuple[Settled, NDArray[np.intp], NDArray[np.intp]]:
    """Climb more points; those that reach a known mode stop there, the others end at new candidates,
    settled together with the known modes. Returns the new settlement, the mode each point belongs to,
    and where each of `known`'s candidates went (its mode's index in the new one, -1 if none).

    The climbs run in float32 (enough to tell which basin a climb ends in), with a tolerance above
    its resolution: DRAW_TOL of the finest scale, and at least 1e-6 of the row's largest coordinate.
    """
    table, known_x, radius = known.table()
    reach = np.max(np.abs(np.where(searched[:, :, None], mix.means, 0.0)), axis=(1, 2))[:, None] + mix.unit
    tol = np.maximum(DRAW_TOL * mix.unit, 1e-6 * reach)[rows].astype(np.float32)
    single = mix.single()
    # (the capture radii capped where float32 still holds their squares)
    ends, caught = single.climb(
        points.astype(np.float32), rows, tol, min(max_iter, MAX_DRAW_STEPS),
        (table, known_x.astype(np.float32), np.minimum(radius, 1e18).astype(np.float32)), cap, flow,
    )  # fmt: skip
    free = caught < 0
    modes = np.flatnonzero(known.is_mode)
    if not free.any():  # every climb reached a known mode: nothing new to settle
        moved = np.where(known.is_mode, np.arange(len(known.x)), -1)
        return known, moved[caught], moved
    # Only the rows with new end points are settled again (the others' modes stay as they are).
    touched = np.zeros(known.batch, dtype=bool)
    touched[rows[free]] = True
    mine, others = modes[touched[known.row[modes]]], modes[~touched[known.row[modes]]]
    part = settle(
        mix,
        np.concatenate([known.x[mine], ends[free].astype(np.float64)]),
        np.concatenate([known.row[mine], rows[free]]),
        merge_tol,
        known.subset(mine),
    )
    settled, from_others, _ = combine(known.subset(others), part)
    moved = np.full(len(known.x), -1, dtype=np.intp)
    moved[others] = from_others
    moved[mine] = settled.owner[: len(mine)]
    owner = np.empty(len(points), dtype=np.intp)
    owner[~free] = moved[caught[~free]]
    owner[free] = settled.owner[len(mine) :]
    return settled, owner, moved
