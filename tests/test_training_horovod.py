"""Data-parallel training is exact: two Horovod ranks with batch 2 each (different data per
rank) end with the same weights as one process whose batch of 4 is the two ranks' batches
concatenated, and both ranks hold identical weights."""

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

from test_training import CFG, ToyJob  # noqa: E402

from connectome.training import weights as wio  # noqa: E402
from connectome.training.distributed import Session  # noqa: E402
from connectome.training.loop import run_training  # noqa: E402

HERE = Path(__file__).parent


@pytest.mark.parametrize("launcher", ["mpiexec", "horovodrun"])
def test_two_ranks_equal_one_process_with_the_concatenated_batch(tmp_path, launcher):
    two = CFG.__class__(**{**CFG.__dict__, "batch_size": 2, "lr_scaling": "none"})
    one = CFG.__class__(**{**CFG.__dict__, "batch_size": 4, "lr_scaling": "none"})
    cmd = [sys.executable, str(HERE / "hvd_toy_run.py"), str(tmp_path / "run")]
    cmd = (
        [str(BIN / "mpiexec"), "-n", "2"]
        if launcher == "mpiexec"
        else [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo"]
    ) + cmd
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "TOY_CFG": json.dumps(two.__dict__)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads((tmp_path / "run" / f"rank{k}.json").read_text()) for k in (0, 1)]
    digests = results[0]["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] and results[1]["rank_weight_digests"] == digests
    assert results[0]["ranks"] == 2 and results[0]["global_batch"] == 4

    ref = run_training(ToyJob(concat_ranks=2), one, tmp_path / "ref", Session())
    a = wio.load_npz(tmp_path / "run" / "work" / "last_weights.npz")
    b = wio.load_npz(tmp_path / "ref" / "last_weights.npz")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert ref.steps == results[0]["steps"] == CFG.steps
