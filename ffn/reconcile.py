"""Reconciliation of object ids across overlapping subvolumes into one consistent uint64 volume.

Inference segments the volume as a grid of *subvolumes* that overlap their neighbours. Each
subvolume's segmentation is computed independently and carries *local* ids (any uint64 values,
0 = background); the same neuron has unrelated ids in two subvolumes. This module turns them
into one globally consistent label volume. It is model-independent: FFN canvases, the classical
baseline or any other segmenter can feed it.

Geometry
--------
A :class:`Subvolume` has a ``box`` (what was segmented, global z, y, x voxel coordinates,
half-open) and a ``core`` (what it writes). :func:`subvolume_grid` builds the standard layout
from the engine's :class:`~connectome.blockwise.geometry.BlockGrid`: the cores are the engine's
write boxes (``core_shape_zyx`` = block shape = output chunk shape, so each output chunk is
written by exactly one subvolume) and each box is its core grown by ``overlap // 2`` below and
``overlap - overlap // 2`` above (clipped to the volume), so neighbours overlap by ``overlap``
voxels and the overlap is split at its middle between the two cores.

Storage
-------
Each subvolume's local segmentation is saved by :class:`NpzSubvolumeStore` as
``DIR/<subvolume_id>.npz`` (conventionally ``WS/segment/subvolumes/``), written atomically,
holding ``labels`` (uint64, the box's shape), ``box`` (begin and end), ``ids`` (the sorted
distinct non-zero local ids of the box) and ``core_ids`` (those present in the core). Any
object with the same four methods (``save``, ``load``, ``ids``, ``core_ids``) can replace it
(e.g. a zarr array with one chunk per subvolume). A subvolume is saved by the block that
computed it, so a blockwise inference stage resumes per subvolume.

Algorithm (pure functions over the store; voxel data in memory: at most two subvolumes)
-------------------------------------------------------------------------------------
The driver-side tables (union-find parents, relabel tables) hold one integer per object id,
never per voxel.

(a) **Globally unique ids.** Subvolumes are put in a canonical order (sorted by box begin,
    then box end, z, y, x), independent of the order they were computed or listed in. Within a
    subvolume the ``n_i`` distinct non-zero local ids get ranks ``1..n_i`` in increasing local-id
    order; the global id is ``offset_i + rank`` with ``offset_i = n_0 + ... + n_{i-1}`` (see
    :func:`global_id_offsets`). Global ids are thus dense, ``1..N``, and need only the stored
    ``ids`` of every subvolume (no voxel data) to compute.

(b) **Matching on overlaps.** For every pair of subvolumes whose boxes intersect (faces, edges
    and corners: :func:`overlapping_pairs`), both segmentations are cut to the intersection R
    and the contingency table ``n(a, b)`` over R is counted (voxels where both are non-zero).
    With ``s_a`` = number of voxels of ``a`` in R (in A's segmentation) and ``s_b`` likewise,
    the pair is *substantial* **iff**::

        n(a, b) >= min_overlap_voxels   and   n(a, b) >= min_fraction * min(s_a, s_b)

    (defaults ``min_overlap_voxels = 64``, ``min_fraction = 0.5``): they share a substantial
    number of voxels, and at least half of the smaller of the two, as seen inside the overlap.
    A substantial pair merges (union-find) unless it loses a conflict (below). "Mutual" is
    what the ``min`` gives: the test is against the *smaller* object, so a small piece wholly
    inside a large object matches it, while a sliver shared by two large objects does not.
    Only voxels inside R count - the objects' sizes elsewhere are irrelevant, since the two
    segmentations can only be compared where both exist.

    **Conflicts** - an id ``b`` of B with two (or more) ids ``a1``, ``a2`` of A each passing the
    rule (or the same with A and B swapped) - are resolved by *where the two subvolumes
    disagree* (``conflict="context"``, the default). Take the connected pieces (26-connected)
    of ``b``'s voxels inside R and assign each partner ``a_i`` to the piece holding most of
    their shared voxels:

    * partners in **different pieces** all merge with ``b``: inside R they are not connected,
      so ``b`` joins them outside R, i.e. outside A's box, where A could not look. This is
      *truncation* - an object that leaves A's box and comes back (a U-turn, a branch joining
      outside the box) is two pieces inside A but one in B, which sees the connection; a
      single-subvolume run sees it too, so the union is what it would produce;
    * of several partners in the **same piece**, only the best (most shared voxels, ties: the
      smaller global id) merges: both subvolumes saw that whole piece and disagree on whether it
      is one object or several. Merging all of them would spread one subvolume's merge error
      into its neighbour's core (and from there, transitively, further); taking the best keeps
      each core's own decision there.

    Measured with the classical baseline (``ffn/baseline.py``) as the per-subvolume segmenter on
    ``connectome synth --preset small`` volumes (16 x 256 x 256), 2 x 2 x 2 subvolumes, overlap
    4,32,32 (and 2,16,16), adapted Rand error: single run vs "context" vs "all" vs "mutual"
    (best partner of both ids only): seed 301 0.025 vs 0.025 (0.029) / 0.022 (0.022) / 0.025
    (0.029); seed 302 0.148 vs 0.197 (0.205) / 0.179 (0.198) / 0.197 (0.205); seed 303 0.086
    vs 0.071 (0.079) / 0.193 (0.242) / 0.069 (0.078). "all" (every substantial pair merges) is
    the least predictable (+0.11..+0.16 on seed 303, merges spread across borders); "context"
    scores like "mutual" on these volumes (the baseline's disagreements are inside the overlap)
    but, unlike "mutual", rejoins truncated objects (see the tests). (The remaining gap on seed
    302 is the baseline itself: it links sections, and a core of 8 sections links differently
    from the whole stack of 16.) Pairs below the thresholds (boundary slivers, a corner of an
    object barely entering R, a part holding less than ``min_fraction`` of the smaller object)
    never merge.

(c) **Output.** The global ids are joined with a :class:`UnionFind` whose root is always the
    smallest global id of a component, so the partition *and* the roots do not depend on the
    order in which pairs are processed or merges applied. Every output block is a subvolume's
    core, labelled by its own segmentation mapped through the roots. Final ids are the roots
    present in some core, sorted ascending and numbered ``1..K`` (:func:`relabel_tables`);
    background 0 stays 0. Components that occur in no core (an object seen only in overlaps and
    matched to nothing) get no id. The result is identical whatever the processing order.

Driving it blockwise: (1) inference blocks ``store.save`` their subvolume; (2) one job per
overlapping pair returns :func:`pair_edges` (tiny arrays); (3) the driver runs
:func:`join_edges` and :func:`relabel_tables` (needs only the stored id lists);
(4) output blocks (write box = core) call :func:`reconciled_core`. :func:`reconcile` runs all
of it serially.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from connectome.atomic import atomic_write_bytes
from connectome.blockwise.geometry import BlockGrid, Box


# ----------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Subvolume:
    """A segmented box (global coordinates, half-open) and the core of it that it writes."""

    subvolume_id: str
    box: Box
    core: Box

    def __post_init__(self) -> None:
        if not self.box.contains(self.core):
            raise ValueError(f"subvolume {self.subvolume_id}: core {self.core} is not inside box {self.box}")
        if self.box.size == 0:
            raise ValueError(f"subvolume {self.subvolume_id}: empty box {self.box}")

    @property
    def sort_key(self) -> tuple:
        return (self.box.begin_zyx, self.box.end_zyx, self.subvolume_id)


def subvolume_grid(shape_zyx, core_shape_zyx, overlap_zyx) -> list[Subvolume]:
    """The standard layout: cores = the engine's write boxes, neighbours overlapping by ``overlap``.

    Box = core grown by ``overlap // 2`` below and ``overlap - overlap // 2`` above, clipped to
    the volume; ids are the engine's block ids (``"z{iz}_y{iy}_x{ix}"``).
    """
    overlap = tuple(int(v) for v in overlap_zyx)
    if len(overlap) != 3:
        raise ValueError(f"overlap_zyx must have 3 values (z, y, x), got {overlap_zyx!r}")
    if any(o < 0 for o in overlap):
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    grid = BlockGrid(shape_zyx, core_shape_zyx)
    if any(o > c for o, c in zip(overlap, grid.block_shape_zyx)):
        raise ValueError(f"overlap {overlap} must not exceed the core shape {grid.block_shape_zyx}")
    vol = grid.volume_box
    subs = []
    for block in grid.blocks():
        core = block.write_box
        box = Box(
            tuple(b - o // 2 for b, o in zip(core.begin_zyx, overlap)),
            tuple(e + o - o // 2 for e, o in zip(core.end_zyx, overlap)),
        ).intersect(vol)
        subs.append(Subvolume(block.block_id, box, core))
    return subs


def canonical_order(subvolumes: Iterable[Subvolume]) -> list[Subvolume]:
    """Subvolumes sorted by (box begin, box end, id): the order global ids are assigned in."""
    subs = sorted(subvolumes, key=lambda s: s.sort_key)
    names = [s.subvolume_id for s in subs]
    if len(set(names)) != len(names):
        raise ValueError("subvolume ids must be unique")
    return subs


def overlapping_pairs(subvolumes: Sequence[Subvolume]) -> list[tuple[Subvolume, Subvolume]]:
    """Every pair whose boxes intersect (faces, edges, corners), each once, in canonical order.

    Sweep along z over the canonical order, so large grids do not cost n^2 box tests.
    """
    subs = canonical_order(subvolumes)
    pairs = []
    for i, a in enumerate(subs):
        for b in subs[i + 1 :]:
            if b.box.begin_zyx[0] >= a.box.end_zyx[0]:
                break
            if a.box.intersect(b.box).size > 0:
                pairs.append((a, b))
    return pairs


# ------------------------------------------------------------------------------------ storage
class SubvolumeStore(Protocol):
    def save(self, sub: Subvolume, labels: np.ndarray) -> None: ...
    def load(self, sub: Subvolume) -> np.ndarray: ...
    def ids(self, sub: Subvolume) -> np.ndarray: ...
    def core_ids(self, sub: Subvolume) -> np.ndarray: ...


def _nonzero_unique(a: np.ndarray) -> np.ndarray:
    u = np.unique(a)
    return u[u != 0].astype(np.uint64)


class NpzSubvolumeStore:
    """One ``<subvolume_id>.npz`` per subvolume under ``root`` (written atomically)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, sub: Subvolume) -> Path:
        return self.root / f"{sub.subvolume_id}.npz"

    def exists(self, sub: Subvolume) -> bool:
        return self.path(sub).is_file()

    def save(self, sub: Subvolume, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        if tuple(labels.shape) != sub.box.shape_zyx:
            raise ValueError(
                f"subvolume {sub.subvolume_id}: labels have shape {labels.shape}, box has {sub.box.shape_zyx}"
            )
        if labels.dtype.kind not in "ui":
            raise ValueError(f"subvolume {sub.subvolume_id}: labels must be integers, got {labels.dtype}")
        if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
            raise ValueError(f"subvolume {sub.subvolume_id}: negative labels")
        labels = labels.astype(np.uint64, copy=False)
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            labels=labels,
            box=np.array([sub.box.begin_zyx, sub.box.end_zyx], np.int64),
            ids=_nonzero_unique(labels),
            core_ids=_nonzero_unique(labels[sub.core.relative_to(sub.box)]),
        )
        atomic_write_bytes(self.path(sub), buf.getvalue())

    def _read(self, sub: Subvolume, key: str) -> np.ndarray:
        with np.load(self.path(sub)) as f:
            box = f["box"]
            if tuple(box[0]) != sub.box.begin_zyx or tuple(box[1]) != sub.box.end_zyx:
                raise ValueError(f"{self.path(sub)}: stored box {box.tolist()} differs from {sub.box}")
            return f[key]

    def load(self, sub: Subvolume) -> np.ndarray:
        return self._read(sub, "labels")

    def ids(self, sub: Subvolume) -> np.ndarray:
        return self._read(sub, "ids")

    def core_ids(self, sub: Subvolume) -> np.ndarray:
        return self._read(sub, "core_ids")


# ------------------------------------------------------------------------- (a) global ids
def global_id_offsets(store: SubvolumeStore, subvolumes: Sequence[Subvolume]) -> tuple[dict[str, int], int]:
    """Per subvolume id: its offset (global id = offset + 1-based local rank); and N, the total."""
    offsets, total = {}, 0
    for sub in canonical_order(subvolumes):
        offsets[sub.subvolume_id] = total
        total += int(store.ids(sub).size)
    return offsets, total


def to_global(labels: np.ndarray, local_ids: np.ndarray, offset: int) -> np.ndarray:
    """Map local ids to global ids (``offset + rank`` in ``local_ids``, sorted); 0 stays 0."""
    labels = np.asarray(labels).astype(np.uint64, copy=False)
    rank = np.searchsorted(local_ids, labels)  # index of the id; 0 maps below every id
    nz = labels != 0
    if nz.any():
        found = rank[nz] < local_ids.size
        if not found.all() or not np.array_equal(local_ids[rank[nz]], labels[nz]):
            raise ValueError("labels contain ids missing from the stored id list")
    return np.where(nz, rank.astype(np.uint64) + np.uint64(offset + 1), np.uint64(0))


# ---------------------------------------------------------------------------- (b) matching
@dataclass(frozen=True)
class MatchRule:
    """Merge (a, b) iff n(a,b) >= min_overlap_voxels and n(a,b) >= min_fraction * min(s_a, s_b)."""

    min_overlap_voxels: int = 64
    min_fraction: float = 0.5
    #: which substantial pairs merge when one id has several substantial partners (a conflict):
    #: "context" (default; see the module docstring), "all" (every substantial pair) or
    #: "mutual" (only a pair that is each id's best partner)
    conflict: str = "context"

    def __post_init__(self) -> None:
        if self.conflict not in ("context", "mutual", "all"):
            raise ValueError(f"conflict must be 'context', 'mutual' or 'all', got {self.conflict!r}")
        if self.min_overlap_voxels < 1:
            raise ValueError(f"min_overlap_voxels must be >= 1, got {self.min_overlap_voxels}")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ValueError(f"min_fraction must be in (0, 1], got {self.min_fraction}")


def match_overlap(labels_a: np.ndarray, labels_b: np.ndarray, rule: MatchRule = MatchRule()) -> np.ndarray:
    """Pairs (a, b) to merge from two segmentations of the same overlap region (see the rule).

    ``labels_a`` and ``labels_b`` cover the same region (any shape; "context" needs the 3D
    region for connectivity). Returns an (k, 2) uint64 array sorted by (a, b); ids are taken
    as given (global ids).
    """
    a3 = np.asarray(labels_a).astype(np.uint64, copy=False)
    b3 = np.asarray(labels_b).astype(np.uint64, copy=False)
    if a3.shape != b3.shape:
        raise ValueError(f"overlap arrays differ in shape: {a3.shape} vs {b3.shape}")
    a, b = a3.reshape(-1), b3.reshape(-1)
    ua, ia, sa = np.unique(a, return_inverse=True, return_counts=True)
    ub, ib, sb = np.unique(b, return_inverse=True, return_counts=True)
    both = (a != 0) & (b != 0)
    if not both.any():
        return np.zeros((0, 2), np.uint64)
    key = ia.reshape(-1)[both].astype(np.int64) * ub.size + ib.reshape(-1)[both]
    uk, n = np.unique(key, return_counts=True)  # sorted by (a, b)
    ka, kb = uk // ub.size, uk % ub.size
    keep = (n >= rule.min_overlap_voxels) & (n >= rule.min_fraction * np.minimum(sa[ka], sb[kb]))
    if rule.conflict == "mutual":
        keep &= _is_best(ka, kb, n) & _is_best(kb, ka, n)
    elif rule.conflict == "context":
        substantial = keep.copy()
        keep &= _context_filter(a3, b3, ua[ka], ub[kb], n, substantial, ka, kb)
        keep &= _context_filter(b3, a3, ub[kb], ua[ka], n, substantial, kb, ka)
    return np.stack([ua[ka[keep]], ub[kb[keep]]], axis=1).astype(np.uint64)


def _context_filter(x3, y3, xid, yid, n, keep, kx, ky) -> np.ndarray:
    """For every id x with >= 2 kept partners y: group the partners by the connected piece of
    x (inside the region) that holds most of their shared voxels; keep only the best partner
    (most shared voxels, ties: smaller id) of each piece. Returns the mask of pairs to keep."""
    from scipy import ndimage as ndi

    out = np.ones(n.size, bool)
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return out
    owners, counts = np.unique(kx[idx], return_counts=True)
    for owner in owners[counts >= 2].tolist():
        rows = idx[kx[idx] == owner]
        x_id = xid[rows[0]]
        mask = x3 == x_id
        bbox = ndi.find_objects(mask.astype(np.uint8))[0]
        pieces, _ = ndi.label(mask[bbox], structure=np.ones((3,) * mask.ndim, bool))
        ys = y3[bbox]
        best: dict[int, tuple] = {}
        for r in rows.tolist():
            piece = int(np.bincount(pieces[(ys == yid[r]) & (pieces > 0)]).argmax())
            rank = (-int(n[r]), int(yid[r]))
            if piece not in best or rank < best[piece][0]:
                best[piece] = (rank, r)
        winners = {r for _, r in best.values()}
        for r in rows.tolist():
            out[r] = r in winners
    return out


def _is_best(owner: np.ndarray, other: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per entry: is it the largest count of its owner (ties: the smaller partner index)?"""
    order = np.lexsort((other, -n, owner))
    first = np.ones(order.size, bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    out = np.zeros(order.size, bool)
    out[order[first]] = True
    return out


def pair_edges(
    store: SubvolumeStore, sub_a: Subvolume, sub_b: Subvolume, offsets: dict[str, int], rule: MatchRule = MatchRule()
) -> np.ndarray:
    """The merges (global id pairs) from the overlap of two subvolumes; loads only these two."""
    region = sub_a.box.intersect(sub_b.box)
    if region.size == 0:
        return np.zeros((0, 2), np.uint64)
    la = store.load(sub_a)[region.relative_to(sub_a.box)]
    lb = store.load(sub_b)[region.relative_to(sub_b.box)]
    ga = to_global(la, store.ids(sub_a), offsets[sub_a.subvolume_id])
    gb = to_global(lb, store.ids(sub_b), offsets[sub_b.subvolume_id])
    return match_overlap(ga, gb, rule)


# ---------------------------------------------------------------------------- union-find
class UnionFind:
    """Union-find over ids ``0..n``; the root of a component is always its smallest id.

    Linking the larger root under the smaller makes roots independent of the union order.
    Path halving keeps ``find`` near-constant.
    """

    def __init__(self, n: int):
        self.parent = np.arange(int(n) + 1, dtype=np.int64)

    def __len__(self) -> int:
        return self.parent.size

    def find(self, x: int) -> int:
        p = self.parent
        x = int(x)
        while p[x] != x:
            p[x] = p[p[x]]
            x = int(p[x])
        return x

    def union(self, x: int, y: int) -> int:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return rx
        lo, hi = (rx, ry) if rx < ry else (ry, rx)
        self.parent[hi] = lo
        return lo

    def union_pairs(self, pairs: np.ndarray) -> None:
        for x, y in np.asarray(pairs).reshape(-1, 2).tolist():
            self.union(x, y)

    def roots(self) -> np.ndarray:
        """The root of every id ``0..n`` (vectorised full compression)."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                break
            p = q
        self.parent = p
        return p.copy()


def join_edges(n_ids: int, edges: Iterable[np.ndarray]) -> np.ndarray:
    """Roots (smallest member) of every global id ``0..n_ids`` after all merges."""
    uf = UnionFind(n_ids)
    for e in edges:
        uf.union_pairs(e)
    return uf.roots()


# ------------------------------------------------------------------------------ (c) output
def relabel_tables(
    store: SubvolumeStore, subvolumes: Sequence[Subvolume], offsets: dict[str, int], roots: np.ndarray
) -> dict[str, np.ndarray]:
    """Per subvolume id: final id (uint64) indexed by local rank (index 0 -> 0).

    Final ids number the roots that occur in some core, in increasing root order, ``1..K``.
    """
    present = []
    for sub in subvolumes:
        g = to_global(store.core_ids(sub), store.ids(sub), offsets[sub.subvolume_id])
        present.append(roots[g.astype(np.int64)])
    used = np.unique(np.concatenate(present)) if present else np.zeros(0, np.int64)
    final_of_root = np.zeros(roots.size, np.uint64)
    final_of_root[used] = np.arange(1, used.size + 1, dtype=np.uint64)
    tables = {}
    for sub in subvolumes:
        off, n = offsets[sub.subvolume_id], int(store.ids(sub).size)
        table = np.zeros(n + 1, np.uint64)
        table[1:] = final_of_root[roots[off + 1 : off + n + 1]]
        tables[sub.subvolume_id] = table
    return tables


def reconciled_core(store: SubvolumeStore, sub: Subvolume, table: np.ndarray) -> np.ndarray:
    """The final labels of one subvolume's core (what its output block writes)."""
    labels = store.load(sub)[sub.core.relative_to(sub.box)]
    local = to_global(labels, store.ids(sub), 0)  # 1-based local rank, 0 = background
    return table[local.astype(np.int64)]


def reconcile(
    store: SubvolumeStore,
    subvolumes: Sequence[Subvolume],
    out,
    rule: MatchRule = MatchRule(),
) -> dict:
    """Run (a)-(c) serially and write every core into ``out`` (numpy or zarr, volume-shaped).

    Returns a small summary (counts of subvolumes, pairs, merges, local and final ids).
    """
    subs = canonical_order(subvolumes)
    offsets, n_ids = global_id_offsets(store, subs)
    edges = [pair_edges(store, a, b, offsets, rule) for a, b in overlapping_pairs(subs)]
    roots = join_edges(n_ids, edges)
    tables = relabel_tables(store, subs, offsets, roots)
    for sub in subs:
        out[sub.core.slices] = reconciled_core(store, sub, tables[sub.subvolume_id])
    n_final = int(max((int(t.max()) for t in tables.values() if t.size), default=0))
    return {
        "subvolumes": len(subs),
        "pairs": len(edges),
        "merges": int(sum(e.shape[0] for e in edges)),
        "local_ids": n_ids,
        "final_ids": n_final,
    }
