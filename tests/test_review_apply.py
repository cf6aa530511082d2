"""`connectome review apply`: accepted merge candidates become one segment, as a logged edit that
can be undone exactly; applying twice changes nothing; a run killed mid-way is rolled back by the
next one; refusals are one line, exit 2. A tiny workspace written directly, with known answers."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys

import numpy as np
import pytest

from connectome.cli import main
from connectome.review import apply as apply_mod
from connectome.review.apply import apply_merges, list_edits, undo_edit
from connectome.review.decisions import decide
from connectome.review.plan import plan_review
from connectome.workspace import STATE_ATTR, Workspace

SHAPE = (8, 64, 64)
CHUNKS = (4, 16, 16)  # 2 x 4 x 4 chunks: an edit touches only some of them
SEG_STATE = {"stage": "segment", "task": "segment-write", "complete": True, "config_digest": "abc123"}


def _make_ws(path) -> Workspace:
    ws = Workspace.create(path, SHAPE, (40.0, 8.0, 8.0))
    rng = np.random.default_rng(0)
    ws.require_array("raw", "uint8", CHUNKS)[...] = rng.integers(0, 255, SHAPE).astype(np.uint8)
    # 1 | 2 | 5 in a row across weak boundaries (y < 32); 7 below 1 across a strong one;
    # 3 a dumbbell with a thin neck (a split candidate)
    seg = np.zeros(SHAPE, np.uint64)
    seg[:, :32, :20], seg[:, :32, 20:40], seg[:, :32, 40:56] = 1, 2, 5
    seg[:, 32:60, :20] = 7
    seg[:, 38:58, 25:35], seg[:, 38:58, 45:55], seg[:, 46:48, 35:45] = 3, 3, 3
    arr = ws.require_array("segmentation", "uint64", CHUNKS)
    arr[...] = seg
    arr.attrs[STATE_ATTR] = SEG_STATE
    edge = np.zeros(SHAPE, bool)
    edge[:, :, :-1] |= seg[:, :, :-1] != seg[:, :, 1:]
    edge[:, :, 1:] |= seg[:, :, :-1] != seg[:, :, 1:]
    edge[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    edge[:, 1:] |= seg[:, :-1] != seg[:, 1:]
    bnd = np.where(edge, 230, 10).astype(np.uint8)
    bnd[:, :32, 19:21] = 10  # the weak 1|2 boundary
    bnd[:, :32, 39:41] = 10  # the weak 2|5 boundary
    ws.require_array("boundary", "uint8", CHUNKS)[...] = bnd
    return ws


@pytest.fixture
def ws(tmp_path):
    ws = _make_ws(tmp_path / "ws")
    plan_review(ws.path, "segmentation", 20, box_zyx=(4, 16, 16))
    return ws


def _seg(ws) -> np.ndarray:
    return np.asarray(Workspace.open(ws.path, mode="r").array("segmentation")[:])


def _meta(ws) -> dict:
    return json.loads((ws.path / "review" / "segmentation" / "review.json").read_text())


def _item(ws, segments) -> str:
    found = [k for k, v in _meta(ws)["item_segments"].items() if v == list(segments)]
    assert len(found) == 1, _meta(ws)["item_segments"]
    return found[0]


def _accept(ws, *pairs) -> None:
    for p in pairs:
        decide(ws.path, "segmentation", _item(ws, p), "accept", author="tester")


def _apply(ws, *extra) -> int:
    return main(["review", "apply", "--workspace", str(ws.path), *extra])


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _merged(seg, mapping) -> np.ndarray:
    out = seg.copy()
    for old, new in mapping.items():
        out[seg == old] = new
    return out


def test_plan_records_the_segments_of_each_item(ws):
    folder = ws.path / "review" / "segmentation"
    segs = _meta(ws)["item_segments"]
    with open(folder / "queue.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["item_id", "target", "kind", "z0", "y0", "x0", "z1", "y1", "x1", "score", "reason"]
    kinds = {r[0]: r[2] for r in rows[1:]}
    assert set(segs) == set(kinds)
    merges = sorted(v for k, v in segs.items() if kinds[k] == "merge-candidate")
    assert merges == [[1, 2], [1, 7], [2, 5]]
    assert [v for k, v in segs.items() if kinds[k] == "split-candidate"] == [[3]]
    for r in rows[1:]:  # the reason names the same ids
        if r[2] == "merge-candidate":
            assert f"segments {segs[r[0]][0]} and {segs[r[0]][1]} touch" in r[10]


def test_apply_merges_reapply_is_a_no_op_and_undo_restores_exactly(ws, capsys):
    original = _seg(ws)
    assert _apply(ws) == 0  # no decisions yet: nothing written
    assert "no accepted merge candidates" in capsys.readouterr().out
    assert not (ws.path / "review" / "segmentation" / "edits" / "e0001.json").exists()

    _accept(ws, (1, 2))
    decide(ws.path, "segmentation", _item(ws, (1, 7)), "reject", author="tester")
    assert _apply(ws, "--author", "me") == 0
    out = capsys.readouterr().out.strip()
    # segment 2 lies in y 0:32, x 20:40: 2 x 2 x 2 chunks of 4 x 16 x 16
    assert out == "review apply: e0001 merged 1 pairs (2 segments -> 1) in 8 chunks; undo with --undo e0001"
    once = _seg(ws)
    np.testing.assert_array_equal(once, _merged(original, {2: 1}))
    w = Workspace.open(ws.path, mode="r")
    assert w.is_complete("segmentation")
    state = w.array_state("segmentation")
    assert state["config_digest"] == "abc123" and state["review_edits"] == ["e0001"]
    rec = json.loads((ws.path / "review" / "segmentation" / "edits" / "e0001.json").read_text())
    assert rec["status"] == "applied" and rec["author"] == "me" and rec["mapping"] == {"2": 1}
    assert rec["undone"] is None and rec["segmentation_state_before"] == SEG_STATE and len(rec["chunks"]) == 8

    assert _apply(ws) == 0  # again: nothing new
    assert "already applied" in capsys.readouterr().out
    assert [r["edit_id"] for r in list_edits(ws.path)] == ["e0001"]
    np.testing.assert_array_equal(_seg(ws), once)

    # a later decision on 2|5: 2 is 1 by now, so 5 joins 1
    _accept(ws, (2, 5))
    s = apply_merges(ws.path, author="me")
    assert s["edit_id"] == "e0002" and s["mapping"] == {"5": 1}
    twice = _seg(ws)
    np.testing.assert_array_equal(twice, _merged(original, {2: 1, 5: 1}))
    capsys.readouterr()

    assert _apply(ws, "--undo", "e0001") == 2
    assert "only the latest edit can be undone; undo e0002 first" in _err(capsys)
    assert _apply(ws, "--undo", "e0002") == 0
    assert "undid e0002" in capsys.readouterr().out
    np.testing.assert_array_equal(_seg(ws), once)
    assert _apply(ws, "--undo", "e0002") == 2
    assert "already undone" in _err(capsys)
    undo_edit(ws.path, "e0001")
    assert np.array_equal(_seg(ws), original)
    assert Workspace.open(ws.path, mode="r").array_state("segmentation") == SEG_STATE
    assert not (ws.path / "review" / "segmentation" / "edits" / "e0001").exists()  # saved chunks gone

    assert _apply(ws, "--list") == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["edit_id", "time", "author", "items", "merged_ids", "undone"]
    assert [(r[0], r[4], bool(r[5])) for r in rows[1:]] == [("e0001", "2->1", True), ("e0002", "5->1", True)]
    assert (
        (ws.path / "review" / "segmentation" / "edits" / "edits.csv").read_text().splitlines()[0].startswith("edit_id,")
    )


def test_a_killed_apply_is_rolled_back_and_redone(ws, monkeypatch, caplog):
    original = _seg(ws)
    _accept(ws, (1, 2), (2, 5))  # a chain: 1-2, 2-5 -> all 1
    real = apply_mod._write_chunk
    calls = {"n": 0}

    def dying(arr, sl, data):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        real(arr, sl, data)

    monkeypatch.setattr(apply_mod, "_write_chunk", dying)
    with pytest.raises(RuntimeError, match="killed"):
        apply_merges(ws.path)
    assert not np.array_equal(_seg(ws), original)  # half written
    w = Workspace.open(ws.path, mode="r")
    assert not w.is_complete("segmentation")
    with pytest.raises(Exception, match="connectome review apply"):  # consumers refuse it
        w.require_complete("segmentation", "graph")

    monkeypatch.setattr(apply_mod, "_write_chunk", real)
    with caplog.at_level(logging.WARNING, logger="connectome"):
        s = apply_merges(ws.path)
    assert "edit e0001 was interrupted; rolled back from its 4 saved chunks" in caplog.text  # 3 written, the 4th saved
    assert s["edit_id"] == "e0002" and s["segments_before"] == 3 and s["segments_after"] == 1
    np.testing.assert_array_equal(_seg(ws), _merged(original, {2: 1, 5: 1}))
    assert Workspace.open(ws.path, mode="r").is_complete("segmentation")
    assert [r["edit_id"] for r in list_edits(ws.path)] == ["e0002"]
    first = json.loads((ws.path / "review" / "segmentation" / "edits" / "e0001.json").read_text())
    assert first["status"] == "rolled-back"

    # a killed undo is finished by the next one
    calls["n"] = 0
    monkeypatch.setattr(apply_mod, "_write_chunk", dying)
    with pytest.raises(RuntimeError, match="killed"):
        undo_edit(ws.path, "e0002")
    monkeypatch.setattr(apply_mod, "_write_chunk", real)
    undo_edit(ws.path, "e0002")
    assert np.array_equal(_seg(ws), original)
    assert Workspace.open(ws.path, mode="r").array_state("segmentation") == SEG_STATE


def test_remap_without_fastremap(monkeypatch):
    chunk = np.array([[0, 1, 2], [5, 2, 9]], np.uint64)
    with_fr = apply_mod._remap(chunk, {2: 1, 5: 1})
    monkeypatch.setitem(sys.modules, "fastremap", None)  # import fails: the numpy path
    without = apply_mod._remap(chunk, {2: 1, 5: 1})
    for out in (with_fr, without):
        assert out.dtype == np.uint64
        np.testing.assert_array_equal(out, [[0, 1, 1], [1, 1, 9]])
    np.testing.assert_array_equal(chunk, [[0, 1, 2], [5, 2, 9]])


def test_refusals_are_one_line(ws, tmp_path, capsys):
    # no review folder
    bare = _make_ws(tmp_path / "bare")
    assert _apply(bare) == 2
    assert "no segmentation review" in _err(capsys)
    # a review folder made for another workspace
    other = tmp_path / "copy"
    shutil.copytree(ws.path, other)
    assert main(["review", "apply", "--workspace", str(other)]) == 2
    assert "made for workspace" in _err(capsys)
    # unknown edit
    assert _apply(ws, "--undo", "e0099") == 2
    assert "no edit 'e0099'" in _err(capsys)
    # the segmentation changed since the edit: content, then state
    _accept(ws, (1, 2))
    assert _apply(ws) == 0
    capsys.readouterr()
    arr = Workspace.open(ws.path).array("segmentation")
    arr[0, 0, 25] = 99
    assert _apply(ws, "--undo", "e0001") == 2
    assert "changed since the edit (chunk [0, 0, 1] differs" in _err(capsys)
    arr[0, 0, 25] = 1
    arr.attrs[STATE_ATTR] = {**SEG_STATE, "config_digest": "rerun"}
    assert _apply(ws, "--undo", "e0001") == 2
    assert "changed since the edit" in _err(capsys)
    # ... and a queue planned on another segmentation is not applied to this one
    assert _apply(ws) == 2
    assert "planned on another segmentation" in _err(capsys)
    # no segmentation array
    Workspace.open(ws.path).remove_array("segmentation")
    assert _apply(ws) == 2
    assert "has no array 'segmentation'" in _err(capsys)
