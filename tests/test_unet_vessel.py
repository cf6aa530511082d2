"""`connectome mask-vessels` with the shipped model (unet/models/vessel): the blockwise mask equals
a whole-volume prediction (no seams), the model masks an unseen synthetic volume well, and a bad
``--model`` stops with exit code 2 and one line, leaving the workspace untouched."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli, tree_digest

from unet import default_vessel_model

#: the model `mask-vessels` uses by default (the shipped one unless $CONNECTOME_VESSEL_MODEL is set)
DEFAULT_VESSEL_MODEL = default_vessel_model()

#: `connectome synth --preset small` seed of the test volume: used neither for training nor for
#: validation (checkpoint / threshold choice) of the shipped model (see its MODEL_CARD.md)
SEED = 951
SHAPE_ZYX = (8, 256, 256)
#: the shipped model scores 0.896 on this volume (see the QUALITY note in the test below)
MIN_IOU = 0.85


@pytest.fixture(scope="module")
def unseen_synth(tmp_path_factory):
    from connectome.synth import generate

    return generate(tmp_path_factory.mktemp("vessel") / "synth", shape_zyx=SHAPE_ZYX, seed=SEED, preset="small")


def _import(src, ws):
    r = run_cli("import", src, "--workspace", ws, "--voxel-size", "40,8,8", "--executor", "serial", "-q")
    assert r.returncode == 0, r.stderr


def test_shipped_model_is_small_and_self_describing():
    from unet.modeldir import read_model_dir

    spec = read_model_dir(DEFAULT_VESSEL_MODEL)
    assert (DEFAULT_VESSEL_MODEL / "MODEL_CARD.md").is_file()
    assert spec.weights_file.stat().st_size < 5e6
    doc = spec.doc
    seeds = {d["seed"] for d in doc["training"]["data"]} | {d["seed"] for d in doc["training"]["validation_data"]}
    assert SEED not in seeds  # the test volume below is unseen
    assert doc["validation"]["mean_iou"] >= 0.9 and doc["validation"]["threshold_calibrated_on_these_volumes"]


def test_shipped_model_masks_an_unseen_volume(unseen_synth, tmp_path):
    ws = tmp_path / "ws"
    _import(unseen_synth / "truth.zarr" / "raw", ws)
    r = run_cli("mask-vessels", "--workspace", ws, "--executor", "serial")  # the default (shipped) model
    assert r.returncode == 0, r.stderr
    r = run_cli("evaluate", "--workspace", ws, "--truth", unseen_synth)
    assert r.returncode == 0, r.stderr
    vessels = json.loads((ws / "evaluation.json").read_text())["vessels"]
    # QUALITY: the small preset's vessel is a scaled-down one (radius ~30 px at 8 nm, so one pixel of
    # boundary error costs ~6 % IoU); a broken or untrained model scores far below this
    assert vessels["iou"] >= MIN_IOU, vessels
    assert 0.5 < vessels["predicted_voxels"] / vessels["truth_voxels"] < 2.0


def test_blockwise_mask_equals_whole_volume_prediction(unseen_synth, tmp_path):
    """Several blocks, cut across a 2 x 2 tile grid, against one model call per whole section."""
    import tifffile
    import zarr

    from connectome.evaluate import mask_overlap
    from connectome.workspace import Workspace
    from unet.vessel import VesselMaskConfig, predict_array

    raw = np.asarray(zarr.open_group(str(unseen_synth / "truth.zarr"), mode="r")["raw"][2:6])
    tifffile.imwrite(tmp_path / "raw.tif", raw, photometric="minisblack")
    ws = tmp_path / "ws"
    _import(tmp_path / "raw.tif", ws)
    # tiles of 448 model px (16 nm) with the model's 192 px margin: cores of 64 model px = 128 raw px,
    # so each 256 x 256 section takes 2 x 2 tiles; blocks of 96 x 160 px cut through tiles and cores
    cfg = tmp_path / "seams.yaml"
    cfg.write_text("tile_px: 448\nmargin_px: 192\nblockwise: {block_shape_zyx: [3, 96, 160]}\n")
    r = run_cli("mask-vessels", "--workspace", ws, "--config", cfg, "--executor", "serial")
    assert r.returncode == 0, r.stderr
    assert "12 blocks processed" in r.stdout

    w = Workspace.open(ws)
    prob_blocks, mask_blocks = np.asarray(w.array("vessel_prob")[:]), np.asarray(w.array("vessel_mask")[:])
    prob_whole, mask_whole = predict_array(raw, 8.0, DEFAULT_VESSEL_MODEL, VesselMaskConfig(), whole=True)
    assert mask_whole.sum() > 1000  # a vessel is there
    assert mask_overlap(mask_blocks, mask_whole)["iou"] >= 0.999
    assert np.abs(prob_blocks.astype(int) - prob_whole.astype(int)).max() <= 3  # of 255


# ---------------------------------------------------------------------------------------------
# bad --model: exit 2, one line naming the problem, workspace untouched


def _copy_model(dst):
    dst.mkdir()
    for name in ("model.json", "weights.npz", "MODEL_CARD.md"):
        shutil.copy(DEFAULT_VESSEL_MODEL / name, dst / name)
    return dst


def _edit_json(model, change):
    doc = json.loads((model / "model.json").read_text())
    change(doc)
    (model / "model.json").write_text(json.dumps(doc))


def _missing(m):
    shutil.rmtree(m)


def _flipped_byte(m):
    data = bytearray((m / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (m / "weights.npz").write_bytes(bytes(data))


def _truncated_with_matching_sha(m):
    from unet.modeldir import sha256_file

    (m / "weights.npz").write_bytes((m / "weights.npz").read_bytes()[:1000])
    _edit_json(m, lambda d: d["weights"].update(sha256=sha256_file(m / "weights.npz")))


def _five_sections(m):  # a model description for 5-section input; the weights take 3
    def change(d):
        d["architecture"]["in_channels"] = 5
        d["input"]["z_context"] = 5

    _edit_json(m, change)


def _other_task(m):
    _edit_json(m, lambda d: d.update(task="synapse"))


def _not_json(m):
    (m / "model.json").write_text("{ not json")


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (_missing, "model directory not found"),
        (_flipped_byte, "weights.npz: corrupt or replaced (sha256 differs"),
        (_truncated_with_matching_sha, "weights.npz: corrupt (not a readable weights file"),
        (_five_sections, "weights.npz: does not fit the architecture in model.json"),
        (_other_task, "is a 'synapse' model; this command needs a 'vessel' model"),
        (_not_json, "model.json: not valid JSON"),
    ],
    ids=["missing", "corrupt", "truncated", "other-input-shape", "other-task", "bad-json"],
)
def test_bad_model_exits_2_with_one_line_and_leaves_workspace_untouched(tmp_path, volume_u8, damage, fragment):
    import tifffile

    tifffile.imwrite(tmp_path / "v.tif", volume_u8)
    ws = tmp_path / "ws"
    _import(tmp_path / "v.tif", ws)
    model = _copy_model(tmp_path / "model")
    damage(model)
    before = tree_digest(ws)
    r = run_cli("mask-vessels", "--workspace", ws, "--model", model, "--executor", "serial")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert tree_digest(ws) == before


def test_record_test_adds_results_to_the_card_without_touching_the_weights(tmp_path):
    from unet.modeldir import read_model_dir
    from unet.train import record_test

    m = _copy_model(tmp_path / "m")
    weights = (m / "weights.npz").read_bytes()
    row = dict(seed=7, preset="demo", shape_zyx=[4, 64, 64], iou=0.91, dice=0.95, precision=0.9, recall=0.92)
    record_test(m, [row], ["connectome evaluate --workspace WS --truth SYN"], ["resumed once"])
    assert (m / "weights.npz").read_bytes() == weights
    doc = read_model_dir(m).doc  # still a valid model directory
    assert doc["test"]["volumes"] == [row] and doc["notes"] == ["resumed once"]
    card = (m / "MODEL_CARD.md").read_text()
    assert "| 7 | demo | [4, 64, 64] | 0.9100 | 0.9500 |" in card and "- resumed once" in card
    assert "connectome evaluate --workspace WS --truth SYN" in card
