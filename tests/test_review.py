"""The review loop (issue 23): plan a queue per target, record decisions, import dense
corrections; formats, refusals (exit 2, one line) and atomic writes. Tiny workspaces written
directly, with known answers."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import zarr

from connectome.cli import main
from connectome.errors import UserInputError
from connectome.review.corrections import load_corrections
from connectome.review.queue import COLUMNS, read_queue
from connectome.workspace import Workspace

SHAPE = (8, 64, 64)
UNCERTAIN = (0, 32, 0, 8, 64, 32)  # the box where vessel_prob is 0.5 everywhere


def _put(ws, name, data, dtype, channels=()):
    arr = ws.require_array(name, dtype, SHAPE, channels=channels)
    arr[...] = data
    return arr


def _make_ws(path) -> Workspace:
    ws = Workspace.create(path, SHAPE, (40.0, 8.0, 8.0))
    rng = np.random.default_rng(0)
    _put(ws, "raw", rng.integers(0, 255, SHAPE), "uint8")
    prob = np.zeros(SHAPE, np.uint8)
    prob[:, :20, 40:] = 255  # a sure vessel
    prob[UNCERTAIN[0] : UNCERTAIN[3], UNCERTAIN[1] : UNCERTAIN[4], UNCERTAIN[2] : UNCERTAIN[5]] = 128
    prob[:4, 0:16, 0:16] = 60  # a little uncertainty elsewhere
    _put(ws, "vessel_prob", prob, "uint8")
    _put(ws, "vessel_mask", (prob >= 128).astype(np.uint8), "uint8")
    # segmentation: A | B touching across a weak boundary (y < 32); C a dumbbell with a 2 px neck
    seg = np.zeros(SHAPE, np.uint64)
    seg[:, :32, :20], seg[:, :32, 20:40] = 1, 2
    seg[:, 38:58, 5:20], seg[:, 38:58, 30:45], seg[:, 46:48, 20:30] = 3, 3, 3
    _put(ws, "segmentation", seg, "uint64")
    edge = np.zeros(SHAPE, bool)
    edge[:, :, :-1] |= seg[:, :, :-1] != seg[:, :, 1:]
    edge[:, :, 1:] |= seg[:, :, :-1] != seg[:, :, 1:]
    edge[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    edge[:, 1:] |= seg[:, :-1] != seg[:, 1:]
    bnd = np.where(edge, 230, 10).astype(np.uint8)
    bnd[:, :32, 19:21] = 10  # the weak A|B boundary
    _put(ws, "boundary", np.stack([bnd] * 4), "uint8", channels=("boundary", "aff_z", "aff_y", "aff_x"))
    # synapses: one cleft detected at 0.52 with a missing partner, one sure one, one sub-threshold blob
    sp = np.zeros(SHAPE, np.uint8)
    sp[3:5, 10:13, 10:13] = 133
    sp[3:5, 10:13, 30:33] = 240
    sp[3:6, 50:53, 50:53] = 100
    _put(ws, "synapse_prob", sp, "uint8")
    (ws.path / "synapses.csv").write_text(
        "synapse_id,z,y,x,pre_segment_id,post_segment_id,score\n1,4,11,11,0,1,0.52\n2,4,11,31,1,2,0.95\n"
    )
    return ws


@pytest.fixture
def ws(tmp_path):
    return _make_ws(tmp_path / "ws")


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _plan(ws, target, *extra) -> int:
    return main(["review", "plan", "--workspace", str(ws.path), "--target", target, *map(str, extra)])


def _rows(ws, target):
    with open(ws.path / "review" / target / "queue.csv", newline="") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------------------------- plan
def test_vessel_plan_ranks_the_uncertain_box_first_and_the_format_is_exact(ws):
    assert _plan(ws, "vessels", "--count", 3, "--box", "8,32,32") == 0
    rows = _rows(ws, "vessels")
    assert tuple(rows[0]) == COLUMNS
    assert (ws.path / "review" / "vessels" / "queue.csv").read_text().splitlines()[
        0
    ] == "item_id,target,kind,z0,y0,x0,z1,y1,x1,score,reason"
    first = rows[1]
    assert first[:3] == ["vessels-0001", "vessels", "uncertain-region"]
    assert tuple(int(v) for v in first[3:9]) == UNCERTAIN
    assert float(first[9]) == pytest.approx(4 * (128 / 255) * (127 / 255), abs=1e-4)
    items = read_queue(ws.path / "review" / "vessels" / "queue.csv")
    assert [it.score for it in items] == sorted((it.score for it in items), reverse=True)
    for a in items:  # boxes never overlap
        for b in items:
            if a is not b:
                assert not all(a.box[k] < b.box[k + 3] and b.box[k] < a.box[k + 3] for k in range(3))
    meta = json.loads((ws.path / "review" / "vessels" / "review.json").read_text())
    assert meta["strategy"] == "uncertainty" and meta["box_zyx"] == [8, 32, 32] and meta["seed"] == 0
    assert meta["workspace"]["path"] == str(ws.path.resolve()) and len(meta["workspace"]["fingerprint"]) == 16
    assert meta["created"].endswith("Z") and "vessel_prob" in meta["inputs"]


def test_random_strategy_is_seeded(ws):
    def queue(seed):
        assert _plan(ws, "vessels", "--count", 4, "--box", "4,16,16", "--strategy", "random", "--seed", seed) == 0
        return [r[3:9] for r in _rows(ws, "vessels")[1:]]

    a, b, c = queue(1), queue(1), queue(2)
    assert a == b and a != c and len(a) == 4


def test_synapse_plan_puts_near_threshold_and_weak_partners_first(ws):
    assert _plan(ws, "synapses", "--count", 10, "--box", "4,48,48") == 0
    rows = _rows(ws, "synapses")[1:]
    kinds = [r[2] for r in rows]
    assert kinds == ["detection", "missed-candidate", "detection"]
    assert "synapse 1 " in rows[0][10] and "synapse 2 " in rows[2][10]
    z0, y0, x0, z1, y1, x1 = (int(v) for v in rows[1][3:9])
    assert z0 <= 4 < z1 and y0 <= 51 < y1 and x0 <= 51 < x1 and (z1 - z0, y1 - y0, x1 - x0) == (4, 48, 48)


def test_segmentation_plan_finds_the_weak_merge_and_the_neck(ws):
    assert _plan(ws, "segmentation", "--count", 10, "--box", "4,16,16") == 0
    rows = _rows(ws, "segmentation")[1:]
    assert rows[0][2] == "merge-candidate" and "segments 1 and 2" in rows[0][10]
    split = [r for r in rows if r[2] == "split-candidate"]
    assert len(split) == 1 and "segment 3:" in split[0][10]
    y0, x0, y1, x1 = (int(split[0][k]) for k in (4, 5, 7, 8))
    assert y0 <= 47 < y1 and x0 <= 25 < x1  # centred near the neck


def test_plan_refuses_incomplete_inputs_bad_options_and_reviewed_queues(ws, capsys):
    ws.mark_incomplete("vessel_prob", "vessel-prob")
    assert _plan(ws, "vessels", "--count", 2) == 2
    assert "incomplete" in _err(capsys)
    ws.mark_complete("vessel_prob")
    assert _plan(ws, "vessels", "--count", 0) == 2 and "--count" in _err(capsys)
    assert _plan(ws, "vessels", "--count", 2, "--strategy", "smart") == 2 and "--strategy" in _err(capsys)
    assert _plan(ws, "vessels", "--count", 2, "--box", "0,8,8") == 2 and "--box" in _err(capsys)
    assert _plan(ws, "vessels", "--count", 2) == 0
    assert (
        main(
            [
                "review",
                "decide",
                "--workspace",
                str(ws.path),
                "--target",
                "vessels",
                "--item",
                "vessels-0001",
                "--decision",
                "accept",
            ]
        )
        == 0
    )
    before = (ws.path / "review" / "vessels" / "queue.csv").read_text()
    assert _plan(ws, "vessels", "--count", 3) == 2
    assert "--overwrite" in _err(capsys)
    assert (ws.path / "review" / "vessels" / "queue.csv").read_text() == before
    assert _plan(ws, "vessels", "--count", 3, "--box", "8,32,32", "--overwrite") == 0
    old = list((ws.path / "review" / "vessels").glob("superseded-*"))
    assert len(old) == 1 and (old[0] / "decisions.csv").is_file() and (old[0] / "queue.csv").read_text() == before
    assert len(_rows(ws, "vessels")) == 4


# ------------------------------------------------------------------------------------ decide
def _decide(ws, item, decision="accept", *extra):
    return main(
        [
            "review",
            "decide",
            "--workspace",
            str(ws.path),
            "--target",
            "vessels",
            "--item",
            item,
            "--decision",
            decision,
            *extra,
        ]
    )


def test_decide_appends_and_refuses_unknown_items(ws, capsys):
    assert _plan(ws, "vessels", "--count", 2, "--box", "8,32,32") == 0
    assert _decide(ws, "vessels-0001", "reject", "--author", "ana") == 0
    assert _decide(ws, "vessels-0002", "missed", "--author", "bo") == 0
    capsys.readouterr()
    assert _decide(ws, "vessels-0099") == 2 and "vessels-0099" in _err(capsys)
    assert _decide(ws, "vessels-0001", "maybe") == 2 and "--decision" in _err(capsys)
    lines = (ws.path / "review" / "vessels" / "decisions.csv").read_text().splitlines()
    assert lines[0] == "item_id,decision,author,time"
    assert [ln.split(",")[:3] for ln in lines[1:]] == [
        ["vessels-0001", "reject", "ana"],
        ["vessels-0002", "missed", "bo"],
    ]
    assert (
        main(
            [
                "review",
                "decide",
                "--workspace",
                str(ws.path),
                "--target",
                "synapses",
                "--item",
                "x",
                "--decision",
                "accept",
            ]
        )
        == 2
    )
    assert "review plan" in _err(capsys)


def test_missed_points_go_to_points_csv_and_must_lie_in_the_box(ws, capsys):
    from connectome.review.decisions import missed_points
    from connectome.review.queue import read_queue

    assert _plan(ws, "vessels", "--count", 2, "--box", "8,32,32") == 0
    items = read_queue(ws.path / "review" / "vessels" / "queue.csv")
    it = items[0]
    inside = ",".join(str((a + b) // 2) for a, b in zip(it.box[:3], it.box[3:]))
    outside = ",".join(str(v) for v in it.box[3:])  # the half-open end lies outside
    capsys.readouterr()
    assert _decide(ws, it.item_id, "missed", "--point", inside) == 0
    assert _decide(ws, it.item_id, "missed", "--point", outside) == 2 and "outside" in _err(capsys)
    assert _decide(ws, it.item_id, "accept", "--point", inside) == 2 and "missed" in _err(capsys)
    assert _decide(ws, it.item_id, "missed", "--point", "1,2") == 2 and "--point" in _err(capsys)
    rows = (ws.path / "review" / "vessels" / "points.csv").read_text().splitlines()
    assert rows[0] == "item_id,z,y,x,author,time" and len(rows) == 2
    want = tuple(int(v) for v in inside.split(","))
    assert missed_points(ws.path, "vessels") == {it.item_id: [want]}
    assert _decide(ws, it.item_id, "accept") == 0  # the item accepted: the point still counts
    assert _decide(ws, it.item_id, "missed", "--point", inside) == 0  # marked twice: counted once
    assert missed_points(ws.path, "vessels") == {it.item_id: [want]}
    # re-planning moves the points away with the decisions (new item ids may reuse the old ones)
    assert _plan(ws, "vessels", "--count", 2, "--box", "8,32,32", "--overwrite") == 0
    assert missed_points(ws.path, "vessels") == {}
    assert list((ws.path / "review" / "vessels").glob("superseded-*/points.csv"))


def test_a_killed_write_leaves_the_old_files_intact(ws, monkeypatch):
    import connectome.atomic as atomic
    from connectome.review.decisions import decide
    from connectome.review.plan import plan_review

    def killed(src, dst):
        raise KeyboardInterrupt  # the writer dies between writing the temporary file and the rename

    folder = ws.path / "review" / "vessels"
    assert _plan(ws, "vessels", "--count", 2, "--box", "8,32,32") == 0
    queue = (folder / "queue.csv").read_text()
    with monkeypatch.context() as m:
        m.setattr(atomic.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            plan_review(ws.path, "vessels", 5, box_zyx=(4, 16, 16))
    assert (folder / "queue.csv").read_text() == queue
    assert _decide(ws, "vessels-0001") == 0
    dec = (folder / "decisions.csv").read_text()
    with monkeypatch.context() as m:
        m.setattr(atomic.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            decide(ws.path, "vessels", "vessels-0002", "reject")
    assert (folder / "decisions.csv").read_text() == dec and (folder / "queue.csv").read_text() == queue
    assert not list(folder.glob(".*.partial"))


# ------------------------------------------------------------------------------------ import
def _import(ws, target, labels, *extra):
    return main(
        ["review", "import", "--workspace", str(ws.path), "--target", target, "--labels", str(labels), *map(str, extra)]
    )


def test_vessel_import_keeps_only_queued_voxels(ws, tmp_path, capsys):
    import tifffile

    assert _plan(ws, "vessels", "--count", 2, "--box", "8,32,32") == 0
    items = read_queue(ws.path / "review" / "vessels" / "queue.csv")
    full = tmp_path / "painted.tif"
    tifffile.imwrite(full, np.ones(SHAPE, np.uint8))
    assert _import(ws, "vessels", full) == 0
    c = load_corrections(ws.path / "review" / "vessels", ws.path)
    inside = np.zeros(SHAPE, bool)
    for it in items:
        inside[it.slices] = True
    mask, labels = c.mask[:], c.labels[:]
    assert np.array_equal(mask > 0, inside)
    assert np.all(labels[inside] == 1) and np.all(labels[~inside] == 255)
    assert sorted(c.item_ids) == sorted(it.item_id for it in items)
    assert c.meta["voxels"] == {"corrected": int(inside.sum()), "foreground": int(inside.sum())}
    # a small box at an offset inside the first item only: adds to the first import
    small = zarr.create_array(str(tmp_path / "box.zarr"), shape=(2, 4, 4), dtype="uint8", fill_value=0)
    small[...] = 0
    z0, y0, x0 = items[0].begin_zyx
    assert _import(ws, "vessels", tmp_path / "box.zarr", "--offset", f"{z0},{y0},{x0}") == 0
    c = load_corrections(ws.path / "review" / "vessels", ws)
    assert c.meta["imports"][-1]["item_ids"] == [items[0].item_id]
    assert int((c.labels[:] == 0).sum()) == 32 and c.meta["voxels"]["foreground"] == int(inside.sum()) - 32


def test_import_refusals_are_one_line(ws, tmp_path, capsys):
    import tifffile

    folder = ws.path / "review" / "vessels"
    assert _import(ws, "vessels", tmp_path / "nothing.tif") == 2 and "review plan" in _err(capsys)
    assert _plan(ws, "vessels", "--count", 1, "--box", "8,32,32") == 0  # queue: UNCERTAIN only
    capsys.readouterr()
    tifffile.imwrite(tmp_path / "small.tif", np.ones((8, 32, 32), np.uint8))
    assert _import(ws, "vessels", tmp_path / "small.tif") == 2
    assert "--offset" in _err(capsys)
    assert _import(ws, "vessels", tmp_path / "small.tif", "--offset", "0,40,40") == 2
    assert "does not fit" in _err(capsys)
    assert _import(ws, "vessels", tmp_path / "small.tif", "--offset", "0,0,32") == 2  # beside the queued box
    assert "touches none" in _err(capsys)
    tifffile.imwrite(tmp_path / "seven.tif", np.full(SHAPE, 7, np.uint8))
    assert _import(ws, "vessels", tmp_path / "seven.tif") == 2 and "0 or 1" in _err(capsys)
    f = zarr.create_array(str(tmp_path / "float.zarr"), shape=SHAPE, dtype="float32", fill_value=0)
    assert _import(ws, "vessels", tmp_path / "float.zarr") == 2 and "integers" in _err(capsys)
    assert _import(ws, "synapses", tmp_path / "seven.tif") == 2  # argparse: vessels|segmentation only
    capsys.readouterr()
    assert not (folder / "corrections.zarr").exists() and not (folder / "corrections.json").exists()
    del f


def test_segmentation_import_and_another_workspace_is_refused(ws, tmp_path, capsys):
    import h5py

    assert _plan(ws, "segmentation", "--count", 2, "--box", "4,16,16") == 0
    items = read_queue(ws.path / "review" / "segmentation" / "queue.csv")
    with h5py.File(tmp_path / "seg.h5", "w") as f:
        f["labels"] = np.full(SHAPE, 7, np.uint32)
    assert _import(ws, "segmentation", f"{tmp_path / 'seg.h5'}:/labels") == 0
    c = load_corrections(ws.path / "review" / "segmentation", ws.path)
    assert c.labels.dtype == np.uint64 and c.mask.dtype == np.uint8
    inside = np.zeros(SHAPE, bool)
    for it in items:
        inside[it.slices] = True
    assert np.array_equal(c.mask[:] > 0, inside) and np.all(c.labels[:][inside] == 7)
    with h5py.File(tmp_path / "neg.h5", "w") as f:
        f["labels"] = np.full(SHAPE, -1, np.int16)
    assert _import(ws, "segmentation", f"{tmp_path / 'neg.h5'}:/labels") == 2 and "non-negative" in _err(capsys)
    # the review folder carried to another workspace (same shape): refused by import and by load_corrections
    other = _make_ws(tmp_path / "other")
    shutil.copytree(ws.path / "review", other.path / "review")
    assert _import(other, "segmentation", f"{tmp_path / 'seg.h5'}:/labels") == 2
    assert str(ws.path.resolve()) in _err(capsys)
    with pytest.raises(UserInputError, match="made for workspace"):
        load_corrections(other.path / "review" / "segmentation", other.path)


def test_cli_as_a_real_process(ws):
    from tests.conftest import run_cli

    r = run_cli("review", "plan", "--workspace", ws.path, "--target", "vessels", "--count", "2", "--box", "8,32,32")
    assert r.returncode == 0 and "2 items" in r.stdout
    r = run_cli(
        "review", "decide", "--workspace", ws.path, "--target", "vessels", "--item", "nope", "--decision", "accept"
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nope" in r.stderr
