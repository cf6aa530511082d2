"""`connectome stitch`: known-answer registration and solve, accuracy on synthetic data with
ground truth, bad input (exit 2, workspace untouched), --skip-bad-tiles, SIGKILL resume and
identical output across executors."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import BIN, run_cli, tree_digest
from connectome.montage.pairwise import match_overlap, phase_correlate, prefilter
from connectome.montage.solve import PairEq, solve_positions
from connectome.montage.testdata import texture


def _read_tiles(path) -> dict:
    with open(path) as f:
        return {(int(r["section"]), int(r["row"]), int(r["col"])): (float(r["x"]), float(r["y"]))
                for r in csv.DictReader(f)}


def tile_errors(estimated: dict, truth: dict) -> np.ndarray:
    """Position errors (px) anchored at tile (0, 0) of each section (the common translation of a
    section's montage is free)."""
    out = []
    for (s, r, c), est in estimated.items():
        if (s, 0, 0) not in estimated or (s, r, c) not in truth:
            continue
        d = (np.subtract(est, estimated[(s, 0, 0)]) - np.subtract(truth[(s, r, c)], truth[(s, 0, 0)]))
        out.append(float(np.hypot(*d)))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------
# known answers

def _cut(img, pos_yx, hw):
    yy, xx = np.mgrid[:hw[0], :hw[1]].astype(float)
    return ndimage.map_coordinates(img, [yy + pos_yx[0], xx + pos_yx[1]], order=3)


def test_overlap_match_recovers_subpixel_offsets():
    rng = np.random.default_rng(0)
    world = texture((500, 500), seed=3)
    errs = []
    for _ in range(10):
        true = np.array([rng.uniform(-4, 4), 133 + rng.uniform(-4, 4)])
        a = _cut(world, (100, 100), (150, 150)) + rng.normal(0, 8, (150, 150))
        b = 1.1 * _cut(world, (100 + true[0], 100 + true[1]), (150, 150)) + 5 + rng.normal(0, 8, (150, 150))
        m = match_overlap(prefilter(a, 1, 0), prefilter(b, 1, 0), (0, 133), max_shift_px=9, min_template_px=8)
        assert m is not None and not m.peak.at_border and m.peak.peak > 0.8
        errs.append(np.hypot(*(np.array(m.offset_yx) - true)))
    assert np.max(errs) < 0.3, errs


def test_phase_correlation_sign_and_subpixel():
    world = texture((300, 300), seed=1)
    fixed = world[100:164, 100:164][None]
    for d, tol in [((7.0, -10.0), 0.5), ((1.4, -0.6), 0.1), ((-0.3, 0.45), 0.1)]:
        # moving(q + d) = fixed(q); the Hann window biases large shifts slightly towards 0
        moving = _cut(world, (100 - d[0], 100 - d[1]), (64, 64))[None]
        pk = phase_correlate(fixed, moving, max_shift_px=12, peak_sigma_px=2.0)[0]
        assert abs(pk.dy - d[0]) < tol and abs(pk.dx - d[1]) < tol, (d, pk)
        assert pk.peak_ratio > 2


def test_solve_drops_a_wrong_pair_and_places_an_isolated_tile_at_nominal():
    # 3 x 3 tiles, true positions = nominal + jitter; one wrong pair; tile 8 unmatched
    rng = np.random.default_rng(2)
    nominal = np.array([(r * 100.0, c * 100.0) for r in range(3) for c in range(3)])
    true = nominal + rng.uniform(-3, 3, nominal.shape)
    true -= true[0]
    pairs = []
    for a in range(9):
        for b in range(a + 1, 9):
            if np.abs(nominal[b] - nominal[a]).sum() == 100 and b != 8:
                pairs.append(PairEq(a, b, tuple(true[b] - true[a] + rng.normal(0, 0.05, 2))))
    pairs[3] = PairEq(pairs[3].a, pairs[3].b, (pairs[3].offset_yx[0] + 8, pairs[3].offset_yx[1] - 5))
    sol = solve_positions(nominal, pairs, ref=0, max_residual_px=2.0)
    assert not sol.used[3] and sol.used.sum() == len(pairs) - 1
    np.testing.assert_allclose(sol.positions_yx[:8], true[:8], atol=0.2)
    assert sol.component[8] != 0
    # the isolated tile sits at its nominal place relative to the main group
    dev = (sol.positions_yx[:8] - nominal[:8]).mean(axis=0)
    np.testing.assert_allclose(sol.positions_yx[8], nominal[8] + dev, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# synthetic data with ground truth

@pytest.fixture(scope="module")
def synth_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "small"
    r = run_cli("synth", out, "--preset", "small", "--seed", "6")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def stitched(synth_small, tmp_path_factory):
    ws = tmp_path_factory.mktemp("stitch") / "ws"
    r = run_cli("stitch", "--tiles", synth_small / "tiles" / "manifest.csv", "--workspace", ws,
                "--frame-shape", "256,256", "--executor", "local", "--workers", "2")
    assert r.returncode == 0, r.stderr
    return ws


def test_stitch_accuracy_against_truth(synth_small, stitched):
    errs = tile_errors(_read_tiles(stitched / "stitch" / "tiles.csv"), _read_tiles(synth_small / "truth" / "tiles.csv"))
    assert errs.size == 16 * 4
    print(f"stitch tile position error: median {np.median(errs):.3f} px, max {errs.max():.3f} px")
    assert np.median(errs) <= 0.5 and errs.max() <= 2.0


def test_stitch_tables_and_montage_geometry(synth_small, stitched):
    import zarr

    from connectome.montage.stitch_stage import open_montages
    from connectome.workspace import Workspace

    with open(stitched / "stitch" / "pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 16 * 4 and all(p["accepted"] == "1" and p["used"] == "1" for p in pairs)
    assert all(float(p["residual_px"]) < 0.5 for p in pairs)
    with open(stitched / "stitch" / "sections.csv") as f:
        sections = list(csv.DictReader(f))
    assert [s["status"] for s in sections] == ["ok"] * 16
    ws = Workspace.open(stitched)
    assert ws.shape_zyx == (16, 256, 256) and ws.voxel_size_nm == (40.0, 8.0, 8.0)
    # section 0 is the aligned frame: its montage equals the truth up to tile gain, with no shift
    montage, coverage, attrs = open_montages(stitched)
    oy, ox = attrs["offset_yx"]
    m0 = np.asarray(montage[0, oy:oy + 256, ox:ox + 256]).astype(float)
    t0 = np.asarray(zarr.open_group(str(synth_small / "truth.zarr"), mode="r")["raw"][0]).astype(float)
    assert np.corrcoef(m0.ravel(), t0.ravel())[0, 1] > 0.98
    assert np.asarray(coverage[0, oy:oy + 256, ox:ox + 256]).all()


MONTAGE_DIR = "montages.zarr"


def test_stitch_rerun_does_nothing(synth_small, stitched):
    before = tree_digest(stitched / "stitch")
    r = run_cli("stitch", "--tiles", synth_small / "tiles" / "manifest.csv", "--workspace", stitched,
                "--frame-shape", "256,256", "--executor", "serial")
    assert r.returncode == 0 and "0 blocks processed, 16 already done" in r.stdout
    assert tree_digest(stitched / "stitch") == before


# ---------------------------------------------------------------------------------------------
# bad input

def _small_tileset(root: Path, sections: int = 2) -> Path:
    """2 x 2 tiles per section cut from a texture; returns the manifest path."""
    world = texture((320, 320), seed=5)
    rows = []
    for s in range(sections):
        for r in range(2):
            for c in range(2):
                y, x = 10 + r * 110, 10 + c * 110
                rel = f"s{s}/t{r}{c}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(world[y:y + 128, x:x + 128] + s, 0, 255).astype(np.uint8)).save(root / rel)
                rows.append(f"{s},{r},{c},{rel},{c * 110},{r * 110}")
    (root / "manifest.csv").write_text("section,row,col,path,x,y\n" + "\n".join(rows) + "\n")
    return root / "manifest.csv"


def _variant(root: Path, name: str, edit) -> Path:
    lines = (root / "manifest.csv").read_text().splitlines()
    lines = edit(lines)
    p = root / f"{name}.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_bad_input_exits_2_naming_the_culprit_and_leaves_the_workspace_untouched(tmp_path):
    root = tmp_path / "tiles"
    manifest = _small_tileset(root)
    ws = tmp_path / "ws"
    r = run_cli("stitch", "--tiles", manifest, "--workspace", ws, "--executor", "serial")
    assert r.returncode == 0, r.stderr
    before = tree_digest(ws)
    (root / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    Image.fromarray(np.zeros((100, 128), np.uint8)).save(root / "small.png")
    Image.fromarray(np.zeros((128, 128), np.uint16)).save(root / "deep.png")
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(root / "rgb.png")
    (root / "empty.png").write_bytes(b"")
    cases = {
        "missing": (lambda ls: ls[:2] + ["0,0,1,s0/nope.png,110,0"] + ls[3:], "section 0 row 0 col 1", "file not found"),
        "garbage": (lambda ls: ls[:2] + ["0,0,1,garbage.png,110,0"] + ls[3:], "garbage.png", "not a readable image"),
        "empty_file": (lambda ls: ls[:2] + ["0,0,1,empty.png,110,0"] + ls[3:], "empty.png", "empty file"),
        "size": (lambda ls: ls[:2] + ["0,0,1,small.png,110,0"] + ls[3:], "small.png", "expected 128x128"),
        "dtype": (lambda ls: ls[:2] + ["0,0,1,deep.png,110,0"] + ls[3:], "deep.png", "dtype uint16, expected uint8"),
        "rgb": (lambda ls: ls[:2] + ["0,0,1,rgb.png,110,0"] + ls[3:], "rgb.png", "grayscale"),
        "duplicate": (lambda ls: ls + [ls[1]], "duplicate tile (section 0, row 0, col 0)", "line 2"),
        "non_numeric": (lambda ls: ls[:2] + ["0,0,1,s0/t01.png,abc,0"] + ls[3:], "x must be a number", "'abc'"),
        "empty_section": (lambda ls: ls + ["7,0,0,,0,0"], "section 7 is empty", "no tile path"),
        "bad_header": (lambda ls: ["section,row,col,file,x,y"] + ls[1:], "missing column(s) path", "expected"),
        "negative_row": (lambda ls: ls + ["1,-1,0,s1/t00.png,0,0"], "row must be an integer >= 0", "line"),
    }
    for name, (edit, frag1, frag2) in cases.items():
        bad = _variant(root, name, edit)
        r = run_cli("stitch", "--tiles", bad, "--workspace", ws, "--executor", "serial")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and frag1 in lines[0] and frag2 in lines[0], (name, r.stderr)
        assert "Traceback" not in r.stderr
    r = run_cli("stitch", "--tiles", tmp_path / "nowhere.csv", "--workspace", ws)
    assert r.returncode == 2 and "tile manifest not found" in r.stderr
    r = run_cli("stitch", "--tiles", manifest, "--workspace", ws, "--voxel-size", "30,8,8")
    assert r.returncode == 2 and "voxel size" in r.stderr
    r = run_cli("stitch", "--tiles", manifest, "--workspace", ws, "--frame-shape", "12")
    assert r.returncode == 2 and "--frame-shape" in r.stderr
    assert tree_digest(ws) == before


def test_skip_bad_tiles_reports_and_continues(tmp_path):
    root = tmp_path / "tiles"
    manifest = _small_tileset(root, sections=3)
    Image.fromarray(np.zeros((100, 128), np.uint8)).save(root / "small.png")
    bad = _variant(root, "bad", lambda ls: [ls[0]] + [ln.replace("s1/t11.png", "s1/gone.png")
                                                      .replace("s2/t00.png", "small.png") for ln in ls[1:]])
    ws = tmp_path / "ws"
    r = run_cli("stitch", "--tiles", bad, "--workspace", ws, "--executor", "serial")
    assert r.returncode == 2 and "--skip-bad-tiles" in r.stderr
    r = run_cli("stitch", "--tiles", bad, "--workspace", ws, "--executor", "serial", "--skip-bad-tiles")
    assert r.returncode == 0, r.stderr
    assert "skipping bad tile section 1 row 1 col 1" in r.stderr
    with open(ws / "stitch" / "bad_tiles.csv") as f:
        skipped = {(int(b["section"]), int(b["row"]), int(b["col"])): b["reason"] for b in csv.DictReader(f)}
    assert set(skipped) == {(1, 1, 1), (2, 0, 0)} and "file not found" in skipped[(1, 1, 1)]
    tiles = _read_tiles(ws / "stitch" / "tiles.csv")
    assert len(tiles) == 10 and (1, 1, 1) not in tiles and (2, 0, 0) not in tiles
    # the remaining tiles are still placed correctly (true offset 110 px, tile (0,0) of section 2 absent)
    assert tiles[(1, 0, 1)][0] == pytest.approx(110, abs=0.3)
    assert tiles[(2, 1, 1)][0] - tiles[(2, 1, 0)][0] == pytest.approx(110, abs=0.3)
    with open(ws / "stitch" / "sections.csv") as f:
        secs = {int(s["section"]): s for s in csv.DictReader(f)}
    assert secs[1]["n_bad_tiles"] == "1" and secs[2]["n_bad_tiles"] == "1" and secs[0]["n_bad_tiles"] == "0"


# ---------------------------------------------------------------------------------------------
# resumption and executors

def _montage_bytes(ws: Path) -> dict:
    return tree_digest(ws / "stitch" / MONTAGE_DIR)


def test_sigkill_then_resume_is_bit_identical(synth_small, stitched, tmp_path):
    manifest = synth_small / "tiles" / "manifest.csv"
    ws = tmp_path / "ws"
    done = ws / "blockwise" / "stitch" / "done"
    cmd = [sys.executable, "-m", "connectome", "stitch", "--tiles", str(manifest), "--workspace", str(ws),
           "--frame-shape", "256,256", "--executor", "local", "--workers", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "CONNECTOME_BLOCK_DELAY_S": "0.4"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 4):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    finished = len(os.listdir(done))
    assert 4 <= finished < 16, "the kill must land mid-run"
    r = run_cli("stitch", "--tiles", manifest, "--workspace", ws, "--frame-shape", "256,256", "--executor", "local",
                "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert f"{16 - finished} blocks processed, {finished} already done" in r.stdout
    assert _montage_bytes(ws) == _montage_bytes(stitched)
    for table in ("tiles.csv", "pairs.csv", "sections.csv"):
        assert (ws / "stitch" / table).read_bytes() == (stitched / "stitch" / table).read_bytes()


@pytest.mark.parametrize("executor", ["serial", "dask", "mpi"])
def test_identical_output_across_executors(synth_small, stitched, tmp_path, executor, request):
    ws = tmp_path / f"ws_{executor}"
    args = ["stitch", "--tiles", str(synth_small / "tiles" / "manifest.csv"), "--workspace", str(ws),
            "--frame-shape", "256,256"]
    if executor == "mpi":
        r = subprocess.run([str(BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "connectome", *args,
                            "--executor", "mpi"], capture_output=True, text=True, timeout=300)
    elif executor == "dask":
        r = run_cli(*args, "--executor", "dask", "--scheduler-file", request.getfixturevalue("dask_cluster"))
    else:
        r = run_cli(*args, "--executor", executor)
    assert r.returncode == 0, r.stderr
    assert _montage_bytes(ws) == _montage_bytes(stitched)  # `stitched` ran on the local executor
    assert (ws / "stitch" / "tiles.csv").read_bytes() == (stitched / "stitch" / "tiles.csv").read_bytes()
