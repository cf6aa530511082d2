"""Skeleton metrics with known answers: ERL of a tube cut in two, a merge of two tubes counted
once and ending the runs of both, the truth ceiling; and the evaluate command's skeleton section
on a synthetic volume with true skeletons."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectome.evaluate.skeletons import evaluate_skeletons, run_lengths, skeleton_metrics
from connectome.skeletons import Skeleton

VS = (10.0, 10.0, 10.0)
N = 100  # nodes per tube, one per voxel along x: length (N - 1) * 10 nm


def _tube_skeleton(y: int) -> Skeleton:
    pts = np.array([[25.0, y * 10 + 5, x * 10 + 5] for x in range(N)])
    return Skeleton(pts, np.array([[i, i + 1] for i in range(N - 1)]))


def _volume(*ys, label=None):
    seg = np.zeros((5, 12, N), np.uint64)
    for k, y in enumerate(ys):
        seg[1:4, y - 1 : y + 2, :] = label or k + 1
    return seg


def test_erl_of_a_perfect_tube_is_its_length():
    sk = {1: _tube_skeleton(3)}
    r = evaluate_skeletons(sk, _volume(3), _volume(3), VS)
    assert r["erl_nm"] == pytest.approx(990.0) == r["erl_truth_nm"]
    assert r["n_merges"] == 0 and r["n_splits"] == 0 and r["erl_fraction_of_truth"] == 1.0


def test_tube_cut_in_two_at_a_known_position():
    sk = {1: _tube_skeleton(3)}
    seg = _volume(3)
    seg[:, :, 30:][seg[:, :, 30:] > 0] = 2  # cut between node 29 and node 30
    r = evaluate_skeletons(sk, seg, _volume(3), VS)
    # runs: nodes 0..29 (290 nm) and 30..99 (690 nm); the cut edge belongs to no run
    assert r["erl_nm"] == pytest.approx((290.0**2 + 690.0**2) / 990.0)
    assert r["n_splits"] == 1 and r["n_split_skeletons"] == 1 and r["n_merges"] == 0
    assert r["erl_truth_nm"] == pytest.approx(990.0)


def test_merge_of_two_tubes_counted_once_and_ends_runs_on_both():
    sk = {1: _tube_skeleton(3), 2: _tube_skeleton(8)}
    truth = _volume(3, 8)
    merged = _volume(3, 8, label=7)  # one segment holds both tubes
    r = evaluate_skeletons(sk, merged, truth, VS)
    assert r["n_merges"] == 1 and r["n_merger_segments"] == 1
    assert r["erl_nm"] == 0.0  # no correct edge on either tube
    assert r["erl_truth_nm"] == pytest.approx(990.0)
    (worst,) = r["worst_mergers"]
    assert worst["segment_id"] == 7 and worst["truth_ids"] == [1, 2]
    assert worst["skeleton_length_nm"] == pytest.approx(1980.0)
    z, y, x = worst["position_zyx"]
    assert merged[z, y, x] == 7  # a position inside the merger, to open in Neuroglancer

    # tube 1 half merged into tube 2's segment: the merge ends the runs on both; the rest of tube 1 counts
    partial = _volume(3, 8, label=7)
    partial[:, 2:5, 50:] = 3  # tube 1 from node 50 on: its own segment
    r = evaluate_skeletons(sk, partial, truth, VS)
    assert r["n_merges"] == 1 and r["n_splits"] == 1
    assert r["erl_nm"] == pytest.approx(490.0**2 / 1980.0)


def test_min_overlap_ignores_a_stray_node():
    sk = {1: _tube_skeleton(3), 2: _tube_skeleton(8)}
    seg = _volume(3, 8)
    seg[2, 3, 40] = 2  # one node (10 nm of cable) of tube 1 lies in tube 2's segment
    node_seg = {t: seg[2, [3 if t == 1 else 8] * N, np.arange(N)] for t in sk}
    strict = skeleton_metrics(sk, node_seg, VS, min_overlap_nm=0)
    lenient = skeleton_metrics(sk, node_seg, VS, min_overlap_nm=20)
    assert strict["n_merges"] == 1 and strict["n_splits"] == 1
    assert lenient["n_merges"] == 0 and lenient["n_splits"] == 0
    # the stray node ends tube 1's run either way (its two edges are not correct); counted as a
    # merge it also ends every run of tube 2
    assert lenient["erl_nm"] == pytest.approx((390.0**2 + 580.0**2 + 990.0**2) / 1980.0)
    assert strict["erl_nm"] == pytest.approx((390.0**2 + 580.0**2) / 1980.0)


def test_run_lengths_on_a_branched_skeleton():
    # a Y: stem 0-1-2, branches 2-3 and 2-4; all in one segment -> one run of the whole length
    sk = Skeleton(
        np.array([[0.0, 0, 0], [0, 0, 10], [0, 0, 20], [0, 10, 30], [0, -10, 30]]),
        np.array([[0, 1], [1, 2], [2, 3], [2, 4]]),
    )
    runs = run_lengths(sk, np.array([4, 4, 4, 4, 4], np.uint64), set())
    assert runs.tolist() == pytest.approx([sk.length_nm()])
    runs = run_lengths(sk, np.array([4, 4, 4, 4, 5], np.uint64), set())
    assert sorted(runs.tolist()) == pytest.approx([20 + np.sqrt(200)])
    assert run_lengths(sk, np.array([4, 4, 4, 4, 4], np.uint64), {4}).size == 0


@pytest.mark.timeout(120)
def test_synth_truth_skeletons_and_evaluate(tmp_path, capsys):
    """`connectome synth` writes true skeletons of its neurites; evaluating the true neurons as
    the segmentation reaches the ceiling; merging two neurons lowers ERL and counts a merge."""
    from connectome.cli import main
    from connectome.evaluate.inputs import TruthSet
    from connectome.skeletons.precomputed import read_skeletons
    from connectome.workspace import Workspace

    out = tmp_path / "syn"
    assert main(["synth", str(out), "--shape", "8,128,128", "--seed", "2", "-q"]) == 0
    skels = read_skeletons(out / "truth" / "skeletons")
    truth = TruthSet.open(out)
    neurons = np.asarray(truth.array("neurons")[:])
    vs = truth.voxel_size_nm()
    assert len(skels) > 5
    inside = [np.floor(s.vertices_nm / vs).astype(int) for s in skels.values()]
    assert all(((v >= 0) & (v < neurons.shape)).all() for v in inside)
    hit = np.mean(np.concatenate([neurons[tuple(v.T)] == i for i, v in zip(skels, inside)]))
    assert hit > 0.8  # centre lines run inside their own neuron's voxels

    ws = Workspace.create(tmp_path / "ws", neurons.shape, vs)
    ws.require_array("segmentation", "uint64", (8, 64, 64))[:] = neurons
    assert main(["evaluate", "--workspace", str(tmp_path / "ws"), "--truth", str(out)]) == 0
    assert "expected run length ERL (nm)" in capsys.readouterr().out
    sec = json.loads((tmp_path / "ws" / "evaluation.json").read_text())["skeletons"]
    assert sec["status"] == "ok" and sec["n_merges"] == 0 and sec["n_splits"] == 0
    assert sec["erl_nm"] == pytest.approx(sec["erl_truth_nm"]) and sec["erl_nm"] > 0

    # merge the two longest skeletons' neurons
    lengths = {i: s.length_nm() for i, s in skels.items()}
    a, b = sorted(lengths, key=lengths.get)[-2:]
    merged = neurons.copy()
    merged[merged == b] = a
    ws.array("segmentation")[:] = merged
    assert main(["evaluate", "--workspace", str(tmp_path / "ws"), "--truth", str(out)]) == 0
    out_text = capsys.readouterr().out
    sec = json.loads((tmp_path / "ws" / "evaluation.json").read_text())["skeletons"]
    assert sec["n_merges"] == 1 and sec["erl_nm"] < sec["erl_truth_nm"]
    assert sec["worst_mergers"][0]["segment_id"] == a and f"worst merger: segment {a}" in out_text
