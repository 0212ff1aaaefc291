"""Settling climbs' end points into modes, for mdn_core.modes: grid cells of end points become
candidates, candidates are polished (Newton) and merged where they are one peak, and every end point
is assigned to its mode."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_core.climb import MixtureSearch
from mdn_core.mixture import _max_last, _sum_last

FloatArray = NDArray[np.floating]

CAPTURE = 0.25  # a climb this close to a known mode (of its narrowest width) has reached it
CELL = 1e-2  # end points in one grid cell of this size (of the finest scale) are one candidate
DIP_RANGE = 0.1  # modes closer than this (of the finest scale) are checked for a dip between them


@dataclass(frozen=True)
class Settled:
    """Candidates (sorted by row, then density, highest first), which are modes, and the mode each
    settled point belongs to (-1 where its row has none)."""

    x: FloatArray  # (C, D)
    log_p: FloatArray  # (C,)
    row: NDArray[np.intp]  # (C,)
    is_mode: NDArray[np.bool_]  # (C,)
    owner: NDArray[np.intp]  # (N,), per settled point
    batch: int
    radius: FloatArray  # (C,): how close a climb must come to a mode to be in its basin
    curvature: FloatArray  # (C,): the sharpest curvature of log p at each candidate

    def table(self) -> tuple[NDArray[np.intp], FloatArray, FloatArray]:
        """(B, W) mode indices per row, -1 padded, the candidates' points and radii: for climb's capture."""
        modes = np.flatnonzero(self.is_mode)
        counts = np.bincount(self.row[modes], minlength=self.batch)
        width = int(counts.max()) if len(modes) else 0
        table = np.full((self.batch, width), -1, dtype=np.intp)
        slot = np.arange(len(modes)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[self.row[modes]]
        table[self.row[modes], slot] = modes
        return table, self.x, self.radius

    def subset(self, idx: NDArray[np.intp]) -> Settled:
        """Candidates idx (in order) alone, no settled points."""
        return Settled(self.x[idx], self.log_p[idx], self.row[idx], self.is_mode[idx], np.zeros(0, dtype=np.intp),
                       self.batch, self.radius[idx], self.curvature[idx])  # fmt: skip


def combine(kept: Settled, part: Settled) -> tuple[Settled, NDArray[np.intp], NDArray[np.intp]]:
    """One settlement of the candidates of two, on different rows, sorted by row and density again:
    it, and where each of kept's and part's candidates went. Its settled points are part's."""
    x, log_p = np.concatenate([kept.x, part.x]), np.concatenate([kept.log_p, part.log_p])
    row = np.concatenate([kept.row, part.row])
    order = np.lexsort((-log_p, row))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out = Settled(
        x[order], log_p[order], row[order], np.concatenate([kept.is_mode, part.is_mode])[order],
        np.where(part.owner >= 0, rank[len(kept.x):][np.maximum(part.owner, 0)], -1), part.batch,
        np.concatenate([kept.radius, part.radius])[order], np.concatenate([kept.curvature, part.curvature])[order],
    )  # fmt: skip
    return out, rank[: len(kept.x)], rank[len(kept.x) :]


def settle(
    mix: MixtureSearch, ends: FloatArray, row: NDArray[np.intp], merge_tol: float, known: Settled | None = None
) -> Settled:
    """Group end points into candidates (grid cells), polish them, merge peaks that are one mode
    (closer than merge_tol, or closer than DIP_RANGE with no dip between), and say which mode
    each end point belongs to: its candidate's, or the nearest one where that is not a mode.

    With `known`, the first end points are its modes, in order, already polished: they are kept
    as they are (each is the first point of its cell, so its cell's candidate).
    """
    of_end, first = grid_groups(ends, row, CELL * mix.unit)
    c_row = row[first]
    modes = np.flatnonzero(known.is_mode) if known is not None else np.zeros(0, dtype=np.intp)
    done = first < len(modes)
    c_x, c_log_p = np.empty((len(first), ends.shape[1])), np.empty(len(first))
    c_peak, c_curv = np.ones(len(first), dtype=bool), np.empty(len(first))
    if known is not None:
        source = modes[first[done]]
        c_x[done], c_log_p[done], c_curv[done] = known.x[source], known.log_p[source], known.curvature[source]
    rest = ~done
    c_x[rest], c_log_p[rest], c_peak[rest], c_curv[rest] = mix.polish(ends[first[rest]], c_row[rest])
    order = np.lexsort((-c_log_p, c_row))
    c_x, c_log_p, c_peak, c_row, c_curv = c_x[order], c_log_p[order], c_peak[order], c_row[order], c_curv[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    of_end = rank[of_end]
    pair_i, pair_j = pairs_within_rows(c_row)  # every two candidates of a row
    ok = c_peak[pair_i] & c_peak[pair_j]
    i, j = pair_i[ok], pair_j[ok]
    gap = _max_last(np.abs(c_x[i] - c_x[j]) / mix.unit[c_row[i]]) if len(i) else np.zeros(0)
    same = gap < merge_tol
    check = (gap < DIP_RANGE) & ~same
    same[check] = mix.no_dip(c_x[i[check]], c_x[j[check]], c_row[i[check]], c_log_p[j[check]])
    parent = merged(len(c_x), i[same], j[same])
    is_mode = c_peak & (parent == np.arange(len(c_x)))
    owner = parent[of_end]
    lost = ~is_mode[owner]
    if lost.any():
        owner[lost] = _nearest_mode(ends[lost], row[lost], c_x, c_row, is_mode, mix.unit)
    # Capture radius: CAPTURE of the peak's narrowest width, and under half the way to another mode.
    radius = CAPTURE / np.sqrt(np.maximum(c_curv, np.finfo(np.float64).tiny))
    both = is_mode[pair_i] & is_mode[pair_j]
    i, j = pair_i[both], pair_j[both]
    apart = 0.45 * np.sqrt(_sum_last((c_x[i] - c_x[j]) ** 2)) if len(i) else np.zeros(0)
    np.minimum.at(radius, i, apart)
    np.minimum.at(radius, j, apart)
    return Settled(c_x, c_log_p, c_row, is_mode, owner, len(mix.unit), radius, c_curv)


def pairs_within_rows(rows: NDArray[np.intp]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """All index pairs (i < j) of a sorted row vector that share a row."""
    counts = np.bincount(rows) if len(rows) else np.zeros(0, dtype=np.intp)
    width = int(counts.max()) if len(counts) else 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    a, b = np.triu_indices(width, k=1)
    valid = b[None, :] < counts[:, None]  # (rows, pairs)
    r, p = np.nonzero(valid)
    return starts[r] + a[p], starts[r] + b[p]


def _nearest_mode(
    points: FloatArray,
    row: NDArray[np.intp],
    c_x: FloatArray,
    c_row: NDArray[np.intp],
    is_mode: NDArray[np.bool_],
    unit: FloatArray,
) -> NDArray[np.intp]:
    """For points (N, D) of rows `row`: the index of the nearest mode of the same row, or -1 if none."""
    modes = np.flatnonzero(is_mode)
    counts = np.bincount(c_row[modes], minlength=len(unit))
    width = int(counts.max()) if len(modes) else 0
    if width == 0:
        return np.full(len(points), -1, dtype=np.intp)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(modes)) - starts[c_row[modes]]
    table = np.full((len(unit), width), -1, dtype=np.intp)
    table[c_row[modes], slot] = modes
    cand = table[row]  # (N, W)
    where = c_x[np.maximum(cand, 0)]  # (N, W, D)
    dist = _max_last(np.abs(where - points[:, None, :]) / unit[row][:, None, :])
    dist = np.where(cand >= 0, dist, np.inf)
    out: NDArray[np.intp] = cand[np.arange(len(points)), np.argmin(dist, axis=1)]
    return out


def grid_groups(ends: FloatArray, row: NDArray[np.intp], cell: FloatArray) -> tuple[NDArray[np.intp], ...]:
    """Group points (N, D) of rows `row` by grid cell (each row's cell size: cell (B, D)): (group of each
    point (N,), first point of each group), groups in the order of (row, cell)."""
    cells = np.floor(ends / cell[row]).astype(np.int64)
    order = np.lexsort([*cells.T[::-1], row])  # stable: within a group, by index
    s_cells, s_row = cells[order], row[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (s_row[1:] != s_row[:-1]) | np.any(s_cells[1:] != s_cells[:-1], axis=1)
    group = np.empty(len(order), dtype=np.intp)
    group[order] = np.cumsum(new) - 1
    return group, order[new]


def merged(count: int, i: NDArray[np.intp], j: NDArray[np.intp]) -> NDArray[np.intp]:
    """For `count` candidates and the pairs (i < j) that are one: each candidate's group, named by its
    first member (each j points at the earliest i it merges with, then pointers are followed)."""
    parent = np.arange(count)
    np.minimum.at(parent, j, i)
    for _ in range(max(1, int(np.ceil(np.log2(max(count, 2)))) + 1)):
        parent = parent[parent]
    return parent
