"""Global placement of the tiles of one section from pairwise offsets: robust least squares.

Unknowns are the top-left positions ``p_i = (y_i, x_i)`` of the tiles. Every accepted pair
``(a, b)`` with measured offset ``d_ab`` (see :mod:`.pairwise`) adds the equation
``p_b - p_a = d_ab`` with weight 1; every tile adds the weak prior ``p_i = n_i`` (its nominal
stage position) with weight ``prior_weight`` (1e-4 by default), which fixes the free
translation of each connected group of tiles and places tiles with no accepted pair at their
nominal position relative to the rest. The two axes are independent linear systems.

Robustness: after each solve the pair with the largest residual ``|p_b - p_a - d_ab|`` is
dropped while that residual exceeds ``max_residual_px``, then the system is solved again
(a wrong pair on a loop of tiles shows the largest share of the loop's misclosure). Pairs on
no loop always fit exactly and cannot be checked this way; their quality rests on the peak
acceptance in :mod:`.pairwise`.

Placement of groups: tiles are grouped by the accepted pairs (connected components). The
group holding the reference tile is the *main* group; every other group (an isolated tile is a
group of one) is translated so that its mean deviation from nominal equals the main group's,
i.e. it sits where the stage put it relative to the main group. These tiles are reported.

Frame: the result is translated so that the reference tile (row 0, col 0) is at (0, 0). When
tile (0, 0) is absent (skipped as bad), the origin is where it would be: the reference tile's
position minus its nominal offset from tile (0, 0)'s nominal position (if the manifest listed
it), else the first tile by (row, col) is the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairEq:
    """One pairwise measurement: ``pos[b] - pos[a] = offset_yx``."""

    a: int
    b: int
    offset_yx: tuple[float, float]


@dataclass(frozen=True)
class Solution:
    positions_yx: np.ndarray        # (n, 2) float64
    residual_px: np.ndarray         # (n_pairs,) |p_b - p_a - d| for every pair (used or not)
    used: np.ndarray                # (n_pairs,) bool: kept in the final solve
    component: np.ndarray           # (n,) int: group id (0 = main group)
    n_dropped: int


def _solve_axis(n: int, a: np.ndarray, b: np.ndarray, d: np.ndarray, w: np.ndarray, nominal: np.ndarray,
                prior_weight: float) -> np.ndarray:
    """Minimise sum_e w_e (p[b_e] - p[a_e] - d_e)^2 + prior_weight * sum_i (p_i - nominal_i)^2."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    keep = w > 0
    a, b, d, w = a[keep], b[keep], d[keep], w[keep]
    diag = np.full(n, prior_weight) + np.bincount(a, w, n) + np.bincount(b, w, n)
    rows = np.concatenate([a, b, np.arange(n)])
    cols = np.concatenate([b, a, np.arange(n)])
    vals = np.concatenate([-w, -w, diag])
    mat = coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    rhs = prior_weight * nominal + np.bincount(b, w * d, n) - np.bincount(a, w * d, n)
    return np.asarray(spsolve(mat, rhs), dtype=np.float64).reshape(n)


def _components(n: int, pairs: list[PairEq], used: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a = [p.a for p, u in zip(pairs, used) if u]
    b = [p.b for p, u in zip(pairs, used) if u]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def solve_positions(nominal_yx: np.ndarray, pairs: list[PairEq], ref: int, max_residual_px: float = 3.0,
                    prior_weight: float = 1e-4, origin_offset_yx: tuple[float, float] | None = None) -> Solution:
    """Tile positions from pairwise offsets (see the module docstring).

    ``nominal_yx`` (n, 2); ``ref`` the index of the reference tile; ``origin_offset_yx`` the
    nominal position of tile (0, 0) minus the reference tile's, when the reference is not
    tile (0, 0) itself (None: the reference tile is the origin).
    """
    nominal = np.asarray(nominal_yx, dtype=np.float64)
    n = len(nominal)
    used = np.ones(len(pairs), dtype=bool)
    ia = np.array([p.a for p in pairs], dtype=np.int64)
    ib = np.array([p.b for p in pairs], dtype=np.int64)
    dd = np.array([p.offset_yx for p in pairs], dtype=np.float64).reshape(len(pairs), 2)
    dropped = 0
    while True:
        pos = np.stack([_solve_axis(n, ia, ib, dd[:, k], used.astype(np.float64), nominal[:, k], prior_weight)
                        for k in (0, 1)], axis=1)
        res = np.hypot(*(pos[ib] - pos[ia] - dd).T) if pairs else np.zeros(0)
        if not used.any():
            break
        worst = int(np.argmax(np.where(used, res, -1.0)))
        if res[worst] <= max_residual_px:
            break
        used[worst] = False
        dropped += 1
    comp = _components(n, pairs, used)
    main = comp[ref]
    dev = pos - nominal
    main_dev = dev[comp == main].mean(axis=0)
    for c in np.unique(comp):
        if c != main:
            sel = comp == c
            pos[sel] += main_dev - dev[sel].mean(axis=0)
    # relabel: 0 = main group, others by first tile index
    order = [main] + [c for c in dict.fromkeys(comp.tolist()) if c != main]
    relabel = {c: i for i, c in enumerate(order)}
    comp = np.array([relabel[c] for c in comp], dtype=int)
    origin = pos[ref] + (np.asarray(origin_offset_yx, dtype=np.float64) if origin_offset_yx is not None else 0.0)
    pos = pos - origin
    res = np.hypot(*(pos[ib] - pos[ia] - dd).T) if pairs else np.zeros(0)
    return Solution(pos, res, used, comp, dropped)
