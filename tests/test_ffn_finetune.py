"""Fine-tuning the FFN on segmentation corrections: ``connectome train ffn --init MODEL
--corrections WS/review/segmentation``. A tiny workspace of toy cells whose corrections are the
true cells, a 2-step run from the shipped FFN (raw + predicted boundary channels); the exported
model directory loads, its card lists the corrections and the init model, its weights moved; the
episodes are seeded on corrected voxels and the loss weight follows the corrected voxels; replay
slots keep weight 1; bad inputs exit 2 with one line."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from toy_cells import (
    cells,
    check_wrong_reviews_refused,
    corrected_review,
    err_line,
    finetune,
    import_labels,
    plan,
    toy_raw,
    workspace,
)

from connectome.cli import main
from connectome.workspace import Workspace

INIT = Path(__file__).resolve().parents[1] / "ffn" / "models" / "boundary16"
BOUNDARY_INIT = Path(__file__).resolve().parents[1] / "unet" / "models" / "boundary"
TINY_CONFIG = """\
examples: {episode_rounds: 1, episode_max_fovs: 3, val_episodes_per_volume: 2, section_shift_prob: 0.0}
trainer: {steps: 2, batch_size: 2, learning_rate: 1.0e-3, warmup_steps: 0, validate_every: 1,
          checkpoint_every: 1, log_every: 1, prefetch: 0}
"""


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    """The toy review of tests/toy_cells.py."""
    return corrected_review(tmp_path_factory.mktemp("fft"), TINY_CONFIG)


def _train(root, out, *extra, init=INIT, corrections=None) -> int:
    return finetune("ffn", root, out, *extra, init=init, corrections=corrections)


def test_finetune_writes_a_model_whose_card_lists_the_corrections(corrected, tmp_path, capsys):
    from connectome.training import weights as wio
    from ffn.modeldir import build_model, read_model_dir

    out = tmp_path / "model"
    assert _train(corrected, out) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned 2 steps" in printed and "held-back boxes episode F1" in printed and "(init " in printed
    spec, init = read_model_dir(out), read_model_dir(INIT)
    build_model(spec)  # the weights fit the architecture and their sha256
    assert spec.model == init.model and spec.voxel_size_nm == init.voxel_size_nm
    doc = spec.doc
    ft = doc["fine_tuning"]
    queue = [
        line.split(",")[0]
        for line in (corrected / "ws" / "review" / "segmentation" / "queue.csv").read_text().splitlines()[1:]
    ]
    c = ft["corrections"]
    assert c["item_ids"] == queue and len(queue) == 3
    assert c["validation_item_ids"] == [queue[2]] and c["train_item_ids"] == queue[:2]
    assert 0 < c["voxels"]["corrected"] <= 3 * 8 * 32 * 32
    assert c["workspace"]["path"] == str((corrected / "ws").resolve())
    assert "predicted by" in c["boundary"]["source"]  # the workspace has no boundary array
    assert ft["init"]["weights_sha256"] == init.weights_sha256 and ft["replay_fraction"] == 0.5
    assert doc["training"]["steps"] == 2 and doc["training"]["data"] == []
    assert doc["weights"]["dtype"] == init.doc["weights"]["dtype"]
    v = doc["validation"]
    assert v["best_step"] >= 1  # the init weights (step 0) are a baseline, never exported
    m, m0 = v["episodes_f1_at_0.9"], v["corrected_boxes_init"]
    assert m["weighted_voxels"] > 0 and m["weighted_voxels"] == m0["weighted_voxels"]
    assert 0 <= m["f1"] <= 1 and m["score"] == pytest.approx(m["f1"]) and np.isfinite(m["loss"])
    card = (out / "MODEL_CARD.md").read_text()
    assert "Fine-tuning on reviewed corrections" in card and init.weights_sha256 in card
    assert all(i in card for i in queue) and "Held-back boxes" in card
    # the weights moved
    a, b = wio.load_npz(spec.weights_file), wio.load_npz(init.weights_file)
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    # a finished --out is never overwritten without --overwrite
    before = (out / "weights.npz").read_bytes()
    assert _train(corrected, out) == 2
    assert "--overwrite" in err_line(capsys)
    assert (out / "weights.npz").read_bytes() == before


def _volumes(root, ex_overrides=None):
    from connectome.review.corrections import load_corrections
    from ffn.finetune import corrected_volume
    from ffn.modeldir import read_model_dir
    from ffn.train import FFNExampleConfig
    from unet.data import IntensityStats
    from unet.finetune_common import box_keep

    c = load_corrections(root / "ws" / "review" / "segmentation", root / "ws")
    raw = np.asarray(Workspace.open(root / "ws").array("raw")[:])
    model = read_model_dir(INIT).model
    ex = dataclasses.replace(FFNExampleConfig(episode_rounds=1), **(ex_overrides or {}))
    bnd8 = (255 - raw).astype(np.uint8)  # any boundary channel
    st = IntensityStats(60.0 / 255, 120.0 / 255, 180.0 / 255)
    vols = [
        corrected_volume(raw, c.labels, c.mask, lambda sl: bnd8[sl], b, 2, model, ex, st, (40, 8, 8), box_keep([], []))
        for b in c.boxes
    ]
    return c, model, ex, vols


def test_episodes_seed_on_corrected_voxels_and_weights_follow_them(corrected):
    from ffn.finetune import corrected_episode
    from ffn.train import example_shape

    c, model, ex, vols = _volumes(corrected)
    cv = vols[0]
    z0, y0, x0, z1, y1, x1 = cv.box
    lo = cv.region_zyx[:3]
    # weight 1 exactly on the corrected voxels (at each model cell's centre pixel), 0 in the context
    mask = np.asarray(c.mask[:])[:, 1::2, 1::2] == 1
    want = np.zeros(cv.weight.shape, bool)
    r = cv.region_zyx
    zz, yy, xx = (np.arange(r[k], r[k + 3]) for k in range(3))
    inside = [(g >= 0) & (g < n) for g, n in zip((zz, yy, xx), mask.shape)]
    sub = mask[np.ix_(zz[inside[0]], yy[inside[1]], xx[inside[2]])]
    want[np.ix_(inside[0], inside[1], inside[2])] = sub
    assert np.array_equal(cv.weight > 0, want) and want.any() and (~want).any()
    assert np.all(cv.labels[~want] == 0)
    # every example centre is a corrected voxel with a segment id inside the box
    rng = np.random.default_rng(0)
    for _ in range(20):
        centre = cv.sampler.draw(rng)
        assert cv.weight[tuple(centre)] == 1 and cv.labels[tuple(centre)] > 0
        g = np.asarray(centre) + np.asarray(lo)
        assert z0 <= g[0] < z1 and y0 // 2 <= g[1] < -(-y1 // 2) and x0 // 2 <= g[2] < -(-x1 // 2)
    # the weight is flipped / transposed with the image and labels: with weight = the object's
    # mask, the augmented weight equals the augmented label
    obj = dataclasses.replace(cv)
    for seed in range(6):
        centre = cv.sampler.draw(np.random.default_rng(seed))
        obj.weight = (cv.labels == cv.labels[tuple(centre)]).astype(np.float32)
        slot = corrected_episode(obj, centre, model, ex, np.random.default_rng(seed))
        assert slot.weight.shape == example_shape(model, ex) == slot.label.shape
        assert np.array_equal(slot.weight > 0, slot.label > 0.5)
        assert slot.image.shape == (*example_shape(model, ex), 2)  # raw + boundary


def test_weighted_loss_ignores_uncorrected_voxels_and_is_the_ffn_loss_with_weight_1():
    import tensorflow as tf

    from ffn.finetune import weighted_ffn_loss
    from ffn.train import FFNJob

    rng = np.random.default_rng(0)
    lab = np.where(rng.random((2, 3, 5, 5, 1)) < 0.5, 0.95, 0.05).astype(np.float32)
    w = (rng.random(lab.shape) < 0.6).astype(np.float32)
    logits = tf.constant(rng.normal(size=lab.shape), tf.float32)
    a = float(weighted_ffn_loss(tf.constant(np.concatenate([lab, w], -1)), logits))
    flipped = np.where(w == 0, 1.0 - lab, lab)
    assert float(weighted_ffn_loss(tf.constant(np.concatenate([flipped, w], -1)), logits)) == pytest.approx(a)
    ones = np.concatenate([lab, np.ones_like(w)], -1)
    want = float(FFNJob.loss(None, tf.constant(lab), logits))
    assert float(weighted_ffn_loss(tf.constant(ones), logits)) == pytest.approx(want, rel=1e-6)


def test_batches_replay_with_weight_1(corrected):
    from ffn.data import CentreSampler
    from ffn.finetune import FFNFinetuneJob
    from ffn.train import TrainingVolume, example_shape

    c, model, ex, vols = _volumes(corrected)
    lab = cells(3)[:, 1::2, 1::2].astype(np.int64)
    img = toy_raw(cells(3))[:, ::2, ::2].astype(np.float32) / 255
    sampler = CentreSampler.from_labels(lab, (6, 12, 12), example_shape(model, ex), 1)
    replay = TrainingVolume("syn", img, lab, sampler, vols[0].stats, (40, 16, 16), 1 - img)
    job = FFNFinetuneJob(model, ex, vols[:2], vols[2:], [replay], 0, 10, {})
    x, y = job.batch(0, 0, 1, 4)
    assert x.shape == (4, *model.fov_zyx, 3) and y.shape == (4, *model.fov_zyx, 2)
    assert np.all(y[:2, ..., 1] == 1) and np.all(y[2:, ..., 1] <= 1)
    assert np.all(y[2:, ..., 1].reshape(2, -1).min(axis=1) == 0)  # the corrected slots' FOVs reach past the box
    r = model.radius_zyx
    assert np.all(y[:, r[0], r[1], r[2], 1] == 1) and np.all(y[:, r[0], r[1], r[2], 0] > 0.5)  # seeded on corrected ids
    job2 = FFNFinetuneJob(model, ex, vols[:2], vols[2:], [], 0, 10, {})
    x, y = job2.batch(0, 0, 1, 4)
    assert np.all(y[..., 1].reshape(4, -1).min(axis=1) == 0)  # no replay: every slot on the corrections
    assert len(job2.val_specs) == ex.val_episodes_per_volume


def test_boundary_channel_is_the_workspace_boundary_array_when_there_is_one(corrected, tmp_path):
    """What ``segment --method ffn`` feeds the model: channel 0 of the workspace's ``boundary``."""
    from connectome.review.corrections import load_corrections
    from ffn.finetune import boundary_source
    from ffn.train import FFNExampleConfig

    shutil.copytree(corrected / "ws", tmp_path / "ws")
    assert main(["predict-boundaries", "--workspace", str(tmp_path / "ws")]) == 0
    ws = Workspace.open(tmp_path / "ws", mode="r")
    c = load_corrections(corrected / "ws" / "review" / "segmentation", corrected / "ws")  # the boxes
    read, rec = boundary_source(ws, ws.path, ws.array("raw"), (40.0, 8.0, 8.0), c.boxes, FFNExampleConfig(), (2, 8, 8))
    assert rec["source"].startswith("workspace array 'boundary'") and rec["model_sha256"]
    sl = (slice(2, 10), slice(16, 48), slice(0, 32))
    assert np.array_equal(read(sl), np.asarray(ws.array("boundary")[(0, *sl)]))


def test_bad_inputs_exit_2_with_one_line(corrected, tmp_path, capsys):
    corr = corrected / "ws" / "review" / "segmentation"
    out = tmp_path / "m"
    # --init that is not an FFN model, or no model at all
    assert _train(corrected, out, init=BOUNDARY_INIT) == 2
    assert "not a connectome FFN model" in err_line(capsys)
    assert _train(corrected, out, init=tmp_path / "none") == 2
    assert "not found" in err_line(capsys)
    # a review folder without corrections (planned, nothing imported); one of another target
    raw, seg = check_wrong_reviews_refused(corrected, tmp_path, capsys, lambda **kw: _train(corrected, out, **kw))
    # one corrected box only: one is needed for training and one held back
    ws3 = workspace(tmp_path / "ws3", raw, seg)
    plan(ws3, "segmentation", 1)
    assert import_labels(ws3, "segmentation", corrected / "truth.zarr") == 0
    capsys.readouterr()
    assert _train(corrected, out, corrections=ws3.path / "review" / "segmentation") == 2
    assert "at least 2" in err_line(capsys)
    # corrections copied next to another workspace are refused (review.json names the original)
    shutil.copytree(corrected / "ws", tmp_path / "moved")
    assert _train(corrected, out, corrections=tmp_path / "moved" / "review" / "segmentation") == 2
    assert "made for workspace" in err_line(capsys)
    # fine-tuning validates on held-back items: --val is refused
    assert _train(corrected, out, "--val", corrected) == 2
    assert "--val" in err_line(capsys)
    # no boundary array and no boundary model for the FFN's boundary channel
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        TINY_CONFIG.replace(
            "section_shift_prob: 0.0}", f"section_shift_prob: 0.0, boundary_model: {tmp_path / 'nope'}}}"
        )
    )
    assert (
        main(["train", "ffn", "--init", str(INIT), "--corrections", str(corr), "--out", str(out), "--config", str(bad)])
        == 2
    )
    assert "boundary" in err_line(capsys)
    assert corr.is_dir() and not (out / "model.json").exists()
