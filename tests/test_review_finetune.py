"""Fine-tuning on review corrections (issue 23 part 4): ``connectome train vessel --init MODEL
--corrections WS/review/vessels``. A tiny workspace and corrections folder, a 2-step run from the
shipped vessel model; the card lists the corrections and the init model; uncorrected voxels carry
no loss; bad inputs exit 2 with one line; a finished --out is refused without --overwrite."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from connectome.cli import main
from connectome.workspace import Workspace
from unet import default_vessel_model

SHAPE = (8, 128, 128)
TINY_CONFIG = """\
data: {tile_px: 64, val_tile_px: 64, scale_range: [1.0, 1.0]}
trainer: {steps: 2, batch_size: 2, learning_rate: 1.0e-4, warmup_steps: 0, validate_every: 1,
          checkpoint_every: 1, log_every: 1, prefetch: 0}
calibrate_threshold: [0.5]
"""


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _workspace(path) -> Workspace:
    ws = Workspace.create(path, SHAPE, (40.0, 8.0, 8.0))
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    disk = (yy - 64) ** 2 + (xx - 64) ** 2 < 30**2
    rng = np.random.default_rng(0)
    raw = np.where(disk, 200, 90)[None] + rng.integers(-20, 20, SHAPE)
    ws.require_array("raw", "uint8", SHAPE)[...] = raw.clip(0, 255).astype(np.uint8)
    prob = np.where(disk, 128, 20)[None].repeat(SHAPE[0], 0).astype(np.uint8)
    ws.require_array("vessel_prob", "uint8", SHAPE)[...] = prob
    ws.require_array("vessel_mask", "uint8", SHAPE)[...] = (prob >= 128).astype(np.uint8)
    return ws


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    """A workspace with 3 queued boxes, all corrected (the disk = vessel), a few voxels left 255."""
    root = tmp_path_factory.mktemp("ft")
    ws = _workspace(root / "ws")
    assert (
        main(["review", "plan", "--workspace", str(ws.path), "--target", "vessels", "--count", "3", "--box", "4,48,48"])
        == 0
    )
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    lab = ((yy - 64) ** 2 + (xx - 64) ** 2 < 30**2)[None].repeat(SHAPE[0], 0).astype(np.uint8)
    lab[:, :4, :] = 255  # not corrected
    a = zarr.create_array(str(root / "labels.zarr"), shape=SHAPE, chunks=SHAPE, dtype="uint8", zarr_format=3)
    a[:] = lab
    assert (
        main(
            [
                "review",
                "import",
                "--workspace",
                str(ws.path),
                "--target",
                "vessels",
                "--labels",
                str(root / "labels.zarr"),
            ]
        )
        == 0
    )
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    return root


def _train(root, out, *extra) -> int:
    return main(
        [
            "train",
            "vessel",
            "--init",
            str(default_vessel_model()),
            "--corrections",
            str(root / "ws" / "review" / "vessels"),
            "--out",
            str(out),
            "--config",
            str(root / "tiny.yaml"),
            *extra,
        ]
    )


def test_finetune_writes_a_model_whose_card_lists_the_corrections(corrected, tmp_path, capsys):
    from unet.modeldir import read_model_dir

    out = tmp_path / "model"
    assert _train(corrected, out) == 0
    spec = read_model_dir(out)  # a usable vessel model directory
    init = read_model_dir(default_vessel_model())
    doc = spec.doc
    ft = doc["fine_tuning"]
    queue = [
        line.split(",")[0]
        for line in (corrected / "ws" / "review" / "vessels" / "queue.csv").read_text().splitlines()[1:]
    ]
    assert ft["corrections"]["item_ids"] == queue
    assert sorted(ft["corrections"]["train_item_ids"] + ft["corrections"]["validation_item_ids"]) == sorted(queue)
    assert len(ft["corrections"]["validation_item_ids"]) == 1
    assert ft["corrections"]["voxels"]["corrected"] > 0
    assert ft["corrections"]["workspace"]["path"] == str((corrected / "ws").resolve())
    assert ft["init"]["weights_sha256"] == init.weights_sha256
    assert doc["training"]["steps"] == 2 and doc["architecture"] == init.doc["architecture"]
    assert doc["weights"]["from_step"] >= 1  # the init weights (step 0) are a baseline, never exported
    assert doc["validation"]["corrected_boxes"]["iou"] is not None
    card = (out / "MODEL_CARD.md").read_text()
    assert "Fine-tuning on reviewed corrections" in card and init.weights_sha256 in card
    assert all(i in card for i in queue)
    assert "fine-tuned 2 steps" in capsys.readouterr().out
    # a finished --out is never overwritten without --overwrite
    before = (out / "weights.npz").read_bytes()
    assert _train(corrected, out) == 2
    assert "--overwrite" in _err(capsys)
    assert (out / "weights.npz").read_bytes() == before


def test_every_fifth_box_is_held_back():
    from connectome.errors import UserInputError
    from unet.finetune import split_boxes

    assert split_boxes(2) == ([0], [1])
    assert split_boxes(10) == ([0, 1, 2, 3, 5, 6, 7, 8], [4, 9])
    with pytest.raises(UserInputError):
        split_boxes(1)


def test_uncorrected_voxels_carry_no_loss(corrected):
    import tensorflow as tf

    from connectome.review.corrections import load_corrections
    from unet.data import ExampleSpec, LabelledVolume, crop_example
    from unet.finetune import _CorrectedLabel, corrected_target, weighted_loss
    from unet.losses import LossConfig

    c = load_corrections(corrected / "ws" / "review" / "vessels", corrected / "ws")
    raw = np.zeros(SHAPE, np.uint8)
    fg = LabelledVolume(corrected, raw, _CorrectedLabel(c.labels, c.mask, False), (40.0, 8.0, 8.0))
    w = LabelledVolume(corrected, raw, _CorrectedLabel(c.labels, c.mask, True), (40.0, 8.0, 8.0))
    spec = ExampleSpec(0, 2, (64, 64), 1.0)
    _, f = crop_example(fg, 2, 3, 64, spec)
    _, m = crop_example(w, 2, 3, 64, spec)
    y = corrected_target(f, m)
    mask = np.asarray(c.mask[2]) == 1
    assert y[..., 1].max() == 1 and y[..., 1].min() == 0  # some voxels corrected, some not
    assert np.all(y[:2, :, 1] == 0)  # rows 0..3 (255 in the labels): weight 0
    assert np.allclose(y[..., 1], mask.reshape(64, 2, 64, 2).mean(axis=(1, 3)))
    # the loss ignores whatever the target says where the weight is 0
    logits = tf.constant(np.random.default_rng(1).normal(size=(1, 64, 64, 1)), tf.float32)
    cfg = LossConfig(bce_weight=1.0, dice_weight=1.0)
    y2 = y.copy()
    y2[..., 0] = np.where(y[..., 1] == 0, 1.0 - y[..., 0], y[..., 0])  # flip the uncorrected targets
    a = float(weighted_loss(tf.constant(y[None]), logits, cfg))
    b = float(weighted_loss(tf.constant(y2[None]), logits, cfg))
    assert a == pytest.approx(b, abs=1e-7)
    y3 = y.copy()
    y3[..., 0] = np.where(y[..., 1] > 0, 1.0 - y[..., 0], y[..., 0])  # flipping corrected ones matters
    assert float(weighted_loss(tf.constant(y3[None]), logits, cfg)) != pytest.approx(a, abs=1e-4)


def test_bad_inputs_exit_2_with_one_line(corrected, tmp_path, capsys):
    corr = str(corrected / "ws" / "review" / "vessels")
    out = str(tmp_path / "m")
    # --corrections without --init, and the reverse
    assert main(["train", "vessel", "--corrections", corr, "--out", out]) == 2
    assert "--init" in _err(capsys)
    assert main(["train", "vessel", "--init", str(default_vessel_model()), "--out", out]) == 2
    assert "--corrections" in _err(capsys)
    # normal training still needs --data
    assert main(["train", "vessel", "--out", out]) == 2
    assert "--data" in _err(capsys)
    # --init that is not a vessel model
    assert (
        main(
            [
                "train",
                "vessel",
                "--init",
                str(default_vessel_model().parent / "synapse"),
                "--corrections",
                corr,
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "--init" in _err(capsys)
    assert main(["train", "vessel", "--init", str(tmp_path), "--corrections", corr, "--out", out]) == 2
    _err(capsys)
    # a review folder without corrections, and one whose corrections are all 255 (nothing corrected)
    ws2 = _workspace(tmp_path / "ws2")
    assert (
        main(
            ["review", "plan", "--workspace", str(ws2.path), "--target", "vessels", "--count", "2", "--box", "4,48,48"]
        )
        == 0
    )
    corr2 = str(ws2.path / "review" / "vessels")
    assert main(["train", "vessel", "--init", str(default_vessel_model()), "--corrections", corr2, "--out", out]) == 2
    assert "no corrections" in _err(capsys)
    a = zarr.create_array(
        str(tmp_path / "none.zarr"), shape=SHAPE, chunks=SHAPE, dtype="uint8", zarr_format=3, fill_value=255
    )
    a[:] = np.full(SHAPE, 255, np.uint8)
    assert (
        main(
            [
                "review",
                "import",
                "--workspace",
                str(ws2.path),
                "--target",
                "vessels",
                "--labels",
                str(tmp_path / "none.zarr"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["train", "vessel", "--init", str(default_vessel_model()), "--corrections", corr2, "--out", out]) == 2
    assert "no corrected voxels" in _err(capsys)
    # corrections copied next to another workspace are refused (review.json names the original)
    shutil.copytree(corrected / "ws", tmp_path / "moved")
    assert (
        main(
            [
                "train",
                "vessel",
                "--init",
                str(default_vessel_model()),
                "--corrections",
                str(tmp_path / "moved" / "review" / "vessels"),
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "made for workspace" in _err(capsys)
    assert not (tmp_path / "m" / "model.json").exists()
