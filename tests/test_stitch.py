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
from conftest import BIN, run_cli, tree_digest
from PIL import Image
from scipy import ndimage

from connectome.montage.pairwise import match_overlap, phase_correlate, prefilter
from connectome.montage.solve import PairEq, solve_positions
from connectome.montage.testdata import texture


def _read_tiles(path) -> dict:
    with open(path) as f:
        return {
            (int(r["section"]), int(r["row"]), int(r["col"])): (float(r["x"]), float(r["y"])) for r in csv.DictReader(f)
        }


def tile_errors(estimated: dict, truth: dict) -> np.ndarray:
    """Position errors (px) anchored at tile (0, 0) of each section (the common translation of a
    section's montage is free)."""
    out = []
    for (s, r, c), est in estimated.items():
        if (s, 0, 0) not in estimated or (s, r, c) not in truth:
            continue
        d = np.subtract(est, estimated[(s, 0, 0)]) - np.subtract(truth[(s, r, c)], truth[(s, 0, 0)])
        out.append(float(np.hypot(*d)))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------
# known answers


def _cut(img, pos_yx, hw):
    yy, xx = np.mgrid[: hw[0], : hw[1]].astype(float)
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
    r = run_cli(
        "stitch",
        "--tiles",
        synth_small / "tiles" / "manifest.csv",
        "--workspace",
        ws,
        "--frame-shape",
        "256,256",
        "--executor",
        "local",
        "--workers",
        "2",
    )
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
    m0 = np.asarray(montage[0, oy : oy + 256, ox : ox + 256]).astype(float)
    t0 = np.asarray(zarr.open_group(str(synth_small / "truth.zarr"), mode="r")["raw"][0]).astype(float)
    assert np.corrcoef(m0.ravel(), t0.ravel())[0, 1] > 0.98
    assert np.asarray(coverage[0, oy : oy + 256, ox : ox + 256]).all()


MONTAGE_DIR = "montages.zarr"


def test_stitch_rerun_does_nothing(synth_small, stitched):
    before = tree_digest(stitched / "stitch")
    r = run_cli(
        "stitch",
        "--tiles",
        synth_small / "tiles" / "manifest.csv",
        "--workspace",
        stitched,
        "--frame-shape",
        "256,256",
        "--executor",
        "serial",
    )
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
                Image.fromarray(np.clip(world[y : y + 128, x : x + 128] + s, 0, 255).astype(np.uint8)).save(root / rel)
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
        "missing": (
            lambda ls: ls[:2] + ["0,0,1,s0/nope.png,110,0"] + ls[3:],
            "section 0 row 0 col 1",
            "file not found",
        ),
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
        "escape": (
            lambda ls: ls[:2] + ["0,0,1,../outside.png,110,0"] + ls[3:],
            "'../outside.png' lies outside",
            "--allow-absolute-paths",
        ),
        "absolute": (
            lambda ls: ls[:2] + [f"0,0,1,{tmp_path / 'outside.png'},110,0"] + ls[3:],
            "lies outside",
            "--allow-absolute-paths",
        ),
        "directory": (lambda ls: ls[:2] + ["0,0,1,s0,110,0"] + ls[3:], "section 0 row 0 col 1", "is a directory"),
    }
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(tmp_path / "outside.png")
    for name, (edit, frag1, frag2) in cases.items():
        bad = _variant(root, name, edit)
        r = run_cli("stitch", "--tiles", bad, "--workspace", ws, "--executor", "serial")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and frag1 in lines[0] and frag2 in lines[0], (name, r.stderr)
        assert "Traceback" not in r.stderr
    r = run_cli("stitch", "--tiles", tmp_path / "nowhere.csv", "--workspace", ws)
    assert r.returncode == 2 and "tile manifest not found" in r.stderr
    # paths outside the manifest's folder only on request (then the tile is read like any other)
    r = run_cli(
        "stitch",
        "--tiles",
        _variant(root, "escape", cases["escape"][0]),
        "--workspace",
        tmp_path / "ws2",
        "--executor",
        "serial",
        "--allow-absolute-paths",
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("stitch", "--tiles", manifest, "--workspace", ws, "--voxel-size", "30,8,8")
    assert r.returncode == 2 and "voxel size" in r.stderr
    r = run_cli("stitch", "--tiles", manifest, "--workspace", ws, "--frame-shape", "12")
    assert r.returncode == 2 and "--frame-shape" in r.stderr
    assert tree_digest(ws) == before


def test_skip_bad_tiles_reports_and_continues(tmp_path):
    root = tmp_path / "tiles"
    _small_tileset(root, sections=3)
    Image.fromarray(np.zeros((100, 128), np.uint8)).save(root / "small.png")
    bad = _variant(
        root,
        "bad",
        lambda ls: (
            [ls[0]] + [ln.replace("s1/t11.png", "s1/gone.png").replace("s2/t00.png", "small.png") for ln in ls[1:]]
        ),
    )
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
    cmd = [
        sys.executable,
        "-m",
        "connectome",
        "stitch",
        "--tiles",
        str(manifest),
        "--workspace",
        str(ws),
        "--frame-shape",
        "256,256",
        "--executor",
        "local",
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "CONNECTOME_BLOCK_DELAY_S": "0.4"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 4):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    finished = len(os.listdir(done))
    assert 4 <= finished < 16, "the kill must land mid-run"
    r = run_cli(
        "stitch",
        "--tiles",
        manifest,
        "--workspace",
        ws,
        "--frame-shape",
        "256,256",
        "--executor",
        "local",
        "--workers",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert f"{16 - finished} blocks processed, {finished} already done" in r.stdout
    assert _montage_bytes(ws) == _montage_bytes(stitched)
    for table in ("tiles.csv", "pairs.csv", "sections.csv"):
        assert (ws / "stitch" / table).read_bytes() == (stitched / "stitch" / table).read_bytes()


@pytest.mark.parametrize("executor", ["serial", "dask", "mpi"])
def test_identical_output_across_executors(synth_small, stitched, tmp_path, executor, request):
    ws = tmp_path / f"ws_{executor}"
    args = [
        "stitch",
        "--tiles",
        str(synth_small / "tiles" / "manifest.csv"),
        "--workspace",
        str(ws),
        "--frame-shape",
        "256,256",
    ]
    if executor == "mpi":
        r = subprocess.run(
            [str(BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "connectome", *args, "--executor", "mpi"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    elif executor == "dask":
        r = run_cli(*args, "--executor", "dask", "--scheduler-file", request.getfixturevalue("dask_cluster"))
    else:
        r = run_cli(*args, "--executor", executor)
    assert r.returncode == 0, r.stderr
    assert _montage_bytes(ws) == _montage_bytes(stitched)  # `stitched` ran on the local executor
    assert (ws / "stitch" / "tiles.csv").read_bytes() == (stitched / "stitch" / "tiles.csv").read_bytes()


# ---------------------------------------------------------------------------------------------
# robustness: small overlaps, large jitter, low or repetitive texture, gain and vignetting,
# tiles that cannot be registered


def _pair(world, true_yx, nominal_dx, rng, tile=200, gain=1.0, vignetting=0.0, noise=8.0):
    """Tile a at (200, 150) of ``world`` and tile b at ``true_yx`` from it (b relative to a),
    both with noise, b with a gain, both vignetted; prefiltered as the stage does."""
    c = (tile - 1) / 2.0
    yy, xx = np.mgrid[:tile, :tile]
    vig = 1 - vignetting * ((yy - c) ** 2 + (xx - c) ** 2) / (2 * c * c)
    a = _cut(world, (200, 150), (tile, tile)) * vig + rng.normal(0, noise, (tile, tile))
    b = (
        gain * _cut(world, (200 + true_yx[0], 150 + true_yx[1]), (tile, tile)) * vig
        + 3
        + rng.normal(0, noise, (tile, tile))
    )
    return prefilter(a, 1, 0), prefilter(b, 1, 0)


def test_search_finds_large_offsets_when_the_overlap_is_small():
    # 5% overlap of a 200 px tile (10 px) and +/-15 px stage jitter on both tiles: the true
    # offset lies up to 30 px from the nominal one along the strip and leaves 7..40 px of overlap
    from connectome.montage.stitch_stage import StitchConfig

    cfg = StitchConfig()
    rng = np.random.default_rng(5)
    world = texture((700, 700), seed=7)
    errs = []
    for k in range(8):
        true = np.array([rng.uniform(-28, 28), 190 + rng.uniform(-30, 3)])
        a, b = _pair(world, true, 190, rng, gain=float(np.exp(rng.normal(0, 0.1))), vignetting=0.3)
        m = match_overlap(a, b, (0, 190), cfg.search_px, cfg.overlap_min_px, prior_sigma_px=cfg.stage_jitter_px)
        assert m is not None and not m.peak.at_border, (k, true)
        assert m.z >= cfg.strong_z, (k, true, m.z)
        errs.append(np.hypot(*(np.array(m.offset_yx) - true)))
    assert max(errs) < 0.25, errs


@pytest.mark.parametrize("kind", ["periodic", "smooth"])
def test_high_ncc_with_a_low_peak_ratio_is_a_good_match(kind):
    # repetitive or smooth texture: second peaks nearly as high as the first (the old rule,
    # peak ratio >= 1.1, rejected such pairs), yet the NCC after registration is high and the
    # offset right
    rng = np.random.default_rng(3)
    world = texture((700, 700), seed=5, kind=kind)
    ratios, errs, zs = [], [], []
    for _k in range(6):
        true = np.array([rng.integers(-6, 7), 180 + rng.integers(-6, 7)], dtype=float)
        a, b = _pair(world, true, 180, rng, vignetting=0.3)
        m = match_overlap(a, b, (0, 180))
        assert m is not None and not m.peak.at_border and m.ncc > 0.9
        ratios.append(m.peak.peak_ratio)
        zs.append(m.z)
        errs.append(np.hypot(*(np.array(m.offset_yx) - true)))
    assert max(errs) < (0.25 if kind == "periodic" else 0.8), errs
    if kind == "periodic":
        assert min(ratios) < 1.1 and min(zs) >= 8, (ratios, zs)  # strong without a clear peak ratio
    else:
        assert min(zs) >= 2, zs  # usable, confirmed by loops


def test_unrelated_or_blank_overlaps_are_never_strong():
    from connectome.montage.stitch_stage import StitchConfig

    cfg = StitchConfig()
    rng = np.random.default_rng(4)
    world = texture((900, 900), seed=9)
    for k in range(6):
        a = prefilter(world[100:300, 100:300] + rng.normal(0, 8, (200, 200)), 1, 0)
        if k % 2:
            b = prefilter(world[500 + 20 * k : 700 + 20 * k, 550:750] + rng.normal(0, 8, (200, 200)), 1, 0)
        else:
            b = prefilter(np.full((200, 200), 140.0) + rng.normal(0, 8, (200, 200)), 1, 0)
        m = match_overlap(a, b, (0, 180), cfg.search_px, cfg.overlap_min_px)
        # never trusted on its own (at most weak: used only if a loop of tiles confirms it)
        assert m.z < 0.5 * cfg.strong_z or m.peak.at_border, (k, m.z, m.ncc)


def test_solve_switches_to_the_alternative_peak_that_closes_the_loop():
    # 2 x 2 tiles: pair 0-1 picked a wrong (periodic) peak, its second peak is right
    nominal = np.array([(0.0, 0.0), (0.0, 180.0), (180.0, 0.0), (180.0, 180.0)])
    true = nominal + np.array([(0, 0), (3, -2), (-4, 1), (2, 5)], dtype=float)
    edges = [(0, 1), (0, 2), (1, 3), (2, 3)]
    pairs = []
    for a, b in edges:
        d = tuple(true[b] - true[a])
        if (a, b) == (0, 1):
            pairs.append(PairEq(a, b, (d[0] + 14, d[1]), ambiguous=True, alternatives=((d, (0.1, 0.1)),), score=20))
        else:
            pairs.append(PairEq(a, b, d, score=15 + a))
    sol = solve_positions(nominal, pairs, ref=0)
    assert sol.used.all() and sol.chosen[0] == 1
    np.testing.assert_allclose(sol.positions_yx, true - true[0], atol=1e-4)
    # without the alternative the ambiguous pair is the one dropped (the others are clear)
    pairs[0] = PairEq(0, 1, pairs[0].offset_yx, ambiguous=True, score=20)
    sol = solve_positions(nominal, pairs, ref=0)
    assert list(sol.used) == [False, True, True, True]
    np.testing.assert_allclose(sol.positions_yx, true - true[0], atol=1e-4)


def test_solve_uses_weak_pairs_only_when_a_loop_confirms_them():
    nominal = np.array([(0.0, 0.0), (0.0, 180.0), (180.0, 0.0), (180.0, 180.0)])
    true = nominal + np.array([(0, 0), (3, -2), (-4, 1), (2, 5)], dtype=float)
    d = {e: tuple(true[e[1]] - true[e[0]]) for e in [(0, 1), (0, 2), (1, 3), (2, 3)]}
    # all four weak but consistent: the loop closes, all used
    weak = [PairEq(a, b, off, (0.5, 0.5), strong=False, score=3) for (a, b), off in d.items()]
    sol = solve_positions(nominal, weak, ref=0)
    assert sol.used.all() and (sol.component == 0).all()
    # one pair missing: the remaining weak pairs are on no loop -> unconfirmed, dropped; tiles
    # stay at nominal (component != 0), reported
    sol = solve_positions(nominal, weak[:3], ref=0)
    assert not sol.used.any() and (sol.component[1:] != 0).all()
    assert all("weak match" in r for r in sol.reasons)
    # a strong pair on no loop is trusted on its own
    mixed = [PairEq(a, b, off, strong=(a, b) != (2, 3), score=12) for (a, b), off in d.items()][:3]
    sol = solve_positions(nominal, mixed, ref=0)
    assert sol.used.all()


ROBUST_CASES = {
    # texture, overlap, jitter, extra along-edge shifts: every pair still overlaps >= 7 px
    # 5% overlap (10 px) and offsets of 12-15 px along the tile edges (whole rows / columns of the
    # 2 x 2 grid displaced, so that no pair opens a gap)
    "em_5pct_jitter15": (
        "em",
        0.05,
        1,
        {
            (0, 1, 0): (0, 15),
            (0, 0, 1): (-14, 0),
            (0, 1, 1): (-14, 15),
            (1, 1, 0): (0, -15),
            (1, 0, 1): (13, 0),
            (1, 1, 1): (13, -15),
            (2, 1, 0): (0, 12),
            (2, 0, 1): (-15, 0),
            (2, 1, 1): (-15, 12),
        },
    ),
    "em_15pct_jitter15": ("em", 0.15, 15, {}),
    "smooth_10pct": ("smooth", 0.10, 6, {}),
    "periodic_10pct": ("periodic", 0.10, 6, {}),
}


@pytest.mark.parametrize("case", sorted(ROBUST_CASES))
def test_stitch_robust_to_overlap_jitter_texture_gain_and_vignetting(case, tmp_path):
    from connectome.montage.testdata import make_dataset

    kind, overlap, jitter, shifts = ROBUST_CASES[case]
    data = make_dataset(
        tmp_path / "data",
        n_sections=3,
        frame_hw=(300, 300),
        tile_px=200,
        overlap=overlap,
        jitter_px=jitter,
        drift_px=3,
        elastic_px=0.5,
        texture_kind=kind,
        vignetting=0.3,
        gain_sigma=0.1,
        tile_shifts=shifts,
        seed=11,
    )
    truth = _read_tiles(data / "truth" / "tiles.csv")
    h = 200
    for (s, r, c), (x, y) in truth.items():  # the case really keeps every pair overlapping
        for k, narrow in (((s, r, c + 1), 0), ((s, r + 1, c), 1)):
            if k in truth:
                assert h - abs(truth[k][narrow] - (x, y)[narrow]) >= 7, (case, k)
    ws = tmp_path / "ws"
    r = run_cli(
        "stitch",
        "--tiles",
        data / "tiles" / "manifest.csv",
        "--workspace",
        ws,
        "--frame-shape",
        "300,300",
        "--executor",
        "serial",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    with open(ws / "stitch" / "tiles.csv") as f:
        placed = {(int(t["section"]), int(t["row"]), int(t["col"])): t["placed"] for t in csv.DictReader(f)}
    with open(ws / "stitch" / "sections.csv") as f:
        assert [s["status"] for s in csv.DictReader(f)] == ["ok"] * 3
    assert set(placed.values()) == {"solved"}
    errs = tile_errors(_read_tiles(ws / "stitch" / "tiles.csv"), truth)
    print(f"{case}: tile error median {np.median(errs):.3f} px, max {errs.max():.3f} px")
    assert errs.size == 12 and errs.max() <= (1.0 if kind == "smooth" else 0.5), errs


def test_a_tile_without_usable_overlap_is_reported(tmp_path):
    from connectome.evaluate import stitching, tables
    from connectome.montage.testdata import make_dataset

    # section 1: tile (0, 1) is 30 px further up and right than the stage says -> a gap to both of
    # its neighbours; section 2: tile (1, 1) shows no tissue
    data = make_dataset(
        tmp_path / "data",
        n_sections=3,
        frame_hw=(300, 300),
        tile_px=200,
        overlap=0.10,
        jitter_px=2,
        drift_px=3,
        elastic_px=0.5,
        vignetting=0.2,
        tile_shifts={(1, 0, 1): (-30, 30)},
        blank_tiles=[(2, 1, 1)],
        seed=3,
    )
    ws = tmp_path / "ws"
    r = run_cli(
        "stitch",
        "--tiles",
        data / "tiles" / "manifest.csv",
        "--workspace",
        ws,
        "--frame-shape",
        "300,300",
        "--executor",
        "serial",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    with open(ws / "stitch" / "sections.csv") as f:
        secs = {int(s["section"]): s for s in csv.DictReader(f)}
    assert secs[0]["status"] == "ok"
    assert (secs[1]["status"], secs[1]["isolated"], secs[1]["n_at_nominal"]) == ("partial", "r0c1", "1")
    assert (secs[2]["status"], secs[2]["isolated"], secs[2]["n_at_nominal"]) == ("partial", "r1c1", "1")
    with open(ws / "stitch" / "tiles.csv") as f:
        placed = {(int(t["section"]), int(t["row"]), int(t["col"])): t["placed"] for t in csv.DictReader(f)}
    assert placed[(1, 0, 1)] == "isolated" and placed[(2, 1, 1)] == "isolated"
    assert sum(v != "solved" for v in placed.values()) == 2
    with open(ws / "stitch" / "pairs.csv") as f:
        pairs = [
            p
            for p in csv.DictReader(f)
            if p["section"] == "1"
            and (p["row_a"], p["col_a"]) == ("0", "1")
            or p["section"] == "1"
            and (p["row_b"], p["col_b"]) == ("0", "1")
        ]
    assert len(pairs) == 2 and all(p["used"] == "0" and p["reason"] for p in pairs)
    # the CLI names the sections and tiles, and says what to do
    assert "partial" in r.stderr and "section 1: r0c1" in r.stderr and "section 2: r1c1" in r.stderr
    assert "pairs.csv" in r.stderr
    # the evaluation scores registered tiles apart and counts the ones left at nominal
    est = tables.read_table(ws / "stitch" / "tiles.csv", tables.TILES)
    tru = tables.read_table(data / "truth" / "tiles.csv", tables.TILES)
    res = stitching.tile_position_errors(est, tru, stitching.read_placed(ws / "stitch" / "tiles.csv"))
    assert res["n_tiles_at_nominal"] == 2 and res["n_tiles_registered"] == 10 and res["at_nominal_sections"] == [1, 2]
    assert res["error_max_px"] < 0.5 and res["error_max_all_px"] > 10


def test_evaluation_scores_registered_tiles_and_counts_those_at_nominal():
    from connectome.evaluate import stitching

    truth = {
        "section": np.array([0, 0, 0]),
        "row": np.array([0, 0, 1]),
        "col": np.array([0, 1, 0]),
        "x": np.array([0.0, 180.0, 1.0]),
        "y": np.array([0.0, 2.0, 181.0]),
    }
    est = {k: v.copy() for k, v in truth.items()}
    est["x"] = est["x"] + np.array([0.0, 0.0, 4.0])
    res = stitching.tile_position_errors(est, truth)
    assert "n_tiles_at_nominal" not in res and res["error_max_px"] == pytest.approx(4.0)
    assert res["error_max_all_px"] == res["error_max_px"] and res["worst_tile"] == {"section": 0, "row": 1, "col": 0}
    res = stitching.tile_position_errors(est, truth, {(0, 0, 0): "solved", (0, 0, 1): "solved", (0, 1, 0): "isolated"})
    assert res["n_tiles_at_nominal"] == 1 and res["error_max_px"] == pytest.approx(0.0)
    assert res["error_max_all_px"] == pytest.approx(4.0)
    est["placed"] = np.array(["solved", "single", "detached group"])  # the column itself works too
    assert stitching.tile_position_errors(est, truth)["n_tiles_at_nominal"] == 1


def test_synth_tile_vignetting_is_off_by_default_and_darkens_corners():
    from connectome.errors import UserInputError
    from connectome.synth.acquisition import Section, SectionTransform, Tile, TileGrid, cut_tiles, plan_acquisition
    from connectome.synth.presets import make_config

    assert make_config("small").tile_vignetting == 0.0
    montage = np.full((100, 100), 200.0, dtype=np.float32) + np.arange(100, dtype=np.float32)[None, :] * 0.3
    sec = Section(0, SectionTransform.identity(), (0, 0), [Tile(0, 0, (0, 0), (5, 7), 1.1, 2.0)])
    ((_, img),) = list(cut_tiles(sec, TileGrid(64, 56, 1, 1, 1), montage, (0, 0)))
    # default: exactly the old formula round(gain * v + offset)
    np.testing.assert_array_equal(img, np.clip(np.rint(1.1 * montage[5:69, 7:71] + 2.0), 0, 255).astype(np.uint8))
    ((_, vig),) = list(cut_tiles(sec, TileGrid(64, 56, 1, 1, 1, vignetting=0.3), montage, (0, 0)))
    assert vig[0, 0] < 0.75 * img[0, 0] and abs(int(vig[32, 32]) - int(img[32, 32])) <= 1
    with pytest.raises(UserInputError, match="tile_vignetting"):
        plan_acquisition(make_config("small", overrides={"tile_vignetting": 1.5}), seed=1)
