"""Fine-tuning the boundary model on segmentation corrections: ``connectome train boundary --init
MODEL --corrections WS/review/segmentation``. A tiny workspace of toy cells whose corrections are the
true cells, a 2-step run from the shipped boundary model with replay of the synth folder; the
exported model predicts, its card lists the corrections and the init model, its weights moved,
the held-back boxes are scored; the loss weights follow the corrected voxels; bad inputs exit 2
with one line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from toy_cells import SHAPE, check_wrong_reviews_refused, corrected_review, err_line, finetune

from connectome.workspace import Workspace
from unet.boundary import DEFAULT_MODEL as SHIPPED

TINY_CONFIG = """\
data: {crop_zyx: [8, 32, 32], val_crop_zyx: [8, 32, 32], scale_range: [1.0, 1.0]}
trainer: {steps: 2, batch_size: 2, learning_rate: 1.0e-3, warmup_steps: 0, validate_every: 1,
          checkpoint_every: 1, log_every: 1, prefetch: 0}
"""


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    """The toy review (tests/toy_cells.py) and a synth folder for replay."""
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("bft")
    generate(root / "syn", preset="small", seed=11, shape_zyx=(16, 128, 128))
    return corrected_review(root, TINY_CONFIG)


def _train(root, out, *extra, init=SHIPPED, corrections=None) -> int:
    return finetune("boundary", root, out, *extra, init=init, corrections=corrections)


def test_finetune_writes_a_model_whose_card_lists_the_corrections(corrected, tmp_path, capsys):
    from connectome.training import weights as wio
    from unet.boundary import CHANNELS, predict_arrays
    from unet.boundary import read_spec as read_boundary

    out = tmp_path / "model"
    assert _train(corrected, out, "--data", corrected / "syn") == 0
    printed = capsys.readouterr().out
    assert "fine-tuned 2 steps" in printed and "held-back boxes boundary Dice" in printed and "(init " in printed
    spec, init = read_boundary(out), read_boundary(SHIPPED)
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
    assert ft["init"]["weights_sha256"] == init.weights_sha256 and ft["replay_fraction"] == 0.5
    assert ft["class_balance"]["channels"] == ["aff_z", "aff_y", "aff_x"]
    assert doc["architecture"] == init.doc["architecture"] and doc["output"]["channels"] == list(CHANNELS)
    assert doc["training"]["steps"] == 2 and doc["training"]["data"][0]["seed"] == 11  # the replay folder
    assert doc["weights"]["from_step"] >= 1  # the init weights (step 0) are a baseline, never exported
    crops = doc["validation"]["corrected_boxes_crops"]
    assert crops["weighted_voxels"] > 0 and np.isfinite(crops["loss"]) and 0 <= crops["boundary_dice"] <= 1
    # the exported step is chosen by boundary Dice and affinity balanced accuracy together
    want = 0.5 * (crops["boundary_dice"] + crops["affinity_balanced_accuracy"])
    assert crops["score"] == pytest.approx(want, abs=1e-3)
    fin = doc["validation"]["corrected_boxes"]
    assert fin["boundary_voxels_scored"] > 0 and fin["boundary_dice"] is not None
    assert doc["validation"]["corrected_boxes_init"]["boundary_voxels_scored"] == fin["boundary_voxels_scored"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "Fine-tuning on reviewed corrections" in card and init.weights_sha256 in card
    assert "Class balance" in card and f"{ft['class_balance']['negative_share']:.0%} of its loss weight" in card
    assert all(i in card for i in queue) and "Held-back boxes" in card
    # the weights moved, and the model directory predicts
    a, b = wio.load_npz(spec.weights_file), wio.load_npz(init.weights_file)
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    raw = np.asarray(Workspace.open(corrected / "ws").array("raw")[:])
    pred = predict_arrays(raw, (40.0, 8.0, 8.0), model_dir=out)
    assert pred.shape == (4, *SHAPE) and pred.dtype == np.uint8
    # a finished --out is never overwritten without --overwrite
    before = (out / "weights.npz").read_bytes()
    assert _train(corrected, out) == 2
    assert "--overwrite" in err_line(capsys)
    assert (out / "weights.npz").read_bytes() == before


def test_loss_weights_follow_the_corrected_voxels(corrected):
    import tensorflow as tf

    from connectome.review.corrections import load_corrections
    from unet.boundary_finetune import (
        boundary_weight_full_res,
        corrected_box,
        crop_corrected,
        weighted_boundary_loss,
        weighted_targets,
    )
    from unet.boundary_train import BoundaryTrainConfig
    from unet.data import IntensityStats, reflect_index
    from unet.finetune_common import box_keep

    c = load_corrections(corrected / "ws" / "review" / "segmentation", corrected / "ws")
    raw = np.zeros(SHAPE, np.uint8)
    box = c.boxes[0]
    cb = corrected_box(
        raw, c.labels, c.mask, box, 2, (4, 16, 16), (40, 8, 8), IntensityStats(0, 0.5, 1), box_keep([box], [])
    )
    centre = tuple((lo + hi) // 2 for lo, hi in zip(cb.lo, cb.hi))
    img, bnd, bw, lab = crop_corrected(cb, centre, (8, 32, 32))
    y = weighted_targets(bnd, bw, lab)
    assert y.shape == (8, 32, 32, 8)
    # weights: 1 where the target is defined by corrected voxels (here: the box's) only
    # (reads outside the region are mirrored, as in boundary_data.crop_example; "m": with the one-voxel margin)
    r, n = cb.vol.meta["region_zyx"], cb.vol.image.shape
    gz, gy, gx = (
        r[k] // (1 if k == 0 else 2) + reflect_index(np.arange(centre[k] - h - 1, centre[k] + h + 1), n[k])
        for k, h in enumerate((4, 16, 16))
    )
    full = np.zeros(SHAPE, bool)
    full[tuple(slice(box[k], box[k + 3]) for k in range(3))] = True
    pooled = boundary_weight_full_res(full, ((True, True), (True, True))).reshape(16, 48, 2, 48, 2).min(axis=(2, 4))
    sub = full[:, ::2, ::2][gz][:, gy][:, :, gx]  # corrected, at the model grid, crop + margin
    core = sub[1:-1, 1:-1, 1:-1]
    assert np.array_equal(y[..., 4] == 1, pooled[gz[1:-1]][:, gy[1:-1]][:, :, gx[1:-1]])
    assert np.array_equal(y[..., 5] == 1, core & sub[:-2, 1:-1, 1:-1])  # both voxels of the pair
    assert np.array_equal(y[..., 6] == 1, core & sub[1:-1, :-2, 1:-1])
    assert np.array_equal(y[..., 7] == 1, core & sub[1:-1, 1:-1, :-2])
    assert y[..., 4].any() and not y[..., 4][~core].any() and (~core).any()  # the crop reaches past the box
    # the targets are boundary_data's where the weights are 1
    from unet.boundary_data import affinities_from_labels

    lab0 = np.maximum(lab, 0)
    aff = affinities_from_labels(lab0).transpose(1, 2, 3, 0)
    assert np.array_equal(y[..., 1:4], aff)
    # the loss ignores whatever the target says where the weight is 0, and with weights 1 it is the normal loss
    cfg = BoundaryTrainConfig()
    logits = tf.constant(np.random.default_rng(1).normal(size=(1, 8, 32, 32, 4)), tf.float32)
    a = float(weighted_boundary_loss(tf.constant(y[None]), logits, cfg))
    y2 = y.copy()
    y2[..., :4] = np.where(y[..., 4:] == 0, 1.0 - y[..., :4], y[..., :4])
    assert float(weighted_boundary_loss(tf.constant(y2[None]), logits, cfg)) == pytest.approx(a, abs=1e-6)
    y3 = y.copy()
    y3[..., :4] = np.where(y[..., 4:] > 0, 1.0 - y[..., :4], y[..., :4])
    assert float(weighted_boundary_loss(tf.constant(y3[None]), logits, cfg)) != pytest.approx(a, abs=1e-3)
    from unet.boundary_train import BoundaryJob

    ones = y.copy()
    ones[..., 4:] = 1.0
    want = float(BoundaryJob(cfg, [], [], {}).loss(tf.constant(y[None, ..., :4]), logits))
    assert float(weighted_boundary_loss(tf.constant(ones[None]), logits, cfg)) == pytest.approx(want, rel=1e-5)


def test_class_balanced_weights_share_each_channel_between_its_classes():
    from unet.boundary_finetune import BALANCED_CHANNELS, NEGATIVE_SHARE, class_balanced

    rng = np.random.default_rng(0)
    y = np.zeros((2, 4, 6, 6, 8), np.float32)
    y[..., :4] = rng.random(y.shape[:-1] + (4,)) < 0.1  # rare positives, as the disconnected pairs are rare
    y[..., 4:] = rng.random(y.shape[:-1] + (4,)) < 0.7  # uncorrected voxels: weight 0
    y[..., 3] = 1.0  # one channel with a single class is left as it is
    out = class_balanced(y)
    assert np.array_equal(out[..., :4], y[..., :4]) and np.array_equal(out[..., 4:] > 0, y[..., 4:] > 0)
    assert set(BALANCED_CHANNELS) >= {1, 2, 3} and 0.25 <= NEGATIVE_SHARE <= 0.5  # the affinities are balanced
    for c in range(4):
        w, pos = out[..., 4 + c], y[..., c] >= 0.5
        assert w.sum() == pytest.approx(y[..., 4 + c].sum(), rel=1e-5)  # the channel's total weight is kept
        if c in BALANCED_CHANNELS and c != 3:
            assert w[~pos].sum() == pytest.approx(NEGATIVE_SHARE * w.sum(), rel=1e-5) and w[pos].sum() > 0
        else:
            assert np.array_equal(w, y[..., 4 + c])


def test_training_batches_balance_the_corrected_affinities(corrected):
    """The disconnected pairs (a few % of a crop) weigh as much as the connected ones in the loss of
    the corrected examples; replay examples keep weight 1 (the normal training loss)."""
    import dataclasses

    from connectome.review.corrections import load_corrections
    from unet.boundary_data import load_boundary_volume
    from unet.boundary_finetune import NEGATIVE_SHARE, BoundaryFinetuneJob, corrected_box
    from unet.boundary_train import BoundaryTrainConfig
    from unet.data import IntensityStats
    from unet.finetune_common import box_keep

    c = load_corrections(corrected / "ws" / "review" / "segmentation", corrected / "ws")
    raw = np.asarray(Workspace.open(corrected / "ws").array("raw")[:])
    st = IntensityStats(60.0 / 255, 120.0 / 255, 180.0 / 255)
    cbs = [
        corrected_box(raw, c.labels, c.mask, b, 2, (4, 16, 16), (40, 8, 8), st, box_keep([], [])) for b in c.boxes[:2]
    ]
    cfg = BoundaryTrainConfig()
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, crop_zyx=(8, 32, 32), val_crop_zyx=(8, 32, 32), scale_range=(1.0, 1.0))
    )
    job = BoundaryFinetuneJob(cfg, None, cbs, [], [], {})
    x, y = job.batch(0, 0, 1, 4)
    assert x.shape == (4, 8, 32, 32, 1) and y.shape == (4, 8, 32, 32, 8)
    for ch in (1, 2, 3):
        t, w = y[..., ch] >= 0.5, y[..., 4 + ch]
        n_pos, n_neg = np.count_nonzero(t & (w > 0)), np.count_nonzero(~t & (w > 0))
        assert 0 < n_neg < 0.3 * n_pos  # the disconnected pairs are rare ...
        # ... and carry NEGATIVE_SHARE of the weight, far above their count
        assert w[~t].sum() == pytest.approx(NEGATIVE_SHARE * w.sum(), rel=1e-4)
        assert w[~t & (w > 0)].min() > 1.2 * w[t & (w > 0)].max()
    # with replay, the replay half of the batch keeps weight 1
    job = BoundaryFinetuneJob(cfg, None, cbs, [], [load_boundary_volume(corrected / "syn", 16.0)], {})
    x, y = job.batch(0, 0, 1, 4)
    assert np.all(y[:2, ..., 4:] == 1.0)
    w, t = y[2:, ..., 5], y[2:, ..., 1] >= 0.5
    assert w[~t].sum() == pytest.approx(NEGATIVE_SHARE * w.sum(), rel=1e-4)


def test_bad_inputs_exit_2_with_one_line(corrected, tmp_path, capsys):
    corr = corrected / "ws" / "review" / "segmentation"
    out = tmp_path / "m"
    # --init that is not a boundary model, or no model at all
    assert _train(corrected, out, init=SHIPPED.parent / "vessel") == 2
    assert "--init" in (e := err_line(capsys)) and "'vessel' model" in e
    assert _train(corrected, out, init=tmp_path) == 2
    err_line(capsys)
    assert _train(corrected, out, init=tmp_path / "none") == 2
    assert "not found" in err_line(capsys)
    # a review folder without corrections (planned, nothing imported); one of another target
    raw, seg = check_wrong_reviews_refused(corrected, tmp_path, capsys, lambda **kw: _train(corrected, out, **kw))
    # corrections copied next to another workspace are refused (review.json names the original)
    shutil.copytree(corrected / "ws", tmp_path / "moved")
    assert _train(corrected, out, corrections=tmp_path / "moved" / "review" / "segmentation") == 2
    assert "made for workspace" in err_line(capsys)
    # fine-tuning validates on held-back items: --val is refused
    assert _train(corrected, out, "--val", corrected / "syn") == 2
    assert "--val" in err_line(capsys)
    assert corr.is_dir() and not (out / "model.json").exists()
