"""Resumption: a stage killed with SIGKILL mid-run and rerun gives output bit-identical to an
uninterrupted run and recomputes no finished block; retries and failures name the block."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import kill_mid_run, run_cli

from connectome.blockwise import BlockGrid, MarkerStore, Task, make_executor, run_task
from connectome.errors import StageFailed, UserInputError
from connectome.workspace import Workspace

SMOOTH = ["--sigma-nm", "40,16,16", "--block-shape", "4,32,32"]


def _prepared_workspace(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    tifffile.imwrite(tmp_path / "v.tif", rng.integers(0, 256, size=(24, 96, 96), dtype=np.uint8))
    ws = tmp_path / "ws"
    r = run_cli("import", tmp_path / "v.tif", "--workspace", ws, "--voxel-size", "40,8,8", "--executor", "serial")
    assert r.returncode == 0, r.stderr
    return ws


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, executor):
    ws = _prepared_workspace(tmp_path)
    ref = tmp_path / "ref"
    shutil.copytree(ws, ref)
    assert run_cli("smooth", "--workspace", ref, *SMOOTH, "--executor", "serial").returncode == 0
    total = 6 * 3 * 3

    done_dir = ws / "blockwise" / "smooth" / "done"
    kill_mid_run(["smooth", "--workspace", ws, *SMOOTH, "--executor", executor, "--workers", "2"], done_dir, 8, 0.15)
    time.sleep(0.5)  # let orphaned pool workers notice and exit
    markers = MarkerStore(ws / "blockwise" / "smooth")
    finished = {b: markers.read_marker(b) for b in markers.done_ids()}
    assert 8 <= len(finished) < total, "the kill must land mid-run"

    r = run_cli("smooth", "--workspace", ws, *SMOOTH, "--executor", executor, "--workers", "2")
    assert r.returncode == 0, r.stderr
    last = markers.runs()[-1]
    assert last["already_done"] == len(finished)
    assert last["processed"] == total - len(finished)  # nothing finished was recomputed
    for block_id, info in finished.items():
        assert markers.read_marker(block_id) == info
    assert markers.done_ids() == {b.block_id for b in BlockGrid((24, 96, 96), (4, 32, 32)).blocks()}
    got = np.asarray(Workspace.open(ws).array("raw_smooth")[:])
    want = np.asarray(Workspace.open(ref).array("raw_smooth")[:])
    np.testing.assert_array_equal(got, want)
    # a third run does nothing
    r = run_cli("smooth", "--workspace", ws, *SMOOTH, "--executor", executor)
    assert r.returncode == 0 and f"0 blocks processed, {total} already done" in r.stdout


# ---- retries and failures, with processors that fail on purpose -------------------------------


@dataclass(frozen=True)
class FlakyWrite:
    """Fails the first attempt of every block (counted in a file), then writes block index."""

    workspace: str
    counter_dir: str

    def __call__(self, block):
        from connectome.workspace import open_array

        flag = Path(self.counter_dir) / block.block_id
        if not flag.exists():
            flag.write_text("failed once")
            raise OSError(f"transient failure on {block.block_id}")
        open_array(self.workspace, "out", mode="r+")[block.write_box.slices] = sum(block.index_zyx) + 1


@dataclass(frozen=True)
class BrokenOn:
    bad_block: str

    def __call__(self, block):
        if block.block_id == self.bad_block:
            raise ValueError("corrupt input chunk")


def _task(ws_path, proc, max_retries, stage="test"):
    from connectome.blockwise import OutputSpec

    grid = BlockGrid((8, 8, 8), (4, 4, 4))
    return Task(
        stage, Path(ws_path), grid, proc, {"v": 1}, (OutputSpec("out", "uint8", (4, 4, 4)),), max_retries=max_retries
    )


def test_transient_failures_are_retried(tmp_path):
    Workspace.create(tmp_path / "ws", (8, 8, 8), (40, 8, 8))
    (tmp_path / "c").mkdir()
    report = run_task(
        _task(tmp_path / "ws", FlakyWrite(str(tmp_path / "ws"), str(tmp_path / "c")), 1), make_executor("serial")
    )
    assert report.processed == 8 and report.failed == 0
    out = np.asarray(Workspace.open(tmp_path / "ws").array("out")[:])
    assert out[0, 0, 0] == 1 and out[7, 7, 7] == 4
    m = MarkerStore(tmp_path / "ws" / "blockwise" / "test")
    assert all(m.read_marker(b)["attempts"] == 2 for b in m.done_ids())


def test_persistent_failure_names_block_and_cause(tmp_path):
    Workspace.create(tmp_path / "ws", (8, 8, 8), (40, 8, 8))
    with pytest.raises(StageFailed) as err:
        run_task(_task(tmp_path / "ws", BrokenOn("z1_y0_x1"), 2), make_executor("serial"))
    msg = str(err.value)
    assert "block z1_y0_x1 (z[4:8] y[0:4] x[4:8])" in msg and "after 3 attempts" in msg
    assert "ValueError: corrupt input chunk" in msg
    m = MarkerStore(tmp_path / "ws" / "blockwise" / "test")
    assert "z1_y0_x1" not in m.done_ids() and m.runs()[-1]["failed"] == 1
    # with no retries, too
    with pytest.raises(StageFailed, match="after 1 attempts"):
        run_task(_task(tmp_path / "ws", BrokenOn("z1_y0_x1"), 0), make_executor("serial"))


def test_changed_fingerprint_refused_then_restart(tmp_path):
    Workspace.create(tmp_path / "ws", (8, 8, 8), (40, 8, 8))
    (tmp_path / "c").mkdir()
    proc = FlakyWrite(str(tmp_path / "ws"), str(tmp_path / "c"))
    run_task(_task(tmp_path / "ws", proc, 1), make_executor("serial"))
    other = Task("test", tmp_path / "ws", BlockGrid((8, 8, 8), (4, 4, 4)), proc, {"v": 2}, (), max_retries=1)
    with pytest.raises(UserInputError, match=r"changed: fingerprint\.v"):
        run_task(other, make_executor("serial"))
    report = run_task(other, make_executor("serial"), restart=True)
    assert report.processed == 8 and report.already_done == 0
    layout = json.loads((tmp_path / "ws" / "blockwise" / "test" / "layout.json").read_text())
    assert layout["fingerprint"] == {"v": 2}


def test_corrupt_input_chunk_fails_the_stage_with_exit_1_naming_the_block(tmp_path):
    ws = _prepared_workspace(tmp_path)
    chunk = ws / "volume.zarr" / "raw" / "c" / "0" / "0" / "0"
    assert chunk.is_file()
    chunk.write_bytes(b"\x00garbage, not zstd" * 8)
    r = run_cli(
        "smooth", "--workspace", ws, "--sigma-nm", "0,0,0", "--block-shape", "32,256,256", "--executor", "serial"
    )
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert "stage 'smooth' failed on block z0_y0_x0 (z[0:24] y[0:96] x[0:96]) after 3 attempts" in last
    assert "Traceback" not in r.stderr


def test_second_run_of_a_stage_is_refused_while_the_first_holds_its_lock(tmp_path):
    """Two runs of one stage on one workspace would both do all the work: the second is refused
    (exit 2 naming the holder) and nothing is written; once the first is gone (killed: the OS
    drops its lock) a rerun proceeds."""
    ws = _prepared_workspace(tmp_path)
    done_dir = ws / "blockwise" / "smooth" / "done"
    proc = kill_mid_run(
        ["smooth", "--workspace", ws, *SMOOTH, "--executor", "serial"], done_dir, 1, 0.2, then_kill=False
    )
    r = run_cli("smooth", "--workspace", ws, *SMOOTH, "--executor", "serial")
    n_done = len(os.listdir(done_dir))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "stage 'smooth' is already running" in lines[0] and f"pid {proc.pid}" in lines[0]
    assert n_done < 6 * 3 * 3
    r = run_cli("smooth", "--workspace", ws, *SMOOTH, "--executor", "serial")
    assert r.returncode == 0, r.stderr
