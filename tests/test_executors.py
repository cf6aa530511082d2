"""The same stages give identical output with every executor: serial, local (process pool),
dask (a real dask.distributed scheduler + workers on 127.0.0.1 via a scheduler file) and mpi
(2 ranks under mpiexec)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import BIN, run_cli

from connectome.workspace import Workspace


def _stage_cmd(executor, sched_file):
    extra = ["--executor", executor]
    if executor == "dask":
        extra += ["--scheduler-file", str(sched_file)]
    if executor == "local":
        extra += ["--workers", "2"]
    return extra


def _run(executor, args, sched_file):
    if executor == "mpi":
        cmd = [
            str(BIN / "mpiexec"),
            "-n",
            "2",
            sys.executable,
            "-m",
            "connectome",
            *map(str, args),
            "--executor",
            "mpi",
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return run_cli(*args, *_stage_cmd(executor, sched_file))


@pytest.mark.parametrize("executor", ["serial", "local", "dask", "mpi"])
def test_import_and_smooth_identical_across_executors(tmp_path, executor, dask_cluster):
    rng = np.random.default_rng(7)
    vol = rng.integers(0, 256, size=(17, 90, 75), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", vol)
    ws = tmp_path / f"ws_{executor}"
    r = _run(
        executor,
        ["import", tmp_path / "v.tif", "--workspace", ws, "--voxel-size", "40,8,8", "--block-shape", "5,32,32"],
        dask_cluster,
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.asarray(Workspace.open(ws).array("raw")[:]), vol)

    cfg = tmp_path / "smooth.yaml"
    cfg.write_text("sigma_nm: [60, 20, 12]\noutput_dtype: float32\nblockwise:\n  block_shape_zyx: [4, 24, 40]\n")
    r = _run(executor, ["smooth", "--workspace", ws, "--config", cfg], dask_cluster)
    assert r.returncode == 0, r.stderr
    got = np.asarray(Workspace.open(ws).array("raw_smooth")[:])

    # reference: scipy on the whole volume at once
    from scipy.ndimage import gaussian_filter

    want = gaussian_filter(vol.astype(np.float32), (60 / 40, 20 / 8, 12 / 8), truncate=4.0, mode="reflect")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    # and bit-identical to the serial executor
    ref = tmp_path / "ref"
    shutil.copytree(ws, ref)
    shutil.rmtree(ref / "blockwise" / "smooth")
    Workspace.open(ref).remove_array("raw_smooth")
    r = run_cli("smooth", "--workspace", ref, "--config", cfg, "--executor", "serial")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.asarray(Workspace.open(ref).array("raw_smooth")[:]), got)
    runs = (ws / "blockwise" / "smooth" / "runs.jsonl").read_text().splitlines()
    assert len(runs) == 1 and '"processed": 40' in runs[0]
    if executor == "mpi":  # both ranks took blocks: each done-marker names its worker as "host:pid"
        for stage in ("import", "smooth"):
            done = sorted((ws / "blockwise" / stage / "done").iterdir())
            workers = {json.loads(m.read_text())["host"] for m in done}
            assert len(workers) == 2, (stage, len(done), workers)


def test_dask_without_scheduler_file_is_usage_error(tmp_path, volume_u8):
    tifffile.imwrite(tmp_path / "v.tif", volume_u8)
    r = run_cli(
        "import", tmp_path / "v.tif", "--workspace", tmp_path / "ws", "--voxel-size", "40,8,8", "--executor", "dask"
    )
    assert r.returncode == 2 and "--scheduler-file" in r.stderr
    r = run_cli(
        "import",
        tmp_path / "v.tif",
        "--workspace",
        tmp_path / "ws",
        "--voxel-size",
        "40,8,8",
        "--executor",
        "dask",
        "--scheduler-file",
        tmp_path / "missing.json",
    )
    assert r.returncode == 2 and "scheduler file not found" in r.stderr
