"""Tests of ``connectome evaluate``: every metric against known answers on tiny hand-built
volumes and tables, the segmentation scores against scikit-image, one end-to-end run on a
hand-built workspace + truth folder, and the command line's bad-input paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from connectome.errors import UserInputError
from connectome.evaluate import (
    Contingency,
    EvaluateConfig,
    adapted_rand,
    connectivity_metrics,
    contingency_from_arrays,
    evaluate_workspace,
    format_table,
    mask_overlap,
    match_points,
    neighbour_ncc,
    residuals,
    segment_to_truth_map,
    segmentation_metrics,
    split_merge_counts,
    synapse_metrics,
    tile_position_errors,
    voi,
)
from connectome.evaluate.tables import CONNECTIVITY, SYNAPSES, TILES, read_table

VOXEL = (40.0, 4.0, 4.0)


# --------------------------------------------------------------------------------- helpers


def seg_scores(truth, seg, vessels=None, block=(2, 5, 5), **kw):
    table = contingency_from_arrays(truth, seg, vessels, block_shape_zyx=block)
    return segmentation_metrics(table, **kw)


def three_objects(shape=(4, 12, 12)):
    """Truth: objects 1, 2, 3 as vertical slabs along x; a background strip of 0 at x >= 9."""
    t = np.zeros(shape, np.uint64)
    t[:, :, 0:3] = 1
    t[:, :, 3:6] = 2
    t[:, :, 6:9] = 3
    return t


def texture(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.normal(size=shape), sigma=(0, 2, 2))
    img = (img - img.mean()) / img.std() * 40 + 128
    return img.clip(0, 255).astype(np.uint8)


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def make_truth(root, arrays, voxel=VOXEL):
    import zarr

    root.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(root / "truth.zarr"), mode="w", zarr_format=3)
    for name, data in arrays.items():
        arr = group.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=data.shape, attributes={"voxel_size_nm": list(voxel)}
        )
        arr[...] = data
    (root / "truth").mkdir(exist_ok=True)
    return root


def make_workspace(root, arrays, voxel=VOXEL):
    from connectome.workspace import Workspace

    shape = next(iter(arrays.values())).shape
    ws = Workspace.create(root, shape, voxel)
    for name, data in arrays.items():
        ws.require_array(name, data.dtype, data.shape)[...] = data
    return ws


# --------------------------------------------------------------------------------- segmentation


def test_identical_segmentation_scores_zero():
    t = three_objects()
    s = seg_scores(t, t.copy())
    assert s["voi_split"] == 0 and s["voi_merge"] == 0
    assert s["arand_error"] == 0 and s["arand_precision"] == 1 and s["arand_recall"] == 1
    assert s["n_split_truth_objects"] == 0 and s["n_merger_segments"] == 0
    assert s["evaluated_voxels"] == int((t != 0).sum())


def test_relabelled_copy_scores_zero():
    t = three_objects()
    relabel = {0: 0, 1: 2**63 + 5, 2: 7, 3: 1}  # a different background label too: it is ignored
    s = np.vectorize(lambda v: relabel[int(v)], otypes=[np.uint64])(t)
    s[t == 0] = 99
    scores = seg_scores(t, s)
    assert scores["voi_split"] == pytest.approx(0, abs=1e-12)
    assert scores["voi_merge"] == pytest.approx(0, abs=1e-12)
    assert scores["arand_error"] == pytest.approx(0, abs=1e-12)


def test_merge_raises_merge_not_split():
    t = three_objects()
    s = t.copy()
    s[s == 2] = 1  # objects 1 and 2 merged
    scores = seg_scores(t, s, min_voxels=1)
    assert scores["voi_split"] == pytest.approx(0, abs=1e-12)
    # two equal objects of three merged: H(truth|seg) = 2/3 * 1 bit
    assert scores["voi_merge"] == pytest.approx(2 / 3)
    assert scores["arand_error"] > 0
    assert scores["arand_recall"] == pytest.approx(1)  # every truth pair is still joined
    assert scores["arand_precision"] < 1  # seg joins pairs truth does not
    assert scores["n_merger_segments"] == 1 and scores["n_split_truth_objects"] == 0


def test_split_raises_split_not_merge():
    t = three_objects()
    s = t.copy()
    s[:, :6, 0:3] = 10  # object 1 split in two halves
    scores = seg_scores(t, s, min_voxels=1)
    assert scores["voi_merge"] == pytest.approx(0, abs=1e-12)
    assert scores["voi_split"] == pytest.approx(1 / 3)  # one of three equal objects split in halves
    assert scores["arand_precision"] == pytest.approx(1)
    assert scores["arand_recall"] < 1
    assert scores["n_split_truth_objects"] == 1 and scores["n_merger_segments"] == 0


@pytest.mark.parametrize("seed", range(5))
def test_segmentation_matches_skimage(seed):
    from skimage.metrics import adapted_rand_error, variation_of_information

    rng = np.random.default_rng(seed)
    t = rng.integers(0, 7, size=(5, 9, 13)).astype(np.uint64)
    noise = rng.integers(0, 5, size=(5, 9, 13)).astype(np.uint64)
    s = np.where(rng.random(t.shape) < 0.6, t * np.uint64(3), noise)  # partly agreeing, partly random
    table = contingency_from_arrays(t, s, block_shape_zyx=(2, 4, 5)).without_truth(0)
    split, merge = voi(table)
    ref_split, ref_merge = variation_of_information(t, s, ignore_labels=[0])
    assert split == pytest.approx(ref_split, rel=1e-10)
    assert merge == pytest.approx(ref_merge, rel=1e-10)
    err, precision, recall = adapted_rand(table)
    ref_err, ref_first, ref_second = adapted_rand_error(t, s)
    assert err == pytest.approx(ref_err, rel=1e-10)
    # scikit-image divides by the truth pair count for what it calls precision (issue #6485)
    assert recall == pytest.approx(ref_first, rel=1e-10)
    assert precision == pytest.approx(ref_second, rel=1e-10)


def test_streamed_table_equals_whole_volume_table():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 4, size=(6, 10, 10)).astype(np.uint64) * np.uint64(2**40)
    s = rng.integers(0, 6, size=(6, 10, 10)).astype(np.uint64)
    a = contingency_from_arrays(t, s, block_shape_zyx=(1, 3, 7))
    b = Contingency.from_labels(t, s)
    for x, y in zip((a.truth_ids, a.seg_ids, a.counts), (b.truth_ids, b.seg_ids, b.counts)):
        np.testing.assert_array_equal(x, y)
    assert a.total == t.size


def test_truth_vessels_are_ignored():
    t = three_objects()
    vessels = np.zeros(t.shape, np.uint8)
    vessels[:, 8:, :] = 1  # inside the neurons, too
    s = t.copy()
    s[vessels == 1] = 77  # garbage where the truth has vessels
    scores = seg_scores(t, s, vessels)
    assert scores["voi_split"] == pytest.approx(0, abs=1e-12)
    assert scores["voi_merge"] == pytest.approx(0, abs=1e-12)
    assert scores["evaluated_voxels"] == int(((t != 0) & (vessels == 0)).sum())


def test_split_merge_counts_ignore_small_overlaps():
    t = np.zeros((10, 10, 30), np.uint64)
    t[..., :10], t[..., 10:20], t[..., 20:] = 1, 2, 3  # 1000 voxels each
    s = t.copy()
    s[:5, :, :10] = 11  # object 1 split into two halves of 500
    s[:, :, 10:30] = 5  # objects 2 and 3 merged
    s[0, 0, 0:2] = 5  # 2 voxels of object 1 bleed into segment 5: not significant
    table = contingency_from_arrays(t, s).without_truth(0)
    counts = split_merge_counts(table, min_fraction=0.05, min_voxels=10)
    assert counts == {"n_truth_objects": 3, "n_segments": 3, "n_split_truth_objects": 1, "n_merger_segments": 1}
    # with a 1-voxel threshold, the 2-voxel bleed (100% of nothing, 0.2% of object 1) still does
    # not count: it is under 5% of both the object and the segment
    assert split_merge_counts(table, min_fraction=0.05, min_voxels=1)["n_merger_segments"] == 1
    # a small fragment wholly inside object 1 counts as a split once it passes min_voxels
    s2 = t.copy()
    s2[0, 0, :3] = 12  # 3 voxels = 0.3% of object 1 but 100% of segment 12
    table2 = contingency_from_arrays(t, s2).without_truth(0)
    assert split_merge_counts(table2, min_voxels=3)["n_split_truth_objects"] == 1
    assert split_merge_counts(table2, min_voxels=4)["n_split_truth_objects"] == 0


def test_segment_to_truth_map_by_max_overlap():
    t = np.array([[[0, 0, 0, 1, 1, 2, 2, 2]]], np.uint64)
    s = np.array([[[5, 5, 5, 5, 6, 6, 6, 0]]], np.uint64)
    mapping = segment_to_truth_map(contingency_from_arrays(t, s))
    assert mapping == {5: 0, 6: 2, 0: 0}  # 5 lies mostly outside neurons


# --------------------------------------------------------------------------------- stitching


def tiles(section, positions):
    cols = {k: [] for k in TILES}
    for (row, col), (x, y) in positions.items():
        for k, v in zip(TILES, (section, row, col, x, y)):
            cols[k].append(v)
    return {k: np.asarray(v, dtype=np.float64 if k in "xy" else np.int64) for k, v in cols.items()}


def concat(*tables):
    return {k: np.concatenate([t[k] for t in tables]) for k in TILES}


def test_shifted_tile_gives_exactly_that_error():
    true0 = {(r, c): (c * 900.0, r * 900.0) for r in range(3) for c in range(3)}
    est0 = {k: (x + 1000.0, y - 250.0) for k, (x, y) in true0.items()}  # a global translation only
    est0[(1, 2)] = (est0[(1, 2)][0] + 3.0, est0[(1, 2)][1] + 4.0)  # one tile off by (3, 4)
    true1 = {(r, c): (c * 900.0, r * 900.0) for r in range(2) for c in range(2)}
    est1 = {k: (x - 7.5, y + 2.0) for k, (x, y) in true1.items()}
    del est1[(1, 1)]
    result = tile_position_errors(concat(tiles(0, est0), tiles(1, est1)), concat(tiles(0, true0), tiles(1, true1)))
    assert result["status"] == "ok"
    assert result["n_tiles"] == 9 + 3 and result["n_missing_tiles"] == 1 and result["n_sections"] == 2
    assert result["error_max_px"] == pytest.approx(5.0)
    assert result["error_median_px"] == pytest.approx(0.0)
    assert result["worst_tile"] == {"section": 0, "row": 1, "col": 2}


# --------------------------------------------------------------------------------- alignment


def test_shifted_section_gives_that_residual():
    big = texture((3, 200, 200), seed=1)
    truth = big[:, 20:148, 20:148].copy()
    ws = truth.copy()
    ws[1] = big[1, 20 - 3 : 148 - 3, 20 + 2 : 148 + 2]  # ws(y, x) = truth(y - 3, x + 2): shift (3, -2)
    r = residuals(ws, truth, patch_px=64, block_shape_zyx=(2, 64, 128))
    assert r["n_patches"] == 12 and r["n_patches_used"] == 12
    assert r["residual_max_px"] == pytest.approx(math.hypot(3, 2))
    assert r["residual_median_px"] == 0
    assert r["worst_section"] == 1 and r["worst_section_median_px"] == pytest.approx(math.hypot(3, 2))
    flat = residuals(np.full_like(ws, 7), truth, patch_px=64)
    assert flat["n_patches_used"] == 0 and math.isnan(flat["residual_max_px"])


def test_neighbour_ncc_equals_pearson():
    vol = texture((4, 30, 40), seed=2)
    vol[2] = vol[1] // 2 + 10  # a linearly related pair: NCC 1 (up to rounding)
    expected = [np.corrcoef(vol[z].ravel().astype(float), vol[z + 1].ravel().astype(float))[0, 1] for z in range(3)]
    got = neighbour_ncc(vol, block_shape_zyx=(2, 7, 11))
    assert got["n_pairs"] == 3
    assert got["mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert got["min"] == pytest.approx(min(expected), abs=1e-12)


# --------------------------------------------------------------------------------- vessels


def test_vessel_iou_and_dice_known_answers():
    truth = np.zeros((2, 10, 10), np.uint8)
    pred = np.zeros_like(truth)
    truth[:, :, :4] = 1  # 80 voxels
    pred[:, :, 2:6] = 1  # 80 voxels, 40 in common
    r = mask_overlap(pred, truth, block_shape_zyx=(1, 3, 3))
    assert r["iou"] == pytest.approx(40 / 120)
    assert r["dice"] == pytest.approx(2 * 40 / 160)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(0.5)
    empty = mask_overlap(np.zeros_like(truth), np.zeros_like(truth))
    assert empty["iou"] == 1 and empty["dice"] == 1 and math.isnan(empty["precision"])


# --------------------------------------------------------------------------------- synapses


def syn_table(rows):
    """rows of (z, y, x, pre, post)."""
    cols = {k: [] for k in SYNAPSES}
    for row in rows:
        for k, v in zip(SYNAPSES, row):
            cols[k].append(v)
    return {k: np.asarray(v, dtype=np.uint64 if k.endswith("segment_id") else np.float64) for k, v in cols.items()}


def test_synapse_matching_known_answers():
    truth = syn_table([(5, 100, 100, 1, 2), (5, 500, 500, 3, 4)])
    pred = syn_table(
        [
            (6, 100, 150, 11, 12),  # 40 nm in z, 200 nm in x: 204 nm -> match
            (5, 500, 602, 13, 14),  # 408 nm away -> too far
            (20, 900, 900, 15, 16),  # nowhere near: false positive
        ]
    )
    r = synapse_metrics(pred, truth, VOXEL, 400.0, seg_to_truth={11: 1, 12: 2, 13: 3, 14: 4})
    assert (r["n_predicted"], r["n_true"], r["n_matched"]) == (3, 2, 1)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(2 * 1 / 5)
    assert r["mean_match_distance_nm"] == pytest.approx(math.hypot(40, 200))
    assert r["partner_accuracy"] == 1.0 and r["n_partners_correct"] == 1
    # at 410 nm the second one matches too, but its partners are wrong (13 -> 3, 14 -> 9)
    r2 = synapse_metrics(pred, truth, VOXEL, 410.0, seg_to_truth={11: 1, 12: 2, 13: 3, 14: 9})
    assert r2["n_matched"] == 2 and r2["partner_accuracy"] == 0.5
    # without a segmentation, no partner accuracy
    assert math.isnan(synapse_metrics(pred, truth, VOXEL)["partner_accuracy"])


def test_hungarian_beats_greedy():
    # p0 is nearest to t0, but p1 can only reach t0: the optimal matching pairs p0-t1, p1-t0
    true_nm = np.array([[0, 0, 0], [0, 0, 300]], float)
    pred_nm = np.array([[0, 0, 100], [0, 0, -250]], float)
    mp, mt, md = match_points(pred_nm, true_nm, 300.0)
    assert sorted(zip(mp.tolist(), mt.tolist())) == [(0, 1), (1, 0)]
    assert sorted(md.tolist()) == [200.0, 250.0]
    assert match_points(np.zeros((0, 3)), true_nm, 300.0)[0].size == 0


def test_no_predicted_synapses():
    truth = syn_table([(5, 100, 100, 1, 2)])
    r = synapse_metrics(syn_table([]), truth, VOXEL)
    assert r["n_matched"] == 0 and r["recall"] == 0 and r["f1"] == 0 and math.isnan(r["precision"])


# --------------------------------------------------------------------------------- connectivity


def conn_table(rows):
    cols = {k: [] for k in CONNECTIVITY}
    for row in rows:
        for k, v in zip(CONNECTIVITY, row):
            cols[k].append(v)
    return {k: np.asarray(v, dtype=np.int64 if k == "synapse_count" else np.uint64) for k, v in cols.items()}


def test_connectivity_known_answers():
    truth = conn_table([(1, 2, 3), (2, 3, 1), (3, 1, 2), (1, 3, 5)])
    pred = conn_table(
        [
            (11, 12, 2),  # -> (1, 2) count 2
            (13, 12, 1),  # -> (1, 2) too (13 is another fragment of 1): merged into count 3
            (12, 14, 1),  # -> (2, 3) count 1
            (11, 15, 4),  # -> (1, 4): wrong edge
            (12, 16, 1),  # -> (2, 2): an autapse after mapping, a false positive
        ]
    )
    mapping = {11: 1, 13: 1, 12: 2, 14: 3, 15: 4, 16: 2}
    r = connectivity_metrics(pred, truth, mapping, (1, 2))
    e1, e2, w = r["edges_min1"], r["edges_min2"], r["weighted"]
    assert (e1["n_predicted"], e1["n_true"], e1["n_correct"]) == (4, 4, 2)
    assert e1["precision"] == pytest.approx(0.5) and e1["recall"] == pytest.approx(0.5)
    assert (e2["n_predicted"], e2["n_true"], e2["n_correct"]) == (2, 3, 1)
    assert e2["precision"] == pytest.approx(0.5) and e2["recall"] == pytest.approx(1 / 3)
    assert e2["f1"] == pytest.approx(2 * 1 / 5)
    # synapse-weighted: min(3,3) + min(1,1) = 4 of 9 predicted and 11 true
    assert (w["n_correct"], w["n_predicted_synapses"], w["n_true_synapses"]) == (4, 9, 11)
    assert w["precision"] == pytest.approx(4 / 9) and w["recall"] == pytest.approx(4 / 11)


# --------------------------------------------------------------------------------- tables


def test_malformed_table_names_file_line_and_column(tmp_path):
    p = tmp_path / "synapses.csv"
    write_csv(
        p,
        ["synapse_id", "z", "y", "x", "pre_segment_id", "post_segment_id", "score"],
        [(1, 1, 2, 3, 4, 5, 0.5), (2, 1, "oops", 3, 4, 5, 0.5)],
    )
    with pytest.raises(UserInputError, match=r"synapses.csv: line 3, column 'y'"):
        read_table(p, SYNAPSES)
    q = tmp_path / "tiles.csv"
    write_csv(q, ["section", "row", "x", "y"], [(0, 0, 0, 0)])
    with pytest.raises(UserInputError, match=r"tiles.csv: missing column\(s\) col"):
        read_table(q, TILES)


def test_config_defaults_pinned():
    cfg = EvaluateConfig()
    assert cfg.synapse_match_distance_nm == 400.0
    assert cfg.edge_min_synapses == (1, 2)
    assert (cfg.overlap_min_fraction, cfg.overlap_min_voxels) == (0.05, 100)
    assert cfg.patch_px == 128 and cfg.residual_flag_px == 4.0
    with pytest.raises(ValueError):
        EvaluateConfig(synapse_match_distance_nm=0)


# --------------------------------------------------------------------------------- end to end


@pytest.fixture
def scene(tmp_path):
    """A tiny workspace + truth folder with known answers."""
    shape = (3, 64, 64)
    raw = texture(shape, seed=5)
    neurons = np.zeros(shape, np.uint64)
    neurons[:, :, :20], neurons[:, :, 20:40], neurons[:, :, 40:] = 1, 2, 3
    vessels = np.zeros(shape, np.uint8)
    vessels[:, 50:, 40:] = 1
    neurons[vessels == 1] = 0
    truth = make_truth(
        tmp_path / "truth",
        {"raw": raw, "neurons": neurons, "vessels": vessels, "synapse_clefts": np.zeros(shape, np.uint64)},
    )
    write_csv(
        truth / "truth" / "tiles.csv", TILES, [(0, 0, 0, 0, 0), (0, 0, 1, 40, 0), (0, 1, 0, 0, 40), (0, 1, 1, 40, 40)]
    )
    write_csv(
        truth / "truth" / "synapses.csv",
        ["synapse_id", "z", "y", "x", "pre_segment_id", "post_segment_id", "score"],
        [(1, 1, 10, 19, 1, 2, 1.0), (2, 1, 30, 39, 2, 3, 1.0), (3, 2, 30, 39, 2, 3, 1.0)],
    )
    write_csv(
        truth / "truth" / "connectivity.csv",
        ["pre_segment_id", "post_segment_id", "synapse_count", "mean_score"],
        [(1, 2, 1, 1.0), (2, 3, 2, 1.0)],
    )

    seg = neurons.copy() + np.uint64(100)  # ids 101, 102, 103; vessel voxels get 100
    seg[:, :, 40:] = 103  # segment 103 also covers the vessel (ignored in the scores)
    seg[:, :32, :20] = 111  # object 1 split in two halves
    pred_vessels = np.zeros(shape, np.uint8)
    pred_vessels[:, 50:, 44:] = 1  # 20 of 24 columns: IoU 20/24
    ws_path = tmp_path / "ws"
    make_workspace(ws_path, {"raw": raw, "vessel_mask": pred_vessels, "segmentation": seg})
    write_csv(
        ws_path / "stitch" / "tiles.csv",
        TILES,
        [(0, 0, 0, 5, 5), (0, 0, 1, 45, 5), (0, 1, 0, 5, 45), (0, 1, 1, 45, 47)],
    )
    write_csv(
        ws_path / "synapses.csv",
        ["synapse_id", "z", "y", "x", "pre_segment_id", "post_segment_id", "score"],
        [(1, 1, 12, 19, 111, 102, 0.9), (2, 1, 30, 40, 102, 103, 0.8), (3, 0, 60, 60, 103, 102, 0.7)],
    )
    write_csv(
        ws_path / "connectivity.csv",
        ["pre_segment_id", "post_segment_id", "synapse_count", "mean_score"],
        [(111, 102, 1, 0.9), (102, 103, 1, 0.8), (103, 102, 1, 0.7)],
    )
    return ws_path, truth


def test_evaluate_workspace_end_to_end(scene):
    ws_path, truth = scene
    cfg = EvaluateConfig(overlap_min_voxels=10, patch_px=32, synapse_match_distance_nm=100.0)
    results = evaluate_workspace(ws_path, truth, cfg)
    on_disk = json.loads((ws_path / "evaluation.json").read_text())
    assert on_disk == results
    assert not list(ws_path.glob(".evaluation.json.*"))  # no temporary file left

    st = results["stitching"]
    assert st["n_tiles"] == 4 and st["error_max_px"] == pytest.approx(2.0)  # one tile 2 px off in y

    al = results["alignment"]
    assert al["residual_max_px"] == 0 and al["n_patches_used"] == 3 * 4
    assert al["ncc_neighbour_mean"] == pytest.approx(al["truth_ncc_neighbour_mean"])

    ve = results["vessels"]
    assert ve["iou"] == pytest.approx(20 / 24) and ve["dice"] == pytest.approx(40 / 44)

    sg = results["segmentation"]
    assert sg["voi_merge"] == pytest.approx(0, abs=1e-12)
    n1 = n2 = 3 * 64 * 20
    n3 = 3 * (64 - 14) * 24  # object 3 minus the truth vessel
    # object 1 split in two equal halves: H(seg|truth) = p(object 1) * 1 bit
    assert sg["evaluated_voxels"] == n1 + n2 + n3
    assert sg["voi_split"] == pytest.approx(n1 / (n1 + n2 + n3), rel=1e-12)
    assert sg["n_split_truth_objects"] == 1 and sg["n_merger_segments"] == 0

    sy = results["synapses"]
    assert (sy["n_matched"], sy["n_predicted"], sy["n_true"]) == (2, 3, 3)
    assert sy["partner_accuracy"] == 1.0  # 111 -> 1, 102 -> 2, 103 -> 3

    co = results["connectivity"]
    assert co["edges_min1"]["n_correct"] == 2 and co["edges_min1"]["precision"] == pytest.approx(2 / 3)
    assert co["edges_min2"]["n_true"] == 1 and co["edges_min2"]["n_predicted"] == 0

    table = format_table(results)
    assert "VOI split H(seg|truth)" in table and "edge F1 (>= 2 synapses)" in table
    # every section is scored; only the alignment criteria (a)-(c), which need WS/align and
    # truth/sections.json (tests/test_evaluate_align.py), read "not run" here
    not_run = [line.strip() for line in table.splitlines() if "not run" in line]
    assert [line[:3] for line in not_run] == ["(a)", "(b)", "(c)"]


def test_evaluate_reports_missing_outputs_as_not_run(scene):
    ws_path, truth = scene
    for name in ("synapses.csv", "connectivity.csv", "stitch/tiles.csv"):
        (ws_path / name).unlink()
    from connectome.workspace import Workspace

    Workspace.open(ws_path).remove_array("segmentation")
    results = evaluate_workspace(ws_path, truth)
    for section in ("stitching", "segmentation", "synapses", "connectivity"):
        assert results[section]["status"] == "not run"
    assert results["vessels"]["status"] == "ok"
    table = format_table(results)
    assert "not run (no WS/synapses.csv)" in table


def test_shape_mismatch_is_user_error(tmp_path, scene):
    _, truth = scene
    ws = tmp_path / "other"
    make_workspace(ws, {"segmentation": np.zeros((3, 64, 60), np.uint64)})
    with pytest.raises(UserInputError, match=r"'segmentation'.*'neurons'"):
        evaluate_workspace(ws, truth)
    assert not (ws / "evaluation.json").exists()


def test_workspace_with_tables_only(tmp_path, scene):
    _, truth = scene
    ws = tmp_path / "tables-only"
    write_csv(
        ws / "stitch" / "tiles.csv", TILES, [(0, 0, 0, 1, 1), (0, 0, 1, 41, 1), (0, 1, 0, 1, 41), (0, 1, 1, 41, 41)]
    )
    results = evaluate_workspace(ws, truth)
    assert results["stitching"]["error_max_px"] == 0
    assert results["alignment"]["status"] == "not run" and results["segmentation"]["status"] == "not run"
    assert json.loads((ws / "evaluation.json").read_text())["stitching"]["n_tiles"] == 4


# --------------------------------------------------------------------------------- CLI


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_missing_workspace(tmp_path, capsys, scene):
    from connectome.cli import main

    _, truth = scene
    missing = tmp_path / "nope"
    assert main(["evaluate", "--workspace", str(missing), "--truth", str(truth)]) == 2
    assert str(missing) in one_line_error(capsys)


def test_cli_missing_truth(tmp_path, capsys, scene):
    from connectome.cli import main

    ws, _ = scene
    missing = tmp_path / "no-truth"
    assert main(["evaluate", "--workspace", str(ws), "--truth", str(missing)]) == 2
    assert str(missing) in one_line_error(capsys)


def test_cli_truth_without_truth_zarr(tmp_path, capsys, scene):
    from connectome.cli import main

    ws, _ = scene
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--workspace", str(ws), "--truth", str(empty)]) == 2
    assert "no truth.zarr" in one_line_error(capsys)


def test_cli_shape_mismatch(tmp_path, capsys, scene):
    from connectome.cli import main

    _, truth = scene
    ws = tmp_path / "other"
    make_workspace(ws, {"raw": np.zeros((3, 60, 64), np.uint8)})
    assert main(["evaluate", "--workspace", str(ws), "--truth", str(truth)]) == 2
    line = one_line_error(capsys)
    assert "'raw'" in line and "shape" in line


def test_cli_prints_table(capsys, scene):
    from connectome.cli import main

    ws, truth = scene
    assert main(["evaluate", "--workspace", str(ws), "--truth", str(truth), "-q"]) == 0
    out = capsys.readouterr().out
    assert "adapted Rand error" in out and "tile position error max (px)" in out


def test_cli_folder_that_is_not_a_workspace(tmp_path, capsys, scene):
    from connectome.cli import main

    _, truth = scene
    empty = tmp_path / "empty-ws"
    empty.mkdir()
    assert main(["evaluate", "--workspace", str(empty), "--truth", str(truth)]) == 2
    line = one_line_error(capsys)
    assert str(empty) in line and "nothing to evaluate" in line


def test_rand_pair_sums_pool_over_regions_with_their_own_ids():
    """Sums of two regions whose ids differ add up to the sums of both together (what the FFN
    trainer's validation pools across volumes and ranks), and the error matches adapted_rand."""
    from connectome.evaluate.segmentation import Contingency, adapted_rand, adapted_rand_from_sums, rand_pair_sums

    rng = np.random.default_rng(0)
    t1, s1 = rng.integers(1, 4, (4, 9, 9)), rng.integers(1, 6, (4, 9, 9))
    t2, s2 = rng.integers(11, 15, (4, 9, 9)), rng.integers(21, 23, (4, 9, 9))
    a = rand_pair_sums(Contingency.from_labels(t1, s1))
    b = rand_pair_sums(Contingency.from_labels(t2, s2))
    both = Contingency.from_labels(np.concatenate([t1, t2]), np.concatenate([s1, s2]))
    pooled = {k: a[k] + b[k] for k in a}
    assert pooled == pytest.approx(rand_pair_sums(both))
    assert adapted_rand_from_sums(pooled) == pytest.approx(adapted_rand(both))
