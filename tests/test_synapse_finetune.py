"""Fine-tuning the synapse model on a review's decisions: ``connectome train synapse --init MODEL
--corrections WS/review/synapses``. How decisions become sparse cleft labels (each rule, with
known answers); a 2-step run from the shipped synapse model on a tiny workspace with replay of a
synth folder: the exported model predicts, its card lists the review and the init model, its
weights moved, the held-back items are scored; bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from connectome.cli import main
from connectome.workspace import Workspace
from unet.synapse_finetune import item_labels, point_cleft

SHIPPED = "unet/models/synapse"
SHAPE = (16, 96, 96)
VS = (40.0, 8.0, 8.0)
TINY_CONFIG = """\
data: {crop_zyx: [8, 32, 32], val_crop_zyx: [8, 32, 32], scale_range: [1.0, 1.0]}
trainer: {steps: 2, batch_size: 2, learning_rate: 1.0e-3, warmup_steps: 0, validate_every: 1,
          checkpoint_every: 1, log_every: 1, prefetch: 0}
"""


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- labels
def _prob():
    p = np.zeros((4, 32, 32), np.uint8)
    p[1:3, 10:12, 8:20] = 200  # above t = 0.5
    p[1:3, 24:26, 8:14] = 90  # in [t - 0.2, t)
    return p


def test_an_accepted_detection_labels_its_signal_and_the_box_around():
    lab = item_labels("detection", "accept", [], _prob(), None, 0.5, VS)
    assert (lab[1:3, 10:12, 8:20] == 1).all()
    assert lab[1, 9, 10] == 255 and lab[1, 13, 10] == 255  # the 2-pixel ring is unknown
    assert lab[0, 0, 0] == 0 and lab[1, 25, 10] == 0  # the rest of the box: no cleft
    assert set(np.unique(lab)) == {0, 1, 255}


def test_a_rejected_detection_or_an_empty_candidate_is_no_cleft_where_the_model_fired():
    for kind, decision in (("detection", "reject"), ("missed-candidate", "accept")):
        lab = item_labels(kind, decision, [], _prob(), None, 0.5, VS)
        assert (lab[1:3, 10:12, 8:20] == 0).all() and (lab[1:3, 24:26, 8:14] == 0).all()
        assert lab[0, 0, 0] == 255  # far from any signal: unknown
        assert 1 not in lab


def test_a_rejected_candidate_is_a_cleft_and_missed_points_add_clefts():
    lab = item_labels("missed-candidate", "reject", [], _prob(), None, 0.5, VS)
    assert (lab[1:3, 24:26, 8:14] == 1).all() and lab[0, 0, 0] == 255
    # a missed point next to the sub-threshold signal snaps to it ...
    c = point_cleft((1, 27, 10), _prob() >= 51, None, VS)
    assert c[1, 24, 8] and c.sum() == (_prob() >= 51)[:, 20:, :].sum()
    # ... far from any signal it takes the segment interface within 120 nm of it ...
    seg = np.ones((4, 32, 32), np.uint64)
    seg[:, :, 28:] = 2
    c = point_cleft((2, 5, 27), np.zeros((4, 32, 32), bool), seg, VS)
    assert c.any() and set(np.argwhere(c)[:, 2]) <= {27, 28} and set(np.argwhere(c)[:, 0]) <= {1, 2, 3}
    # ... and without a segmentation a small disc
    c = point_cleft((2, 5, 5), np.zeros((4, 32, 32), bool), None, VS)
    assert c[2, 5, 5] and c[1, 5, 5] and not c[0, 5, 5] and c.sum() == 3 * np.count_nonzero(c[2])
    # points stay on top of any decision: an accepted detection with a missed synapse beside it
    lab = item_labels("detection", "accept", [(2, 5, 27)], _prob(), seg, 0.5, VS)
    assert lab[2, 5, 27] == 1 and (lab[1:3, 10:12, 8:20] == 1).all() and lab[0, 20, 0] == 0


# ----------------------------------------------------------------------------- the command
def _workspace(path) -> Workspace:
    ws = Workspace.create(path, SHAPE, VS)
    rng = np.random.default_rng(0)
    raw = rng.normal(160, 12, SHAPE)
    seg = np.ones(SHAPE, np.uint64)
    seg[:, :, 48:] = 2
    raw[:, :, 47:49] = 60  # a membrane between two segments
    prob = np.zeros(SHAPE, np.uint8)
    clefts = [(slice(4, 8), slice(10, 30), slice(46, 50)), (slice(9, 12), slice(60, 80), slice(46, 50))]
    for z, y, x in clefts:
        raw[z, y, slice(x.start - 4, x.start)] = 40  # a dark density
        prob[z, y, x] = 210
    prob[2:4, 84:90, 20:26] = 180  # a false detection
    ws.require_array("raw", "uint8", SHAPE)[...] = raw.clip(0, 255).astype(np.uint8)
    ws.require_array("segmentation", "uint64", SHAPE)[...] = seg
    ws.require_array("synapse_prob", "uint8", SHAPE)[...] = prob
    rows = ["synapse_id,z,y,x,pre_segment_id,post_segment_id,score,size_voxels"]
    for k, (z, y, x) in enumerate(clefts + [(slice(2, 4), slice(84, 90), slice(20, 26))], start=1):
        rows.append(f"{k},{(z.start + z.stop) / 2},{(y.start + y.stop) / 2},{(x.start + x.stop) / 2},1,2,0.8,40")
    (ws.path / "synapses.csv").write_text("\n".join(rows) + "\n")
    return ws


def _decide(ws, item, decision, *extra) -> int:
    return main(
        ["review", "decide", "--workspace", str(ws.path), "--target", "synapses", "--item", item]
        + ["--decision", decision, *extra]
    )


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("sft")
    generate(root / "syn", preset="small", seed=11, shape_zyx=(16, 128, 128))
    ws = _workspace(root / "ws")
    args = ["review", "plan", "--workspace", str(ws.path), "--target", "synapses", "--count", "3", "--box", "4,32,32"]
    assert main(args) == 0
    from connectome.review.queue import read_queue

    items = read_queue(ws.path / "review" / "synapses" / "queue.csv")
    assert [it.kind for it in items] == ["detection"] * 3
    for it in items:
        cz, cy, cx = ((b + e) // 2 for b, e in zip(it.begin_zyx, it.end_zyx))
        if all(b <= v < e for v, b, e in zip((3, 87, 23), it.begin_zyx, it.end_zyx)):  # the false detection
            assert _decide(ws, it.item_id, "reject") == 0
        else:
            assert _decide(ws, it.item_id, "missed", "--point", f"{cz},{cy},{cx - 8}") == 0
            assert _decide(ws, it.item_id, "accept") == 0
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    return root, ws


def test_finetune_on_decisions_writes_a_model_that_lists_its_review(review, capsys):
    from connectome.synapses.predict import predict_arrays
    from connectome.training import weights as wio

    root, ws = review
    out = root / "model"
    args = ["train", "synapse", "--init", SHIPPED, "--corrections", str(ws.path / "review" / "synapses")]
    args += ["--data", str(root / "syn"), "--out", str(out), "--config", str(root / "tiny.yaml")]
    assert main(args) == 0
    assert "held-back items" in capsys.readouterr().out
    doc = json.loads((out / "model.json").read_text())
    c = doc["fine_tuning"]["corrections"]
    assert len(c["item_ids"]) == 3 and c["decisions"] == {"accept": 2, "reject": 1} and c["points"] == 2
    assert c["items_with_synapse"] == 2 and c["labelled_voxels"]["cleft"] > 0
    assert (
        doc["fine_tuning"]["init"]["weights_sha256"]
        == json.loads(open(f"{SHIPPED}/model.json").read())["weights"]["sha256"]
    )
    assert doc["weights"]["from_step"] >= 1  # never the init weights
    v = doc["validation"]
    assert v["held_back_items"]["items"] == 1 and v["held_back_items_init"]["items"] == 1
    card = (out / "MODEL_CARD.md").read_text()
    assert "Fine-tuning on a review" in card and c["item_ids"][0] in card
    new, old = wio.load_npz(out / "weights.npz"), wio.load_npz(f"{SHIPPED}/weights.npz")
    assert any(not np.allclose(new[k], old[k]) for k in old)
    prob, post, pre = predict_arrays(np.asarray(ws.array("raw")[:]), VS, out)
    assert prob.shape == SHAPE and prob.dtype == np.uint8


def test_refusals_are_one_line(review, tmp_path, capsys):
    root, ws = review
    corr = ws.path / "review" / "synapses"

    def run(*extra, init=SHIPPED, corrections=corr):
        return main(["train", "synapse", "--init", str(init), "--corrections", str(corrections), "--out",
                     str(tmp_path / "m"), "--config", str(root / "tiny.yaml"), *extra])  # fmt: skip

    assert run(init="unet/models/vessel") == 2 and "synapse" in _err(capsys)
    assert run(corrections=tmp_path / "nowhere") == 2 and "not found" in _err(capsys)
    assert run("--val", str(root / "syn")) == 2 and "--val" in _err(capsys)
    assert main(["train", "synapse", "--corrections", str(corr), "--out", str(tmp_path / "m")]) == 2
    assert "--init" in _err(capsys)
    # a review folder copied into another workspace
    other = _workspace(tmp_path / "ws2")
    shutil.copytree(corr, other.path / "review" / "synapses")
    assert run(corrections=other.path / "review" / "synapses") == 2 and "workspace" in _err(capsys)
    # a review without decisions
    fresh = _workspace(tmp_path / "ws3")
    assert main(["review", "plan", "--workspace", str(fresh.path), "--target", "synapses", "--count", "2"]) == 0
    capsys.readouterr()
    assert run(corrections=fresh.path / "review" / "synapses") == 2 and "decided" in _err(capsys)
