"""Cleft detection and partner assignment (connectome.synapses): known answers on hand-built
arrays, and recovery of the synthetic generator's true synapses (F1, partners), the same result
for any block layout, resumption, and the graph built from the detected table."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
from scipy import ndimage as ndi

from connectome.config import BlockwiseConfig, load_config
from connectome.errors import UserInputError
from connectome.evaluate import match_points
from connectome.synapses.detect import (
    DetectConfig,
    cross_pairs,
    detect_synapses,
    label_fragments,
    plan_join,
    plan_label,
    plan_partners,
)
from connectome.synapses.partners import assign_partners, choose_partners, merge_evidence, shell_evidence
from connectome.workspace import Workspace

VOXEL = (40.0, 8.0, 8.0)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_workspace(path, arrays, chunks=(8, 64, 64)):
    shape = next(iter(arrays.values())).shape
    ws = Workspace.create(path, shape, VOXEL)
    for name, data in arrays.items():
        ws.require_array(name, data.dtype, chunks)[:] = data
    return ws


def config(block, min_size=10, **kw):
    return DetectConfig(blockwise=BlockwiseConfig(block_shape_zyx=block), min_size_voxels=min_size, **kw)


# ------------------------------------------------------------------- partner rule, by hand


def two_slabs():
    """Segment 7 at x < 4, segment 9 at x >= 5, a cleft sheet (id 1) at x == 4, in seg 9."""
    seg = np.zeros((3, 6, 10), np.uint64)
    seg[:, :, :4] = 7
    seg[:, :, 4:] = 9
    clefts = np.zeros(seg.shape, np.int64)
    clefts[:, 1:5, 4] = 1
    return seg, clefts


def test_partner_rule_follows_the_post_side_signal():
    seg, clefts = two_slabs()
    post = np.where(seg == 9, 1.0, 0.0)
    p = assign_partners(clefts, seg, post, radius_zyx=(1, 1, 1))
    assert p.cleft.tolist() == [1] and (p.pre[0], p.post[0]) == (7, 9)
    # the pre point is on segment 7's side (x = 3), the post point on segment 9's (x 4..5)
    assert p.pre_zyx[0].tolist() == pytest.approx([1.0, 2.5, 3.0])
    assert 4.0 <= p.post_zyx[0][2] <= 5.0
    flipped = assign_partners(clefts, seg, 1.0 - post, radius_zyx=(1, 1, 1))
    assert (flipped.pre[0], flipped.post[0]) == (9, 7)
    # the default shell, (0, 2, 2): x 2..6 in the cleft's own sections; pre point (18 x 3 + 12 x 2) / 30
    d = assign_partners(clefts, seg, post)
    assert (d.pre[0], d.post[0]) == (7, 9) and d.pre_zyx[0][2] == pytest.approx(2.6)


def test_shell_is_an_anisotropic_ellipsoid():
    from connectome.synapses.partners import shell_offsets, shell_radius_voxels

    assert shell_radius_voxels(16.0, (40.0, 8.0, 8.0)) == (0, 2, 2)
    assert shell_radius_voxels(16.0, (8.0, 8.0, 8.0)) == (2, 2, 2)
    assert shell_radius_voxels(8.0, (40.0, 4.0, 4.0)) == (0, 2, 2)
    off = shell_offsets((0, 2, 2))
    assert all(d[0] == 0 for d in off) and len(off) == 13 and (0, 2, 0) in off and (0, 2, 1) not in off
    assert sorted(shell_offsets((1, 1, 1))) == sorted(
        [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    )


def test_partner_rule_post_first_then_pre_among_the_others():
    """A bystander (segment 5) beside the pre side touches the shell with more voxels of low post
    signal than the true pre (7) has: the rule still picks post = argmax P; pre = argmax Q among
    the rest, so the bystander wins pre only by more Q -- and a flat signal gives post to the
    larger segment."""
    seg, clefts = two_slabs()
    flat = assign_partners(clefts, seg, np.full(seg.shape, 128, np.uint8), radius_zyx=(1, 1, 1))
    assert (flat.pre[0], flat.post[0]) == (7, 9)  # 9 has 36 shell voxels, 7 has 18
    low = assign_partners(clefts, seg, np.full(seg.shape, 10, np.uint8), radius_zyx=(1, 1, 1))
    assert (low.pre[0], low.post[0]) == (7, 9)  # post first even where Q would prefer 9
    seg2 = seg.copy()
    seg2[:, :, :3] = 5  # segment 5 takes x < 3; 7 keeps x == 3
    post = np.where(seg2 == 9, 1.0, 0.0)
    # shell (0, 2, 2) of the sheet x == 4, y 1..4: x == 3 at y 0..5 (18 voxels over 3 sections,
    # segment 7) and x == 2 at y 1..4 only (12 voxels, segment 5): Q(7) > Q(5)
    p = assign_partners(clefts, seg2, post)
    assert (p.pre[0], p.post[0]) == (7, 9)
    post[:, 0, 2] = 0.0  # no change: 5 stays below 7
    seg2[:, :, 3] = 5  # now 5 is the only neighbour on that side
    p = assign_partners(clefts, seg2, post)
    assert (p.pre[0], p.post[0]) == (5, 9)


def test_pre_side_signal_outvotes_a_bystander():
    """Without a pre-side signal the bystander 5 (24 shell voxels, all "not post") beats the true
    pre 7 (6 voxels); with one (high on 7 only) the pre is 7 and its point lies on 7's voxels."""
    seg, clefts = two_slabs()
    seg[:, :, :4] = 5
    seg[:, 2, :4] = 7  # segment 7: one row on the pre side
    post = np.where(seg == 9, 1.0, 0.0)
    without = assign_partners(clefts, seg, post)
    assert (without.pre[0], without.post[0]) == (5, 9)
    pre = np.where(seg == 7, 0.9, 0.05)
    with_pre = assign_partners(clefts, seg, post, pre=pre)
    assert (with_pre.pre[0], with_pre.post[0]) == (7, 9)
    assert with_pre.pre_zyx[0][1] == pytest.approx(2.0)
    # blockwise with the pre signal == whole
    whole = shell_evidence(clefts, seg, post, radius_zyx=(0, 2, 2), pre=pre)
    parts = []
    for ys in ((0, 3), (3, 6)):
        core = (slice(0, 3), slice(*ys), slice(0, 10))
        lo, hi = max(0, ys[0] - 2), min(6, ys[1] + 2)
        parts.append(
            shell_evidence(
                clefts[:, lo:hi],
                seg[core],
                post[core],
                (slice(0, 3), slice(ys[0] - lo, ys[1] - lo), slice(0, 10)),
                (0, ys[0], 0),
                (0, 2, 2),
                pre[core],
            )
        )
    merged = merge_evidence(parts)
    assert np.array_equal(whole.q, merged.q) and np.array_equal(whole.segment, merged.segment)


def test_partner_rule_without_a_second_segment_or_evidence():
    seg = np.full((3, 5, 5), 4, np.uint64)
    clefts = np.zeros(seg.shape, np.int64)
    clefts[1, 2, 2] = 3
    only = assign_partners(clefts, seg, np.full(seg.shape, 0.9))
    assert (only.pre[0], only.post[0]) == (0, 4) and np.isnan(only.pre_zyx[0]).all()
    pre_only = assign_partners(clefts, seg, np.zeros(seg.shape))
    assert (pre_only.pre[0], pre_only.post[0]) == (4, 0)
    nothing = assign_partners(clefts, np.zeros(seg.shape, np.uint64), np.zeros(seg.shape))
    assert (nothing.pre[0], nothing.post[0]) == (0, 0)


def test_partner_evidence_is_the_same_blockwise():
    rng = np.random.default_rng(3)
    seg = rng.integers(0, 5, size=(6, 12, 12)).astype(np.uint64)
    clefts = ndi.label(rng.random(seg.shape) > 0.85, np.ones((3, 3, 3)))[0]
    post = rng.integers(0, 256, size=seg.shape).astype(np.uint8)
    radius = (1, 2, 2)
    whole = shell_evidence(clefts, seg, post, radius_zyx=radius)
    parts = []
    for zs in ((0, 3), (3, 6)):
        for ys in ((0, 5), (5, 12)):
            core = (slice(*zs), slice(*ys), slice(0, 12))
            lo = [max(0, s.start - r) for s, r in zip(core, radius)]
            hi = [min(n, s.stop + r) for s, n, r in zip(core, seg.shape, radius)]
            region = clefts[tuple(slice(a, b) for a, b in zip(lo, hi))]
            rel = tuple(slice(s.start - a, s.stop - a) for s, a in zip(core, lo))
            parts.append(shell_evidence(region, seg[core], post[core], rel, [s.start for s in core], radius))
    merged = merge_evidence(parts)
    for k in ("cleft", "segment", "n", "q", "p", "zyx", "zyx_q", "zyx_p"):
        assert np.array_equal(getattr(whole, k), getattr(merged, k)), k
    ids = np.unique(clefts)[1:]
    a, b = choose_partners(whole, ids), choose_partners(merged, ids)
    assert np.array_equal(a.pre, b.pre) and np.array_equal(a.post, b.post)
    assert np.all((a.pre != a.post) | (a.pre == 0))


# ------------------------------------------------------------------- labelling, by hand


def test_label_fragments_threshold_and_sums():
    prob = np.zeros((4, 8, 8), np.uint8)
    prob[1, 2, 2:5] = [200, 128, 127]  # 127 < round(0.5 * 255) = 128
    prob[2, 3, 5] = 255  # touches (1, 2, 4)? no: 127 is not cleft; separate
    frag, stats = label_fragments(prob, 128, block_number=2, offset_zyx=(10, 0, 0), volume_shape_zyx=(20, 8, 8))
    assert stats["size"].tolist() == [2, 1]
    assert (stats["ids"] >> np.uint64(32)).tolist() == [2, 2]
    assert stats["sum_zyx"][0].tolist() == [22.0, 4.0, 5.0]
    assert stats["sum_prob"].tolist() == [328.0, 255.0]
    assert stats["first"][0] == (11 * 8 + 2) * 8 + 2


def test_cross_pairs_finds_diagonal_contacts_across_the_border():
    region = np.zeros((2, 4, 4), np.uint64)
    region[0, 1, 1] = 5  # in the core (z = 0)
    region[1, 2, 2] = 6  # in the halo, diagonal neighbour
    region[1, 3, 0] = 8  # in the halo, not adjacent to 5
    pairs = cross_pairs(region, (slice(0, 1), slice(0, 4), slice(0, 4)))
    assert pairs.tolist() == [[5, 6]]


def test_min_size_threshold_and_score(tmp_path):
    prob = np.zeros((4, 32, 32), np.uint8)
    prob[1:3, 4:10, 4:10] = 200  # 72 voxels, kept
    prob[1, 20, 20:23] = 255  # 3 voxels: below min size
    prob[2, 25:30, 25:30] = 100  # below threshold 0.5
    seg = np.ones(prob.shape, np.uint64)
    seg[:, :, 7:] = 2
    post = np.where(seg == 2, 255, 0).astype(np.uint8)
    make_workspace(tmp_path / "ws", {"synapse_prob": prob, "segmentation": seg, "synapse_post": post})
    s = detect_synapses(tmp_path / "ws", config((4, 16, 16), min_size=5))
    rows = read_rows(tmp_path / "ws" / "synapses.csv")
    assert s.synapses == 1 and s.dropped_small == 1 and len(rows) == 1
    r = rows[0]
    assert (r["size_voxels"], r["z"], r["y"], r["x"]) == ("72", "1.50", "6.50", "6.50")
    assert float(r["score"]) == pytest.approx(200 / 255, abs=1e-4)
    assert (r["pre_segment_id"], r["post_segment_id"]) == ("1", "2")


def test_synapses_need_two_partner_segments(tmp_path):
    """A component inside one segment (a dark organelle) or against unsegmented space connects
    no two neurons: left out of synapses.csv (ids kept, so the table's ids skip it) unless
    require_partners is off; the cleft array keeps every component."""
    prob = np.zeros((4, 32, 32), np.uint8)
    prob[1:3, 4:10, 6:8] = 200  # synapse 1: on the border of segments 1 and 2
    prob[1:3, 20:26, 20:22] = 200  # synapse 2: inside segment 2 only
    prob[1:3, 27:31, 2:4] = 200  # synapse 3: segment 1 beside unsegmented space (0)
    seg = np.ones(prob.shape, np.uint64)
    seg[:, :, 7:] = 2
    seg[:, 27:, :3] = 0
    post = np.where(seg == 2, 255, 0).astype(np.uint8)
    make_workspace(tmp_path / "ws", {"synapse_prob": prob, "segmentation": seg, "synapse_post": post})
    s = detect_synapses(tmp_path / "ws", config((4, 16, 16), min_size=5))
    rows = read_rows(tmp_path / "ws" / "synapses.csv")
    assert [(r["synapse_id"], r["pre_segment_id"], r["post_segment_id"]) for r in rows] == [("1", "1", "2")]
    assert (s.synapses, s.dropped_unpaired) == (1, 2) and "2 without two partner segments" in s.describe()
    assert set(np.unique(Workspace.open(tmp_path / "ws").array("synapse_clefts")[:]).tolist()) == {0, 1, 2, 3}
    s = detect_synapses(tmp_path / "ws", config((4, 16, 16), min_size=5, require_partners=False))
    rows = read_rows(tmp_path / "ws" / "synapses.csv")
    assert [(r["pre_segment_id"], r["post_segment_id"]) for r in rows] == [("1", "2"), ("0", "2"), ("1", "0")]
    assert (s.synapses, s.with_both_partners, s.dropped_unpaired) == (3, 1, 0)


def test_missing_post_signal_is_named(tmp_path):
    prob = np.zeros((2, 8, 8), np.uint8)
    make_workspace(tmp_path / "ws", {"synapse_prob": prob, "segmentation": prob.astype(np.uint64)})
    with pytest.raises(UserInputError, match="has no array 'synapse_post'"):
        detect_synapses(tmp_path / "ws", config((2, 8, 8)))
    assert not (tmp_path / "ws" / "synapses.csv").exists()


def test_block_jobs_pickle(tmp_path):
    """Block processors must pickle (local process pool, dask, MPI)."""
    prob = np.zeros((2, 8, 8), np.uint8)
    ws = make_workspace(tmp_path / "ws", {"synapse_prob": prob})
    for task in (
        plan_label(ws, config((2, 4, 4))),
        plan_join(ws, config((2, 4, 4))),
        plan_partners(ws, config((2, 4, 4)), "digest"),
    ):
        pickle.loads(pickle.dumps(task.process_block))


def test_config_defaults_and_yaml(tmp_path):
    cfg = DetectConfig()
    assert (cfg.threshold, cfg.threshold_u8, cfg.min_size_voxels) == (0.5, 128, 50)
    assert (cfg.prob_array, cfg.post_array, cfg.segmentation_array, cfg.output_array) == (
        "synapse_prob",
        "synapse_post",
        "segmentation",
        "synapse_clefts",
    )
    assert cfg.blockwise.block_shape_zyx == (32, 256, 256)
    (tmp_path / "c.yaml").write_text("threshold: 0.8\nmin_size_voxels: 5\n")
    assert load_config(DetectConfig, tmp_path / "c.yaml").threshold_u8 == 204
    (tmp_path / "bad.yaml").write_text("threshold: 0\n")
    with pytest.raises(UserInputError, match="threshold must be in"):
        load_config(DetectConfig, tmp_path / "bad.yaml")


# ------------------------------------------------------------------- synthetic truth


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small synthetic volume (10 synapses), a probability map made from its true clefts
    (230 on cleft voxels, 20 elsewhere) and a post-side signal made from the true partners
    (1 on the post neuron, 0 on the pre neuron near each cleft, 0.5 elsewhere)."""
    import zarr

    from connectome.synth import generate

    out = generate(
        tmp_path_factory.mktemp("synth") / "s",
        preset="small",
        seed=6,
        shape_zyx=(16, 128, 128),
        synapse_density_per_um3=20,
        workers=1,
    )
    group = zarr.open_group(str(out / "truth.zarr"), mode="r")
    clefts, neurons = group["synapse_clefts"][:], group["neurons"][:]
    truth = read_rows(out / "truth" / "synapses.csv")
    post = np.full(neurons.shape, 0.5, np.float32)
    for r in truth:
        near = ndi.binary_dilation(clefts == int(r["synapse_id"]), iterations=3)
        post[near & (neurons == int(r["post_segment_id"]))] = 1.0
        post[near & (neurons == int(r["pre_segment_id"]))] = 0.0
    prob = np.where(clefts > 0, 230, 20).astype(np.uint8)
    return {"out": out, "clefts": clefts, "neurons": neurons, "truth": truth, "post": post, "prob": prob}


def synth_workspace(path, synth):
    return make_workspace(
        path,
        {
            "synapse_prob": synth["prob"],
            "segmentation": synth["neurons"].astype(np.uint64),
            "synapse_post": synth["post"],
        },
    )


def score_against_truth(rows, truth):
    pred = np.array([[float(r[k]) for k in "zyx"] for r in rows]) * VOXEL
    true = np.array([[float(r[k]) for k in "zyx"] for r in truth]) * VOXEL
    mp, mt, _ = match_points(pred, true, 200.0)
    f1 = 2 * mp.size / (len(rows) + len(truth))
    correct = sum(
        rows[i]["pre_segment_id"] == truth[j]["pre_segment_id"]
        and rows[i]["post_segment_id"] == truth[j]["post_segment_id"]
        for i, j in zip(mp, mt)
    )
    return f1, correct / max(1, mp.size)


def test_detection_recovers_true_synapses(tmp_path, synth):
    assert len(synth["truth"]) >= 8
    synth_workspace(tmp_path / "ws", synth)
    summary = detect_synapses(tmp_path / "ws", config((16, 64, 64)))
    rows = read_rows(tmp_path / "ws" / "synapses.csv")
    assert summary.synapses == len(rows) == len(synth["truth"])
    f1, partner_accuracy = score_against_truth(rows, synth["truth"])
    assert f1 == 1.0
    assert partner_accuracy == 1.0
    assert list(rows[0]) == [
        "synapse_id",
        "z",
        "y",
        "x",
        "pre_segment_id",
        "post_segment_id",
        "score",
        "size_voxels",
        "pre_z",
        "pre_y",
        "pre_x",
        "post_z",
        "post_y",
        "post_x",
    ]


def test_clefts_cut_by_blocks_are_detected_once(tmp_path, synth):
    """Blocks of 5 x 32 x 32 cut most clefts; every true cleft must still be one synapse, and the
    table and the cleft array must equal a single-block run's, byte for byte."""
    import zarr

    block = (5, 32, 32)
    ids = [int(r["synapse_id"]) for r in synth["truth"]]
    cut = 0
    for sid in ids:
        z, y, x = np.nonzero(synth["clefts"] == sid)
        cut += len({(a // block[0], b // block[1], c // block[2]) for a, b, c in zip(z, y, x)}) > 1
    assert cut >= 3, "the test needs clefts that cross block borders"

    runs = {}
    for name, shape in (("one", (16, 128, 128)), ("cut", block)):
        synth_workspace(tmp_path / name, synth)
        detect_synapses(tmp_path / name, config(shape))
        runs[name] = (
            (tmp_path / name / "synapses.csv").read_bytes(),
            zarr.open_array(str(tmp_path / name / "volume.zarr" / "synapse_clefts"), mode="r")[:],
        )
    assert runs["one"][0] == runs["cut"][0]
    assert np.array_equal(runs["one"][1], runs["cut"][1])
    found = runs["cut"][1]
    for sid in ids:  # each true cleft (minus specks under min size) lies in exactly one detected synapse
        hit = np.unique(found[synth["clefts"] == sid])
        assert hit[hit != 0].size == 1, sid
    assert len(read_rows(tmp_path / "cut" / "synapses.csv")) == len(ids)


def test_rerun_resumes_and_changes_nothing(tmp_path, synth):
    ws = tmp_path / "ws"
    synth_workspace(ws, synth)
    cfg = config((8, 64, 64))
    detect_synapses(ws, cfg)
    first = (ws / "synapses.csv").read_bytes()
    # a block lost mid-run: its marker and its partial result are gone
    for stage in ("synapses-label", "synapses-partners"):
        (ws / "blockwise" / stage / "done" / "z1_y0_x1").unlink()
    (ws / "synapses" / "partners" / "z1_y0_x1.npz").unlink()
    detect_synapses(ws, cfg)
    assert (ws / "synapses.csv").read_bytes() == first
    runs = [line for line in (ws / "blockwise" / "synapses-label" / "runs.jsonl").read_text().splitlines()]
    assert '"processed": 1' in runs[-1]
    with pytest.raises(UserInputError, match="--restart"):
        detect_synapses(ws, config((8, 64, 64), threshold=0.7))


def test_graph_from_detected_synapses_matches_truth(tmp_path, synth):
    from conftest import run_cli

    ws = tmp_path / "ws"
    synth_workspace(ws, synth)
    detect_synapses(ws, config((16, 64, 64)))
    r = run_cli("graph", "--workspace", ws)
    assert r.returncode == 0, r.stderr
    got = read_rows(ws / "connectivity.csv")
    want = read_rows(synth["out"] / "truth" / "connectivity.csv")
    key = ("pre_segment_id", "post_segment_id", "synapse_count")
    assert [tuple(row[k] for k in key) for row in got] == [tuple(row[k] for k in key) for row in want]
