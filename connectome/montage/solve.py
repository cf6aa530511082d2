"""Global placement of the tiles of one section from pairwise offsets: robust, weighted least
squares with loop checks.

Unknowns are the top-left positions ``p_i = (y_i, x_i)`` of the tiles. Every usable pair
``(a, b)`` with measured offset ``d_ab`` (see :mod:`.pairwise`) adds the equation
``p_b - p_a = d_ab`` with weight ``1 / std^2`` per axis (its own measured uncertainty, clipped
to ``[min_std_px, max_std_px]``, so a pair on a ridge-like texture constrains mostly the axis it
can see); every tile adds the weak prior ``p_i = n_i`` (its nominal stage position) with weight
``prior_weight``, which fixes the free translation of each connected group of tiles and places
tiles with no pair at their nominal position relative to the rest. The two axes are independent
linear systems.

Loops (consistency): in a grid every 4 neighbouring tiles form a loop whose offsets must sum to
zero. For each pair the *leave-one-out residual* ``t = r / (1 - h)`` (``r`` its residual, ``h``
its leverage) is the difference between its offset and the offset the rest of the graph implies
for it. While some pair on a loop has ``|t| > max_residual_px``:

1. the suspects are the pairs with ``|t|`` within 10% of the largest (on a single loop every
   pair shows the same misclosure, so geometry alone cannot tell which one is wrong);
2. the culprit is the suspect with the least evidence: weak before strong, ambiguous before
   clear, then the lowest ``score^2 / 2 - (deviation_px / jitter_px)^2 / 2`` (the pair's
   significance against its distance from the nominal offset, in units of the stage jitter);
3. if the culprit has an alternative offset (another peak of its correlation surface, e.g. on
   a periodic texture) within ``max_residual_px`` of what the rest implies, it switches to it
   (each offset is tried once); else it is dropped.

Pairs on no loop (bridges of the graph) cannot be checked this way. A *strong* pair is trusted
on its own; a *weak* one only when it closes a loop (it is on a loop after the checks); weak
pairs on no loop are dropped (``reason`` says why) and the solve repeats.

Placement of groups: tiles are grouped by the pairs finally used (connected components). The
largest group is the *main* group (the reference tile's group when it is among the largest);
every other group (an isolated tile is a group of one) is translated so that its mean deviation
from nominal equals the main group's, i.e. it sits where the stage put it relative to the main
group. These tiles are reported.

Frame: the result is translated so that the reference tile (row 0, col 0) is at (0, 0). When
tile (0, 0) is absent (skipped as bad), the origin is where it would be: the reference tile's
position minus its nominal offset from tile (0, 0)'s nominal position (if the manifest listed
it), else the first tile by (row, col) is the origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: above this many tiles in a section the solve is sparse and the loop check uses plain
#: residuals instead of leave-one-out ones (the dense inverse would cost n^3)
DENSE_MAX_TILES = 1500


@dataclass(frozen=True)
class PairEq:
    """One pairwise measurement: ``pos[b] - pos[a] = offset_yx`` (1-sigma ``std_yx``).

    ``strong``: trusted without a loop; ``ambiguous``: the correlation surface had other
    peaks nearly as good; ``alternatives``: those peaks' offsets (and their std);
    ``score``: the evidence (significance) used to rank suspects; ``deviation_px``:
    ``|offset - nominal offset|``."""

    a: int
    b: int
    offset_yx: tuple[float, float]
    std_yx: tuple[float, float] = (0.1, 0.1)
    strong: bool = True
    ambiguous: bool = False
    alternatives: tuple[tuple[tuple[float, float], tuple[float, float]], ...] = ()
    score: float = 0.0
    deviation_px: float = 0.0


@dataclass(frozen=True)
class Solution:
    positions_yx: np.ndarray  # (n, 2) float64
    residual_px: np.ndarray  # (n_pairs,) |p_b - p_a - d| for every pair (used or not)
    used: np.ndarray  # (n_pairs,) bool: kept in the final solve
    component: np.ndarray  # (n,) int: group id (0 = main group)
    n_dropped: int
    offsets_yx: np.ndarray | None = field(default=None)  # (n_pairs, 2) the offset finally used per pair
    chosen: np.ndarray | None = field(default=None)  # (n_pairs,) 0 = primary offset, k = alternative k
    loop_residual_px: np.ndarray | None = field(default=None)  # (n_pairs,) leave-one-out |t|; nan = on no loop
    reasons: tuple = ()  # (n_pairs,) why a pair was not used ("" if used)


def _solve_axis(
    n: int,
    a: np.ndarray,
    b: np.ndarray,
    d: np.ndarray,
    w: np.ndarray,
    nominal: np.ndarray,
    prior_weight: float,
    want_leverage: bool = False,
):
    """Minimise sum_e w_e (p[b_e] - p[a_e] - d_e)^2 + prior_weight * sum_i (p_i - nominal_i)^2.
    Returns p (and the leverage of every edge if asked)."""
    keep = w > 0
    a, b, d, w = a[keep], b[keep], d[keep], w[keep]
    rhs = prior_weight * nominal + np.bincount(b, w * d, n) - np.bincount(a, w * d, n)
    if n > DENSE_MAX_TILES:  # sparse; leverage taken as 0 (plain residuals)
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve

        diag = np.full(n, prior_weight) + np.bincount(a, w, n) + np.bincount(b, w, n)
        mat = coo_matrix(
            (
                np.concatenate([-w, -w, diag]),
                (np.concatenate([a, b, np.arange(n)]), np.concatenate([b, a, np.arange(n)])),
            ),
            shape=(n, n),
        )
        pos = np.asarray(spsolve(mat.tocsr(), rhs), dtype=np.float64).reshape(n)
        return pos, (np.zeros(len(keep)) if want_leverage else None)
    mat = np.zeros((n, n))
    mat[np.diag_indices(n)] = prior_weight
    np.add.at(mat, (a, a), w)
    np.add.at(mat, (b, b), w)
    np.add.at(mat, (a, b), -w)
    np.add.at(mat, (b, a), -w)
    if not want_leverage:
        return np.linalg.solve(mat, rhs), None
    inv = np.linalg.inv(mat)
    pos = inv @ rhs
    lev = np.zeros(len(keep))
    lev[keep] = w * (inv[a, a] + inv[b, b] - 2 * inv[a, b])
    return pos, lev


def _components(n: int, ia: np.ndarray, ib: np.ndarray, used: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(int(used.sum())), (ia[used], ib[used])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def bridges(n: int, ia: np.ndarray, ib: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(n_pairs,) bool: the used edges that lie on no loop (removing one disconnects its ends);
    parallel edges between the same two tiles form a loop."""
    edges = [k for k in range(len(ia)) if used[k]]
    adj: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for k in edges:
        adj[ia[k]].append((ib[k], k))
        adj[ib[k]].append((ia[k], k))
    out = np.zeros(len(ia), dtype=bool)
    disc = [-1] * n
    low = [0] * n
    t = 0
    for root in range(n):
        if disc[root] >= 0:
            continue
        disc[root] = low[root] = t
        t += 1
        stack = [(root, -1, iter(adj[root]))]
        while stack:
            v, via, it = stack[-1]
            advanced = False
            for u, k in it:
                if k == via:
                    continue
                if disc[u] < 0:
                    disc[u] = low[u] = t
                    t += 1
                    stack.append((u, k, iter(adj[u])))
                    advanced = True
                    break
                low[v] = min(low[v], disc[u])
            if not advanced:
                stack.pop()
                if stack:
                    p = stack[-1][0]
                    low[p] = min(low[p], low[v])
                    if low[v] > disc[p]:
                        out[via] = True
    return out


def solve_positions(
    nominal_yx: np.ndarray,
    pairs: list[PairEq],
    ref: int,
    max_residual_px: float = 3.0,
    prior_weight: float = 1e-6,
    origin_offset_yx: tuple[float, float] | None = None,
    jitter_px: float = 15.0,
    min_std_px: float = 0.05,
    max_std_px: float = 5.0,
) -> Solution:
    """Tile positions from pairwise offsets (see the module docstring).

    ``nominal_yx`` (n, 2); ``ref`` the index of the reference tile; ``origin_offset_yx`` the
    nominal position of tile (0, 0) minus the reference tile's, when the reference is not
    tile (0, 0) itself (None: the reference tile is the origin).
    """
    nominal = np.asarray(nominal_yx, dtype=np.float64)
    n = len(nominal)
    m = len(pairs)
    used = np.ones(m, dtype=bool)
    chosen = np.zeros(m, dtype=int)
    reasons = [""] * m
    ia = np.array([p.a for p in pairs], dtype=np.int64)
    ib = np.array([p.b for p in pairs], dtype=np.int64)
    dd = np.array([p.offset_yx for p in pairs], dtype=np.float64).reshape(m, 2)
    std = np.clip(np.array([p.std_yx for p in pairs], dtype=np.float64).reshape(m, 2), min_std_px, max_std_px)
    dropped = 0
    loo = np.full(m, np.nan)
    tried: list[set] = [set() for _ in range(m)]

    def solve(with_leverage: bool):
        pos, levs = [], []
        for k in (0, 1):
            w = np.where(used, 1.0 / std[:, k] ** 2, 0.0)
            p, lev = _solve_axis(n, ia, ib, dd[:, k], w, nominal[:, k], prior_weight, with_leverage)
            pos.append(p)
            levs.append(lev)
        pos = np.stack(pos, axis=1)
        return pos, (np.stack(levs, axis=1) if with_leverage else None)

    def rank(k: int) -> tuple:
        p = pairs[k]
        return (
            p.strong,
            not p.ambiguous,
            0.5 * p.score * abs(p.score) - 0.5 * (p.deviation_px / max(jitter_px, 1.0)) ** 2,
        )

    while True:
        pos, lev = solve(m > 0)
        if m == 0:
            break
        res = pos[ib] - pos[ia] - dd
        bridge = bridges(n, ia, ib, used)
        on_loop = used & ~bridge
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(on_loop[:, None], res / np.maximum(1.0 - lev, 1e-12), 0.0)
        tn = np.hypot(t[:, 0], t[:, 1])
        loo = np.where(on_loop, tn, np.nan)
        bad = on_loop & (tn > max_residual_px)
        if bad.any():
            worst = float(tn[bad].max())
            suspects = [k for k in np.flatnonzero(bad) if tn[k] >= 0.9 * worst]
            # the suspect with the least evidence switches to an alternative peak that agrees with
            # the rest of the graph, or is dropped
            k = min(suspects, key=rank)
            implied = dd[k] + t[k]
            options = [(pairs[k].offset_yx, pairs[k].std_yx)] + list(pairs[k].alternatives)
            fits = [
                (float(np.hypot(*(np.asarray(off) - implied))), j)
                for j, (off, _s) in enumerate(options)
                if j != chosen[k] and j not in tried[k]
            ]
            fits = [f for f in fits if f[0] <= max_residual_px]
            if fits:
                j = min(fits)[1]
                tried[k].add(int(chosen[k]))
                chosen[k] = j
                dd[k] = options[j][0]
                std[k] = np.clip(options[j][1], min_std_px, max_std_px)
                continue
            used[k] = False
            reasons[k] = f"dropped: loop does not close (offset {tn[k]:.1f} px from what the other pairs imply)"
            dropped += 1
            continue
        # weak pairs need a loop that closes
        weak_alone = [k for k in np.flatnonzero(used & bridge) if not pairs[k].strong]
        if weak_alone:
            for k in weak_alone:
                used[k] = False
                reasons[k] = (
                    f"dropped: weak match (z {pairs[k].score:.1f}) on no loop of matched tiles, so "
                    f"unconfirmed ({pairs[k].deviation_px:.1f} px from the nominal offset)"
                )
                dropped += 1
            continue
        break
    comp = _components(n, ia, ib, used) if m else np.arange(n)
    sizes = np.bincount(comp)
    main = comp[ref] if sizes[comp[ref]] == sizes.max() else int(np.argmax(sizes))
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
    # a new name, not pos: mypy reports a name reassigned after a ``while True`` loop as used before definition
    positions = pos - origin
    res = np.hypot(*(positions[ib] - positions[ia] - dd).T) if m else np.zeros(0)
    loo = np.where(used, loo, np.nan)
    return Solution(positions, res, used, comp, dropped, dd, chosen, loo, tuple(reasons))
