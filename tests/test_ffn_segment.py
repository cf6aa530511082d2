"""`connectome segment`: subvolumes reconciled into one segmentation (2x2x2 subvolumes agree with
one subvolume, no split at the borders), resume after SIGKILL, identical output across executors
(mpi with 2 ranks included), the FFN path with a model directory, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import BIN, run_cli, tree_digest

from connectome.evaluate.segmentation import Contingency, adapted_rand


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("seg")
    syn = generate(root / "syn", preset="small", seed=421, shape_zyx=(16, 128, 128))
    ws = root / "ws"
    r = run_cli("import", syn / "truth.zarr" / "raw", "--workspace", ws, "--voxel-size", "40,8,8")
    assert r.returncode == 0, r.stderr
    # the boundary map of the default method (the shipped boundary model)
    r = run_cli("predict-boundaries", "--workspace", ws)
    assert r.returncode == 0, r.stderr
    truth = np.asarray(zarr.open_group(str(syn / "truth.zarr"), mode="r")["neurons"][:])
    return root, ws, truth


def _copy(ws: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(ws, dst, ignore=shutil.ignore_patterns("segment*", "segmentation"))
    return dst


def _seg(ws: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(ws / "volume.zarr"), mode="r")["segmentation"][:])


def _arand(a, b) -> float:
    return adapted_rand(Contingency.from_labels(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))[0]


@pytest.fixture(scope="module", params=["watershed", "baseline"])
def method(request):
    """The default method (learned-boundary watershed) and the classical baseline."""
    return request.param


@pytest.fixture(scope="module")
def single_and_split(data, method):
    root, ws, truth = data
    one = _copy(ws, root / f"one_{method}")
    r = run_cli(
        "segment", "--workspace", one, "--method", method, "--block-shape", "16,128,128", "--executor", "serial"
    )
    assert r.returncode == 0, r.stderr
    eight = _copy(ws, root / f"eight_{method}")
    r = run_cli(
        "segment",
        "--workspace",
        eight,
        "--method",
        method,
        "--block-shape",
        "8,64,64",
        "--executor",
        "local",
        "--workers",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert "8 blocks processed" in r.stdout
    return one, eight


def test_subvolumes_reconcile_like_a_single_run(data, single_and_split, method):
    root, ws, truth = data
    one, eight = single_and_split
    a, b = _seg(one), _seg(eight)
    e_one, e_eight = _arand(truth, a), _arand(truth, b)
    print(f"{method} ARAND vs truth: 1 subvolume {e_one:.4f}, 2x2x2 subvolumes {e_eight:.4f}")
    assert abs(e_one - e_eight) <= 0.02
    # no object is split exactly at a core border: voxel pairs across each border plane that
    # are one object in the single run stay one object (as often as pairs one plane inside)
    for ax, at in ((0, 8), (1, 64), (2, 64)):

        def pairs_kept(k, ax=ax):  # called within this iteration only
            lo = np.take(a, k - 1, axis=ax), np.take(b, k - 1, axis=ax)
            hi = np.take(a, k, axis=ax), np.take(b, k, axis=ax)
            same = (lo[0] == hi[0]) & (lo[0] > 0)
            return float(((lo[1] == hi[1])[same]).mean())

        assert pairs_kept(at) >= min(pairs_kept(at - 2), pairs_kept(at + 2)) - 0.02, ax
    assert b.dtype == np.uint64 and b.max() == len(np.unique(b[b > 0]))  # ids 1..K


def test_identical_across_executors(data, single_and_split, method, tmp_path, request):
    root, ws, _ = data
    _, eight = single_and_split
    ref = _seg(eight)
    for executor in ("serial", "mpi"):
        w = _copy(ws, tmp_path / executor)
        args = ["segment", "--workspace", str(w), "--method", method, "--block-shape", "8,64,64"]
        if executor == "mpi":
            r = subprocess.run(
                [str(BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "connectome", *args, "--executor", "mpi"],
                capture_output=True,
                text=True,
                timeout=300,
            )
        else:
            r = run_cli(*args, "--executor", executor)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(_seg(w), ref)


def test_sigkill_then_resume(data, single_and_split, method, tmp_path):
    root, ws, _ = data
    _, eight = single_and_split
    w = _copy(ws, tmp_path / "w")
    cmd = [
        sys.executable,
        "-m",
        "connectome",
        "segment",
        "--workspace",
        str(w),
        "--method",
        method,
        "--block-shape",
        "8,64,64",
        "--executor",
        "serial",
    ]
    done = w / "blockwise" / "segment-subvolumes" / "done"
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "CONNECTOME_BLOCK_DELAY_S": "0.5"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(os.listdir(done))
    assert 3 <= finished < 8
    r = run_cli("segment", "--workspace", w, "--method", method, "--block-shape", "8,64,64", "--executor", "serial")
    assert r.returncode == 0, r.stderr
    assert f"{8 - finished} blocks processed, {finished} already done" in r.stdout
    np.testing.assert_array_equal(_seg(w), _seg(eight))


# ---------------------------------------------------------------------------------------------
# the FFN path


def _model_dir(path: Path, depth=2, fov=(7, 13, 13), voxel=(40, 8, 8), update_bias=-4.0) -> Path:
    """A tiny FFN whose update is a constant ``update_bias``: it never moves and claims nothing
    but a seed (a fast, fully predictable network for the plumbing)."""
    pytest.importorskip("tensorflow")
    from connectome.training import weights as wio
    from ffn.model import FFNModelConfig, build_model
    from ffn.modeldir import write_model_dir

    cfg = FFNModelConfig(depth=depth, features=4, fov_zyx=fov, deltas_zyx=(2, 3, 3))
    m = build_model(cfg)
    arrays = {k: np.zeros_like(v) for k, v in wio.variables_dict(m.weights).items()}
    bias = [k for k in arrays if k.startswith("update") and "bias" in k]
    arrays[bias[0]][:] = update_bias
    write_model_dir(path, arrays, cfg, voxel, {"inference": {}})
    return path


def test_ffn_path_runs_with_a_model_directory(data, tmp_path):
    root, ws, _ = data
    model = _model_dir(tmp_path / "m")
    w = _copy(ws, tmp_path / "w")
    cfg = tmp_path / "few_seeds.yaml"
    cfg.write_text("inference:\n  seed_min_distance: 12\n  seed_min_radius_nm: 64\n")
    r = run_cli(
        "segment",
        "--workspace",
        w,
        "--model",
        model,
        "--block-shape",
        "16,64,128",
        "--executor",
        "serial",
        "--config",
        cfg,
    )
    assert r.returncode == 0, r.stderr
    seg = _seg(w)
    assert seg.shape == (16, 128, 128) and not seg.any()  # the network claims nothing beyond its seeds
    assert len(list((w / "segment" / "subvolumes").glob("*.npz"))) == 2


def test_a_16nm_model_runs_on_8nm_data_at_its_own_pixels(data, tmp_path):
    root, ws, _ = data
    # update +6 (pad logit -2.9 -> 3.1 > logit(0.9)): it moves everywhere and every FOV it sees is
    # one object, so the first seed of each subvolume floods it whole
    model = _model_dir(tmp_path / "m", voxel=(40, 16, 16), update_bias=6.0)
    w = _copy(ws, tmp_path / "w")
    r = run_cli("segment", "--workspace", w, "--model", model, "--block-shape", "16,64,128", "--executor", "serial")
    assert r.returncode == 0, r.stderr
    seg = _seg(w)
    assert seg.shape == (16, 128, 128)
    assert (seg > 0).all() and len(np.unique(seg)) == 1  # two subvolumes, reconciled into one object
    bad = tmp_path / "odd.yaml"
    bad.write_text("overlap_zyx: [4, 9, 9]\n")
    r = run_cli("segment", "--workspace", _copy(ws, tmp_path / "w2"), "--model", model, "--config", bad)
    assert r.returncode == 2 and "multiples of 2" in r.stderr, r.stderr


def test_upsampled_borders_snap_to_full_resolution_membranes():
    from ffn.segment import snap_to_membranes

    raw = np.full((2, 32, 48), 200, np.uint8)
    raw[:, :, 21] = 30  # a membrane at x = 21
    coarse = np.ones((2, 16, 24), np.uint64)
    coarse[:, :, 12:] = 2  # the coarse border at x = 24
    up = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    up[1, :, 40:] = 0  # unlabelled pixels
    out = snap_to_membranes(raw, up, 2)
    assert (out[:, :, :21] == 1).all() and (out[0, :, 22:] == 2).all()
    assert (out[1, :, 40:] == 0).all()  # the labelled area only...
    filled = snap_to_membranes(raw, up, 2, fill=True)
    assert (filled[1, :, 22:] == 2).all()  # ...unless filling
    mask = np.zeros(raw.shape, bool)
    mask[1, :, 44:] = True
    assert (snap_to_membranes(raw, up, 2, mask=mask, fill=True)[1, :, 44:] == 0).all()


def test_bad_input_exit_2(data, tmp_path):
    root, ws, _ = data
    w = _copy(ws, tmp_path / "w")
    before = tree_digest(w)

    def fails(*args, expect):
        r = run_cli("segment", "--workspace", w, *args)
        assert r.returncode == 2, r.stderr
        assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

    fails("--model", tmp_path / "missing", expect="not found")
    m = _model_dir(tmp_path / "m1")
    (m / "weights.npz").unlink()
    fails("--model", m, expect="weights file missing")
    m = _model_dir(tmp_path / "m2")
    import json

    doc = json.loads((m / "model.json").read_text())
    doc["architecture"]["depth"] = 3  # weights for depth 2
    (m / "model.json").write_text(json.dumps(doc))
    fails("--model", m, expect="does not fit")
    fails("--model", _model_dir(tmp_path / "m3", fov=(17, 13, 13)), expect="smaller than the model's field of view")
    fails("--model", _model_dir(tmp_path / "m4", voxel=(30, 4, 4)), expect="voxel size")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("inference:\n  move_threshold: 1.5\n")
    fails("--model", _model_dir(tmp_path / "m5"), "--config", cfg, expect="move_threshold")
    assert tree_digest(w) == before


def test_fully_masked_volume_gives_an_empty_segmentation(data, tmp_path):
    root, ws, _ = data
    w = _copy(ws, tmp_path / "w")
    g = zarr.open_group(str(w / "volume.zarr"), mode="r+")
    vm = g.create_array("vessel_mask", shape=(16, 128, 128), chunks=(16, 128, 128), dtype="uint8", fill_value=0)
    vm[:] = 1
    vm.attrs["voxel_size_nm"] = [40.0, 8.0, 8.0]
    r = run_cli("segment", "--workspace", w, "--method", "baseline", "--block-shape", "8,64,64", "--executor", "serial")
    assert r.returncode == 0, r.stderr
    assert "covers the whole volume" in r.stderr
    assert not _seg(w).any()
