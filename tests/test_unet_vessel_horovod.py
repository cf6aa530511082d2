"""`connectome train vessel` data-parallel: a real 2-rank Horovod run (``horovodrun --gloo``) of
the vessel trainer keeps identical weights on both ranks, and a 1-rank run with the same global
batch reaches a validation loss in the same range. Tiny network and volumes, a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN

pytest.importorskip("tensorflow")
pytest.importorskip("horovod.tensorflow")

from connectome.training import weights as wio  # noqa: E402

#: a tiny U-Net and a few steps; lr not scaled with the rank count, so that 2 ranks x batch 2 and
#: 1 rank x batch 4 are the same optimisation problem (only the examples drawn differ)
CONFIG = """
model: {depth: 2, base_filters: 4, max_filters: 8, in_channels: 3}
data: {tile_px: 32, val_tile_px: 64, val_tiles_per_volume: 6, scale_range: [1.0, 1.0], positive_fraction: 0.7}
trainer: {steps: %(steps)d, batch_size: %(batch)d, learning_rate: 0.01, lr_scaling: none, warmup_steps: 0,
          validate_every: %(steps)d, checkpoint_every: 100, log_every: 5, intra_op_threads: 1, inter_op_threads: 1,
          distributed: %(distributed)s, prefetch: 0, seed: 5}
inference_tile_px: 64
inference_margin_px: 16
final_validation: false
"""
STEPS = 30


def fake_synth(path: Path, seed: int, shape=(6, 96, 96)) -> Path:
    """A `connectome synth`-like folder (truth.zarr raw + vessels, synth.json): a bright lumen with a
    dark ring (the vessel label) on a noisy textured background, drifting across the sections."""
    import zarr
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    z, y, x = shape
    yy, xx = np.mgrid[0:y, 0:x]
    raw = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.uint8)
    cy, cx, r = rng.uniform(0.35, 0.65) * y, rng.uniform(0.35, 0.65) * x, rng.uniform(14, 22)
    for k in range(z):
        d = np.hypot(yy - cy - 1.5 * k, xx - cx)
        tex = gaussian_filter(rng.normal(size=(y, x)), 2.0)
        img = 0.45 + 0.15 * tex / tex.std()
        img[d < r] = 0.85
        img[(d >= r) & (d < r + 4)] = 0.15
        raw[k] = img + rng.normal(0, 0.06, (y, x))
        lab[k] = d < r + 4
    group = zarr.open_group(str(path / "truth.zarr"), mode="w", zarr_format=3)
    for name, data in (("raw", np.clip(raw * 255, 0, 255).astype(np.uint8)), ("vessels", lab)):
        a = group.create_array(name, shape=shape, chunks=shape, dtype=data.dtype)
        a[:] = data
        a.attrs["voxel_size_nm"] = [40.0, 8.0, 8.0]
    (path / "synth.json").write_text(
        json.dumps(
            {
                "generator": "test fake",
                "seed": seed,
                "preset": "fake",
                "shape_zyx": list(shape),
                "voxel_size_nm": [40.0, 8.0, 8.0],
            }
        )
    )
    return path


def _train(tmp: Path, name: str, ranks: int, batch: int, data: Path, val: Path) -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(CONFIG % {"steps": STEPS, "batch": batch, "distributed": "horovod" if ranks > 1 else "none"})
    out = tmp / name
    cmd = [
        sys.executable,
        "-m",
        "connectome",
        "train",
        "vessel",
        "--data",
        str(data),
        "--val",
        str(val),
        "--out",
        str(out),
        "--config",
        str(cfg),
        "-q",
    ]
    if ranks > 1:
        cmd = [str(BIN / "horovodrun"), "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo"] + cmd
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out


def _validations(out: Path) -> list[dict]:
    lines = (out / "train" / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "validate"]


def test_two_ranks_identical_weights_and_same_loss_range_as_one_rank(tmp_path):
    data = fake_synth(tmp_path / "data", seed=11)
    val = fake_synth(tmp_path / "val", seed=12)

    two = _train(tmp_path, "two", ranks=2, batch=2, data=data, val=val)
    doc = json.loads((two / "model.json").read_text())
    t = doc["training"]
    assert t["ranks"] == 2 and t["global_batch"] == 4
    digests = t["rank_weight_digests"]  # each rank hashed its own variables after the last step
    assert len(digests) == 2 and digests[0] == digests[1]
    # ... and that is the weights rank 0 saved
    assert wio.digest(wio.load_npz(two / "train" / "last_weights.npz")) == digests[0]

    one = _train(tmp_path, "one", ranks=1, batch=4, data=data, val=val)
    t1 = json.loads((one / "model.json").read_text())["training"]
    assert t1["ranks"] == 1 and t1["global_batch"] == 4

    v2, v1 = _validations(two), _validations(one)
    assert [e["step"] for e in v2] == [e["step"] for e in v1] == [0, STEPS]
    assert v2[0]["loss"] == pytest.approx(v1[0]["loss"], rel=1e-4)  # same initial weights (seeded)
    base, loss2, loss1 = v1[0]["loss"], v2[-1]["loss"], v1[-1]["loss"]
    # both trained (well below the untrained baseline) to the same range
    assert loss2 < 0.6 * base and loss1 < 0.6 * base, (base, loss1, loss2)
    assert abs(loss2 / loss1 - 1) < 0.25, (loss1, loss2)
