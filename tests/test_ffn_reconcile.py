"""Reconciliation of subvolume ids (ffn/reconcile.py): a known label volume cut into 2x2x2
overlapping subvolumes, each relabelled at random, must come back as the same partition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from connectome.blockwise.geometry import Box
from connectome.evaluate.segmentation import Contingency, adapted_rand
from ffn.reconcile import (
    MatchRule,
    NpzSubvolumeStore,
    Subvolume,
    UnionFind,
    global_id_offsets,
    join_edges,
    match_overlap,
    overlapping_pairs,
    pair_edges,
    reconcile,
    reconciled_core,
    relabel_tables,
    subvolume_grid,
)

SHAPE = (24, 96, 96)
CORE = (12, 48, 48)
OVERLAP = (6, 16, 16)


def voronoi_volume(seed: int = 7, n_cells: int = 90) -> np.ndarray:
    """Random 3D Voronoi cells (anisotropic), some cells background, thin 0-boundaries between cells."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(SHAPE, bool)
    pts = np.stack([rng.integers(0, s, n_cells) for s in SHAPE], axis=1)
    seeds[tuple(pts.T)] = True
    markers, _ = ndimage.label(seeds)
    _, idx = ndimage.distance_transform_edt(~seeds, sampling=(3, 1, 1), return_indices=True)
    cells = markers[tuple(idx)]
    cells[np.isin(cells, rng.choice(np.arange(1, cells.max() + 1), 8, replace=False))] = 0
    # membranes: voxels whose +x or +y neighbour lies in another cell
    edge = np.zeros(SHAPE, bool)
    edge[:, :, :-1] |= cells[:, :, :-1] != cells[:, :, 1:]
    edge[:, :-1, :] |= cells[:, :-1, :] != cells[:, 1:, :]
    cells[edge] = 0
    # ground truth = 6-connected components (so every object is one connected piece)
    truth, _ = _components(cells)
    return truth


def _components(cells: np.ndarray):
    out = np.zeros(cells.shape, np.uint64)
    n = 0
    for c in np.unique(cells[cells != 0]):
        lab, k = ndimage.label(cells == c)
        out[lab > 0] = lab[lab > 0].astype(np.uint64) + np.uint64(n)
        n += k
    return out, n


def independent_segmenter(truth_crop: np.ndarray, rng) -> np.ndarray:
    """A perfect segmenter that labels each connected piece of the crop with a random uint64 id."""
    out = np.zeros(truth_crop.shape, np.uint64)
    n = 0
    for t in np.unique(truth_crop[truth_crop != 0]):
        lab, k = ndimage.label(truth_crop == t)
        out[lab > 0] = lab[lab > 0].astype(np.uint64) + np.uint64(n)
        n += k
    ids = rng.choice(np.uint64(2) ** np.uint64(62), size=n, replace=False).astype(np.uint64) + np.uint64(1)
    table = np.concatenate([[np.uint64(0)], ids])
    return table[out.astype(np.int64)]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True iff a and b are equal up to a one-to-one relabelling (0 <-> 0 included)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
    return np.unique(pairs[:, 0]).size == pairs.shape[0] == np.unique(pairs[:, 1]).size and np.array_equal(
        (a == 0), (b == 0)
    )


@pytest.fixture(scope="module")
def truth():
    return voronoi_volume()


def segment_all(store, subs, truth, seed=0):
    rng = np.random.default_rng(seed)
    for sub in subs:
        store.save(sub, independent_segmenter(truth[sub.box.slices], rng))


def test_grid_geometry():
    subs = subvolume_grid(SHAPE, CORE, OVERLAP)
    assert len(subs) == 8
    cover = np.zeros(SHAPE, np.int32)
    for s in subs:
        cover[s.core.slices] += 1
    assert (cover == 1).all()  # cores tile the volume exactly once
    a = next(s for s in subs if s.subvolume_id == "z0_y0_x0")
    b = next(s for s in subs if s.subvolume_id == "z0_y0_x1")
    assert a.box.end_zyx[2] - b.box.begin_zyx[2] == OVERLAP[2]
    assert a.core.end_zyx[2] - b.box.begin_zyx[2] == OVERLAP[2] // 2  # split at the middle
    assert len(overlapping_pairs(subs)) == 28  # faces, edges and corners: all 8 choose 2


def test_reconcile_recovers_partition(tmp_path, truth):
    assert truth.max() > 60 and (truth == 0).any()
    subs = subvolume_grid(SHAPE, CORE, OVERLAP)
    store = NpzSubvolumeStore(tmp_path / "subvolumes")
    segment_all(store, subs, truth)
    out = np.zeros(SHAPE, np.uint64)
    summary = reconcile(store, subs, out)
    assert summary["merges"] > 0
    # background stays 0, and nothing else is 0
    assert np.array_equal(out == 0, truth == 0)
    assert same_partition(out, truth)
    err, _, _ = adapted_rand(Contingency.from_labels(truth, out).without_truth(0))
    assert err == 0.0
    # ids compacted 1..K
    assert np.array_equal(np.unique(out[out != 0]), np.arange(1, int(truth.max()) + 1))
    # no object split at a subvolume border: across every core face, same truth -> same output
    for axis, cut in ((0, 12), (1, 48), (2, 48)):
        lo = np.take(truth, cut - 1, axis=axis), np.take(out, cut - 1, axis=axis)
        hi = np.take(truth, cut, axis=axis), np.take(out, cut, axis=axis)
        same = (lo[0] == hi[0]) & (lo[0] != 0)
        assert same.sum() > 100
        assert np.array_equal(lo[1][same], hi[1][same])


def test_without_reconciliation_objects_are_split(tmp_path, truth):
    """Control: with matching disabled (threshold above any overlap) the borders do split objects."""
    subs = subvolume_grid(SHAPE, CORE, OVERLAP)
    store = NpzSubvolumeStore(tmp_path / "subvolumes")
    segment_all(store, subs, truth)
    out = np.zeros(SHAPE, np.uint64)
    reconcile(store, subs, out, MatchRule(min_overlap_voxels=10**9))
    assert not same_partition(out, truth)
    err, _, _ = adapted_rand(Contingency.from_labels(truth, out).without_truth(0))
    assert err > 0.05


def test_processing_order_does_not_matter(tmp_path, truth):
    subs = subvolume_grid(SHAPE, CORE, OVERLAP)
    store = NpzSubvolumeStore(tmp_path / "subvolumes")
    segment_all(store, subs, truth, seed=3)
    ref = np.zeros(SHAPE, np.uint64)
    reconcile(store, subs, ref)

    rng = np.random.default_rng(11)
    shuffled = [subs[i] for i in rng.permutation(len(subs))]
    out = np.zeros(SHAPE, np.uint64)
    reconcile(store, shuffled, out)
    assert np.array_equal(out, ref)

    # step by step: pairs in random order, edges applied in random order, cores written in random order
    offsets, n = global_id_offsets(store, shuffled)
    pairs = overlapping_pairs(shuffled)
    edges = [pair_edges(store, *pairs[i], offsets) for i in rng.permutation(len(pairs))]
    edges = np.concatenate(edges)[rng.permutation(sum(e.shape[0] for e in edges))]
    edges = edges[:, ::-1]  # direction of the pair does not matter either
    roots = join_edges(n, [edges])
    tables = relabel_tables(store, shuffled, offsets, roots)
    out2 = np.zeros(SHAPE, np.uint64)
    for i in rng.permutation(len(shuffled)):
        s = shuffled[i]
        out2[s.core.slices] = reconciled_core(store, s, tables[s.subvolume_id])
    assert np.array_equal(out2, ref)


def test_union_find_roots_are_order_independent():
    rng = np.random.default_rng(5)
    pairs = rng.integers(0, 200, size=(150, 2))
    ref = None
    for _ in range(4):
        uf = UnionFind(199)
        uf.union_pairs(pairs[rng.permutation(len(pairs))])
        roots = uf.roots()
        assert all(uf.find(i) == roots[i] for i in range(200))
        # the root of a component is its smallest member
        for r in np.unique(roots):
            assert r == np.flatnonzero(roots == r).min()
        ref = roots if ref is None else ref
        assert np.array_equal(roots, ref)


def _two_subvolumes(shape=(8, 32, 64), overlap=16):
    subs = subvolume_grid(shape, (shape[0], shape[1], shape[2] // 2), (0, 0, overlap))
    assert [s.subvolume_id for s in subs] == ["z0_y0_x0", "z0_y0_x1"]
    return subs  # A: x [0, 40), core [0, 32); B: x [24, 64), core [32, 64); overlap x [24, 40)


def test_conflict_one_object_two_pieces_all_merge(tmp_path):
    """A U-shaped neuron: its two arms are separate pieces inside A (the bend lies outside A's
    box) but one object in B. Documented rule: every substantial pair merges, so both of A's
    pieces join B's object and the U comes out as one object, as in a single-subvolume run."""
    shape = (8, 32, 64)
    truth = np.zeros(shape, np.uint64)
    truth[:, 4:10, 10:56] = 1  # arm 1
    truth[:, 20:26, 10:56] = 1  # arm 2
    truth[:, 4:26, 46:56] = 1  # the bend, at x >= 46: outside A's box [0, 40)
    truth[:, 12:18, 2:44] = 2  # another neuron between the arms
    a, b = _two_subvolumes()
    la, lb = truth[a.box.slices].copy(), truth[b.box.slices].copy()
    la[:, 20:26, :] = np.where(la[:, 20:26, :] == 1, 7, la[:, 20:26, :])  # A: arm 2 has its own id
    la = np.where(la == 2, 99, la)  # A: other ids for the rest
    assert ndimage.label(la == 1)[1] == 1 and ndimage.label(lb == 1)[1] == 1
    store = NpzSubvolumeStore(tmp_path)
    store.save(a, la)
    store.save(b, lb)
    # the overlap really is a conflict: one id of B overlaps two ids of A substantially
    offsets, _ = global_id_offsets(store, [a, b])
    edges = pair_edges(store, a, b, offsets)
    assert edges.shape[0] == 3 and np.unique(edges[:, 1]).size == 2
    out = np.zeros(shape, np.uint64)
    reconcile(store, [a, b], out)
    assert same_partition(out, truth)


def test_conflict_partial_overlaps_follow_the_threshold(tmp_path):
    """A's border between two objects is shifted against B's: object p of A takes a sliver of
    B's object q. The sliver (>= min_overlap_voxels but < half of the smaller) does not merge
    p with q; each still merges with its true partner. A small piece (< min_overlap_voxels)
    wholly inside an object does not merge either."""
    shape = (8, 32, 64)
    a, b = _two_subvolumes(shape)
    glob_a = np.zeros(shape, np.uint64)
    glob_b = np.zeros(shape, np.uint64)
    glob_a[:, :16, :] = 1
    glob_a[:, 16:, :] = 2
    glob_b[:, :14, :] = 1  # B puts the border 2 rows higher, so A's object 1 covers
    glob_b[:, 14:, :] = 2  # rows 14, 15 of B's object 2 (8*2*16 = 256 voxels in R)
    glob_b[2:3, 28:31, 30:33] = 3  # a 9-voxel piece inside object 2 (crosses B's core at x = 32)
    la, lb = glob_a[a.box.slices], glob_b[b.box.slices]
    store = NpzSubvolumeStore(tmp_path)
    store.save(a, la * 10)  # A's ids: 10, 20
    store.save(b, lb * 1000 + 5)  # B's ids: 1005, 2005, 3005
    offsets, _ = global_id_offsets(store, [a, b])
    edges = pair_edges(store, a, b, offsets)
    # global ids: A 1 -> 1, A 2 -> 2; B 1 -> 3, B 2 -> 4, B 3 -> 5
    assert edges.tolist() == [[1, 3], [2, 4]]
    out = np.zeros(shape, np.uint64)
    reconcile(store, [a, b], out)
    core_a, core_b = out[:, :, :32], out[:, :, 32:]
    assert np.unique(core_a).tolist() == [1, 2] and set(np.unique(core_b).tolist()) == {1, 2, 3}
    assert core_a[0, 0, 0] == core_b[0, 0, 0] and core_a[0, 31, 0] == core_b[0, 31, 0]
    assert core_b[2, 29, 0] == 3  # the small piece keeps its own id in B's core
    # with a small min_overlap_voxels the 9-voxel piece passes the threshold; it lies inside
    # A's object 2 where both subvolumes see it: a conflict inside one connected piece, so the
    # default ("context") keeps only object 2's best partner, while "all" merges the piece too
    small = MatchRule(min_overlap_voxels=4)
    assert [2, 5] not in pair_edges(store, a, b, offsets, small).tolist()
    assert [2, 5] in pair_edges(store, a, b, offsets, MatchRule(min_overlap_voxels=4, conflict="all")).tolist()
    # likewise a low fraction lets the 256-voxel sliver pass; "all" then joins everything into one
    # object, "context" and "mutual" keep the two objects apart
    loose = dict(min_fraction=0.05)
    assert pair_edges(store, a, b, offsets, MatchRule(**loose)).tolist() == [[1, 3], [2, 4]]
    assert pair_edges(store, a, b, offsets, MatchRule(**loose, conflict="mutual")).tolist() == [[1, 3], [2, 4]]
    assert [1, 4] in pair_edges(store, a, b, offsets, MatchRule(**loose, conflict="all")).tolist()


def test_conflict_merge_seen_inside_the_overlap_is_not_propagated(tmp_path):
    """B merges two neurons through a bridge that lies inside the overlap, where A saw the
    same voxels and kept them apart. Documented rule ("context"): the two A objects lie in
    one connected piece of B's object inside the overlap, so only the better partner merges;
    B's merger is not spread into A's core. With conflict="all" it would be."""
    shape = (8, 32, 64)
    a, b = _two_subvolumes(shape)
    truth = np.zeros(shape, np.uint64)
    truth[:, 1:14, :] = 1  # 13 rows: more voxels in the overlap than object 2
    truth[:, 18:30, :] = 2
    seg_b = truth.copy()
    seg_b[:, 14:18, 28:36] = 1  # B's bridge at x 28..35: inside the overlap x [24, 40)
    seg_b[seg_b == 2] = 1  # so B has a single object
    store = NpzSubvolumeStore(tmp_path)
    store.save(a, truth[a.box.slices] * 3)
    store.save(b, seg_b[b.box.slices] * 5)
    out = np.zeros(shape, np.uint64)
    reconcile(store, [a, b], out)
    core_a = out[:, :, :32]
    assert core_a[0, 5, 0] != core_a[0, 20, 0]  # A's two objects stay apart in A's core
    assert np.unique(out[:, :, 32:][seg_b[:, :, 32:] != 0]).size == 1  # B's core: B's own (merged) object
    assert core_a[0, 5, 0] == out[0, 5, 63]  # joined with the larger overlap (object 1 has more)
    merged = np.zeros(shape, np.uint64)
    reconcile(store, [a, b], merged, MatchRule(conflict="all"))
    assert merged[0, 5, 0] == merged[0, 20, 0]


def test_match_overlap_rule_directly():
    a = np.array([1] * 100 + [2] * 100 + [0] * 10, np.uint64)
    b = np.array([5] * 60 + [6] * 40 + [6] * 100 + [5] * 10, np.uint64)
    # (1,5): 60 >= 0.5*min(100, 60)=30 -> merge; (1,6): 40 < 0.5*min(100,140)=50 -> no; (2,6): 100 -> merge
    assert match_overlap(a, b, MatchRule(min_overlap_voxels=10)).tolist() == [[1, 5], [2, 6]]
    assert match_overlap(a, b, MatchRule(min_overlap_voxels=70)).tolist() == [[2, 6]]
    assert match_overlap(np.zeros(5, np.uint64), b[:5]).shape == (0, 2)


def test_store_checks(tmp_path):
    sub = Subvolume("s", Box((0, 0, 0), (2, 3, 4)), Box((0, 1, 1), (2, 2, 3)))
    store = NpzSubvolumeStore(tmp_path)
    with pytest.raises(ValueError):
        store.save(sub, np.zeros((2, 3, 5), np.uint64))
    labels = np.arange(24, dtype=np.uint64).reshape(2, 3, 4) * np.uint64(2**40)
    store.save(sub, labels)
    assert np.array_equal(store.load(sub), labels)
    assert np.array_equal(store.ids(sub), np.unique(labels)[1:])
    assert np.array_equal(store.core_ids(sub), np.unique(labels[:, 1:2, 1:3]))
    other = Subvolume("s", Box((1, 0, 0), (3, 3, 4)), Box((1, 0, 0), (3, 3, 4)))
    with pytest.raises(ValueError):
        store.load(other)  # stored box differs
    with pytest.raises(ValueError):
        Subvolume("t", Box((0, 0, 0), (2, 2, 2)), Box((0, 0, 0), (3, 2, 2)))
