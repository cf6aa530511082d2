"""Array state: an array whose stage has not completed is marked so (attribute
``connectome_state``), no consumer reads it as if it were finished (exit 2 naming the array and
the command that finishes it), and ``connectome info`` shows the state."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from conftest import kill_mid_run, run_cli

from connectome.workspace import STATE_ATTR, Workspace

SMOOTH = ["--sigma-nm", "40,16,16", "--block-shape", "4,32,32"]
VOXEL = (40.0, 8.0, 8.0)


def _imported(tmp_path) -> Path:
    rng = np.random.default_rng(5)
    tifffile.imwrite(tmp_path / "v.tif", rng.integers(0, 256, size=(12, 64, 64), dtype=np.uint8))
    ws = tmp_path / "ws"
    r = run_cli("import", tmp_path / "v.tif", "--workspace", ws, "--voxel-size", "40,8,8", "--executor", "serial")
    assert r.returncode == 0, r.stderr
    return ws


def _state(ws: Path, name: str) -> dict:
    return dict(Workspace.open(ws, mode="r").group[name].attrs[STATE_ATTR])


def _one_line_naming(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_finished_stage_marks_its_array_complete(tmp_path):
    ws = _imported(tmp_path)
    assert _state(ws, "raw")["complete"] is True and _state(ws, "raw")["stage"] == "import"
    assert run_cli("smooth", "--workspace", ws, *SMOOTH, "--executor", "serial").returncode == 0
    st = _state(ws, "raw_smooth")
    assert st["complete"] is True and st["stage"] == "smooth" and st["config_digest"]


def test_killed_stage_leaves_array_incomplete_and_consumers_refuse_it(tmp_path):
    ws = _imported(tmp_path)
    (tmp_path / "second.yaml").write_text("input: raw_smooth\noutput: raw_smooth2\n")
    consumer = ["smooth", "--workspace", ws, "--config", tmp_path / "second.yaml", *SMOOTH, "--executor", "serial"]

    done_dir = ws / "blockwise" / "smooth" / "done"
    kill_mid_run(["smooth", "--workspace", ws, *SMOOTH, "--executor", "serial"], done_dir, 2, 0.3)
    total = 3 * 2 * 2
    assert 2 <= len(os.listdir(done_dir)) < total, "the kill must land mid-run"

    st = _state(ws, "raw_smooth")
    assert st["complete"] is False and st["stage"] == "smooth"
    r = run_cli(*consumer)
    _one_line_naming(r, "volume.zarr/raw_smooth is incomplete", "stage 'smooth'", f"connectome smooth --workspace {ws}")
    assert not Workspace.open(ws, mode="r").has("raw_smooth2")  # nothing consumed
    info = run_cli("info", "--workspace", ws)
    assert info.returncode == 0
    line = next(ln for ln in info.stdout.splitlines() if ln.split()[0] == "raw_smooth")
    assert "INCOMPLETE" in line and "smooth" in line, info.stdout

    # the rerun finishes the stage: the array is complete and the consumer works
    r = run_cli("smooth", "--workspace", ws, *SMOOTH, "--executor", "serial")
    assert r.returncode == 0, r.stderr
    assert _state(ws, "raw_smooth")["complete"] is True
    r = run_cli(*consumer, "--restart")  # --restart: the smooth stage's markers now hold the first run
    assert r.returncode == 0, r.stderr
    assert _state(ws, "raw_smooth2")["complete"] is True
    info = run_cli("info", "--workspace", ws)
    assert "INCOMPLETE" not in info.stdout
    line = next(ln for ln in info.stdout.splitlines() if ln.split()[0] == "raw_smooth")
    assert "complete" in line and "smooth" in line, info.stdout


def _workspace_with_segmentation(tmp_path, complete: bool | None) -> tuple[Path, np.ndarray]:
    """A tiny workspace with raw + segmentation; segmentation marked incomplete by stage segment
    (complete False), complete (True), or with no state at all (None: written before states)."""
    shape = (4, 16, 16)
    seg = np.zeros(shape, np.uint64)
    seg[:, :, :8], seg[:, :, 8:] = 1, 2
    ws = Workspace.create(tmp_path / "ws", shape, VOXEL)
    ws.require_array("raw", "uint8", shape)[...] = np.full(shape, 100, np.uint8)
    ws.require_array("segmentation", "uint64", shape)[...] = seg
    if complete is not None:
        ws.mark_incomplete("segmentation", "segment-write", "abc")
        if complete:
            ws.mark_complete("segmentation")
    return ws.path, seg


def _truth(tmp_path, seg) -> Path:
    import zarr

    root = tmp_path / "truth"
    root.mkdir()
    group = zarr.open_group(str(root / "truth.zarr"), mode="w", zarr_format=3)
    arr = group.create_array(
        "neurons", shape=seg.shape, dtype=seg.dtype, chunks=seg.shape, attributes={"voxel_size_nm": list(VOXEL)}
    )
    arr[...] = seg
    (root / "truth").mkdir()
    return root


def test_export_and_evaluate_refuse_an_incomplete_segmentation(tmp_path):
    ws, seg = _workspace_with_segmentation(tmp_path, complete=False)
    truth = _truth(tmp_path, seg)
    r = run_cli("export-precomputed", "--workspace", ws)
    _one_line_naming(
        r, "volume.zarr/segmentation is incomplete", "stage 'segment'", f"connectome segment --workspace {ws}"
    )
    assert not (ws / "precomputed" / "segmentation").exists()
    r = run_cli("evaluate", "--workspace", ws, "--truth", truth)
    _one_line_naming(r, "volume.zarr/segmentation is incomplete", f"connectome segment --workspace {ws}")
    assert not (ws / "evaluation.json").exists()
    info = run_cli("info", "--workspace", ws)
    line = next(ln for ln in info.stdout.splitlines() if ln.split()[0] == "segmentation")
    assert "INCOMPLETE" in line and "segment" in line, info.stdout

    Workspace.open(ws).mark_complete("segmentation")
    r = run_cli("evaluate", "--workspace", ws, "--truth", truth)
    assert r.returncode == 0, r.stderr


def test_arrays_without_state_count_as_complete(tmp_path):
    """Workspaces written before array states existed keep working."""
    ws, seg = _workspace_with_segmentation(tmp_path, complete=None)
    w = Workspace.open(ws, mode="r")
    assert w.array_state("segmentation") is None and w.is_complete("segmentation")
    assert w.require_complete("segmentation", "evaluate") is not None
    r = run_cli("evaluate", "--workspace", ws, "--truth", _truth(tmp_path, seg))
    assert r.returncode == 0, r.stderr
    info = run_cli("info", "--workspace", ws)
    assert info.returncode == 0 and "INCOMPLETE" not in info.stdout
