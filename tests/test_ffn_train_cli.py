"""`connectome train ffn` as a real command: bad input, 2 Horovod ranks with identical weights,
and a run that continues its step count from the checkpoint after it was stopped."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import BIN, run_cli

TINY = """model: {depth: 2, features: 8, fov_zyx: [7, 13, 13], deltas_zyx: [2, 3, 3]}
examples: {min_object_voxels: 300, val_episodes_per_volume: 4, val_segment_zyx: [8, 48, 48], val_segment_max_fovs: 1500,
           val_min_segment_voxels: 50}
trainer: {batch_size: 2, checkpoint_every: 5, validate_every: 10, log_every: 5, warmup_steps: 2,
          intra_op_threads: 1, inter_op_threads: 1}
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("ffncli")
    for s in (411, 412, 413):
        generate(root / f"s{s}", preset="small", seed=s, shape_zyx=(12, 128, 128))
    (root / "tiny.yaml").write_text(TINY)
    return root


def test_bad_input_exit_2(synth, tmp_path):
    r = run_cli("train", "ffn", "--data", synth / "s411", "--out", tmp_path / "m", "--config", synth / "tiny.yaml")
    assert r.returncode == 2 and "--val" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli(
        "train",
        "ffn",
        "--data",
        synth / "s411",
        "--val",
        synth / "s411",
        "--out",
        tmp_path / "m",
        "--config",
        synth / "tiny.yaml",
    )
    assert r.returncode == 2 and "also a training folder" in r.stderr
    r = run_cli("train", "ffn", "--data", tmp_path / "nowhere", "--val", synth / "s412", "--out", tmp_path / "m")
    assert r.returncode == 2 and "nowhere" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {fov_zyx: [8, 13, 13]}\n")
    r = run_cli(
        "train", "ffn", "--data", synth / "s411", "--val", synth / "s412", "--out", tmp_path / "m", "--config", bad
    )
    assert r.returncode == 2 and "fov_zyx" in r.stderr
    assert not (tmp_path / "m").exists()


def test_two_horovod_ranks_keep_identical_weights(synth, tmp_path):
    pytest.importorskip("horovod.tensorflow")  # the only test here that needs Horovod
    cmd = [
        str(BIN / "horovodrun"),
        "-np",
        "2",
        "-H",
        "localhost:2",
        "--gloo",
        str(BIN / "connectome"),
        "train",
        "ffn",
        "--data",
        str(synth / "s411"),
        "--data",
        str(synth / "s413"),
        "--val",
        str(synth / "s412"),
        "--out",
        str(tmp_path / "m"),
        "--config",
        str(synth / "tiny.yaml"),
        "--steps",
        "10",
    ]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    digests = doc["training"]["rank_weight_digests"]
    assert doc["training"]["ranks"] == 2 and len(digests) == 2 and digests[0] == digests[1]
    assert (
        doc["task"] == "ffn"
        and doc["weights"]["parameters"] == 2 * (2 * 27 * 8 + 8) // 2 + (8 * 27 * 8 + 8) + 2 * (8 * 27 * 8 + 8) + 9
    )


def test_resume_continues_the_step_count(synth, tmp_path):
    pytest.importorskip("tensorflow")
    args = [
        "train",
        "ffn",
        "--data",
        synth / "s411",
        "--val",
        synth / "s412",
        "--out",
        tmp_path / "m",
        "--config",
        synth / "tiny.yaml",
    ]
    r = run_cli(*args, "--steps", "5")
    assert r.returncode == 0, r.stderr
    r = run_cli(*args, "--steps", "10")  # the 5-step model is finished: extending it replaces it
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = run_cli(*args, "--steps", "10", "--overwrite")
    assert r.returncode == 0, r.stderr
    starts = [json.loads(line) for line in (tmp_path / "m" / "train" / "log.jsonl").read_text().splitlines()]
    starts = [e for e in starts if e["event"] == "start"]
    assert [(e["start_step"], e["resumed"]) for e in starts] == [(0, False), (5, True)]
    assert json.loads((tmp_path / "m" / "model.json").read_text())["training"]["steps"] == 10
