"""Resources are bounded up front (issue 21 items 4-6): absurd sizes are refused with their estimate,
local pools are capped by cores and memory with a warning, override errors name their option, and a
killed ``--restart`` run of a multi-step stage resumes with a plain rerun."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from connectome.blockwise import BlockGrid, Task
from connectome.errors import UserInputError
from connectome.resources import MAX_BLOCKS, check_plan, local_workers, worker_bytes
from tests.conftest import kill_mid_run, run_cli, tree_digest


def _one_line(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _noop(block):  # pragma: no cover - never run
    return None


def _task(shape, block, halo=(0, 0, 0), **kw) -> Task:
    return Task("probe", Path("/nonexistent"), BlockGrid(shape, block, halo), _noop, {}, **kw)


@pytest.fixture(scope="module")
def stitched(tmp_path_factory) -> Path:
    """A tiny synthetic tile set, stitched and aligned (16 sections of 2x2 tiles)."""
    d = tmp_path_factory.mktemp("res")
    r = run_cli("synth", str(d / "s"), "--preset", "small", "--seed", "7", "-q")
    assert r.returncode == 0, r.stderr
    r = run_cli("stitch", "--tiles", str(d / "s" / "tiles" / "manifest.csv"), "--workspace", str(d / "ws"), "-q")
    assert r.returncode == 0, r.stderr
    r = run_cli("align", "--workspace", str(d / "ws"), "-q")
    assert r.returncode == 0, r.stderr
    return d


# --- item 4: absurd sizes ---------------------------------------------------------------------


def test_absurd_frame_is_refused_at_stitch_with_the_estimate(stitched):
    ws = stitched / "ws_huge"
    r = run_cli(
        "stitch",
        "--tiles",
        str(stitched / "s" / "tiles" / "manifest.csv"),
        "--workspace",
        str(ws),
        "--frame-shape",
        "10000000,10000000",
    )
    line = _one_line(r, "--frame-shape", "10000000 x 10000000", "render blocks")
    assert "1,600,000,000,000,000 voxels" in line
    assert not ws.exists(), "nothing may be written for a refused plan"


def test_one_voxel_blocks_are_refused_naming_the_option_or_the_file(stitched, tmp_path):
    ws = stitched / "ws"
    before = tree_digest(ws / "volume.zarr")
    _one_line(
        run_cli("smooth", "--workspace", str(ws), "--block-shape", "1,1,1"),
        "--block-shape:",
        "block_shape_zyx [1, 1, 1]",
        "at least 1024",
    )
    cfg = tmp_path / "smooth.yaml"
    cfg.write_text("blockwise:\n  block_shape_zyx: [1, 1, 1]\n")
    _one_line(run_cli("smooth", "--workspace", str(ws), "--config", str(cfg)), f"{cfg}:", "at least 1024")
    assert tree_digest(ws / "volume.zarr") == before


def test_plans_with_too_many_blocks_or_too_big_blocks_are_refused():
    # 1-voxel grids of sections (align) are fine; a grid of more than MAX_BLOCKS blocks is not
    check_plan(_task((16, 1, 1), (1, 1, 1)))
    with pytest.raises(UserInputError, match=r"plans 1,073,741,824 blocks \(limit"):
        check_plan(_task((1024, 1024, 1024), (1, 1, 1)))
    assert MAX_BLOCKS < 1024**3
    # one block (+ halo) that cannot fit in the available memory even with one worker
    big = _task((512, 4096, 4096), (512, 4096, 4096), bytes_per_voxel=16.0)
    with pytest.raises(UserInputError, match=r"needs about 128\.2 GiB of memory per worker, but only 8\.0 GiB"):
        check_plan(big, available=8 << 30)
    check_plan(_task((64, 512, 512), (32, 256, 256), (4, 16, 16)), available=8 << 30)


# --- item 5: bounded local workers --------------------------------------------------------------


def test_local_workers_are_capped_by_cores_and_memory():
    assert local_workers(None, cores=8) == (8, "")
    assert local_workers(2, cores=8) == (2, "")
    n, note = local_workers(64, cores=2)
    assert n == 2 and note == "using 2 local workers instead of 64 (2 usable cores)"
    model = _task((64, 1024, 1024), (32, 256, 256), (8, 32, 32), bytes_per_voxel=32.0, worker_memory_bytes=1 << 30)
    per = worker_bytes(model)
    assert per == (1 << 30) + 48 * 320 * 320 * 32
    n, note = local_workers(16, model, available=4 << 30, cores=16)
    assert n == int((4 << 30) * 0.8 // per) == 2
    assert "instead of 16" in note and "available memory" in note and "per worker" in note
    # asked for nothing: as many as fit, silently
    assert local_workers(None, model, available=4 << 30, cores=16) == (2, "")
    # at least one worker even when the estimate is pessimistic (check_plan refuses real misfits)
    assert local_workers(4, model, available=1 << 20, cores=16)[0] == 1


def test_too_many_workers_warn_and_run_with_the_cap(stitched):
    ws = stitched / "ws"
    r = run_cli("smooth", "--workspace", str(ws), "--workers", "10000", "--restart")
    assert r.returncode == 0, r.stderr
    assert "using " in r.stderr and "local workers instead of 10000" in r.stderr and "usable cores" in r.stderr


# --- item 6: option names and --restart --------------------------------------------------------


def test_override_errors_name_the_option_not_defaults(tmp_path):
    ws = tmp_path / "nowhere"
    line = _one_line(run_cli("synapses", "--workspace", str(ws), "--threshold", "2"), "--threshold:", "threshold")
    assert "defaults" not in line
    line = _one_line(run_cli("synapses", "--workspace", str(ws), "--min-size", "-3"), "--min-size:", "min_size_voxels")
    assert "defaults" not in line
    # a bad file is still reported as the file, even when an option is given too
    cfg = tmp_path / "syn.yaml"
    cfg.write_text("min_size_voxels: -1\n")
    _one_line(
        run_cli("synapses", "--workspace", str(ws), "--config", str(cfg), "--threshold", "0.5"),
        f"{cfg}:",
        "min_size_voxels",
    )


def test_killed_restart_of_a_multistep_stage_resumes_with_a_plain_rerun(stitched, tmp_path):
    """``align --restart`` with a new config, killed in step 1: a plain rerun with that config
    finishes (no second --restart) and equals an uninterrupted run with it."""
    ws = stitched / "ws"
    cfg = tmp_path / "align.yaml"
    cfg.write_text("interpolation_order: 3\n")
    done_dir = ws / "blockwise" / "align" / "done"
    (ws / "blockwise" / "align" / "layout.json").unlink()  # so the markers only come back once restarted
    proc = kill_mid_run(
        ["align", "--workspace", ws, "--config", cfg, "--restart", "--workers", "1", "-q"],
        done_dir,
        at_least=16,
        delay_s=0.5,
        then_kill=False,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (
        done_dir.is_dir()
        and 3 <= len(os.listdir(done_dir)) < 16
        and (ws / "blockwise" / "align" / "layout.json").exists()
    ):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(done_dir.iterdir()))
    assert 3 <= done < 16, done
    state = json.loads((ws / "volume.zarr" / "raw" / "zarr.json").read_text())["attributes"]["connectome_state"]
    assert state["complete"] is False, "the old aligned volume must not pass as finished"
    r = run_cli("align", "--workspace", str(ws), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "align-render: 8 blocks processed, 0 already done" in r.stdout, r.stdout
    resumed = tree_digest(ws / "volume.zarr" / "raw")
    r = run_cli("align", "--workspace", str(ws), "--config", str(cfg), "--restart", "-q")
    assert r.returncode == 0, r.stderr
    assert tree_digest(ws / "volume.zarr" / "raw") == resumed
