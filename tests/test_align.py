"""`connectome align`: accuracy against known transforms, damaged and missing sections, QC
outputs, SIGKILL resume and identical output across executors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import BIN, run_cli, tree_digest

from connectome.montage.qc import ncc
from connectome.montage.testdata import forward, make_dataset, texture
from connectome.montage.warp import DisplacementGrid


def _stitch_align(data: Path, ws: Path, *extra: str, executor: str = "local") -> None:
    r = run_cli(
        "stitch",
        "--tiles",
        data / "tiles" / "manifest.csv",
        "--workspace",
        ws,
        "--frame-shape",
        ",".join(map(str, json.loads((data / "truth" / "sections.json").read_text())["shape_zyx"][1:])),
        "--executor",
        executor,
        "--workers",
        "2",
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("align", "--workspace", ws, "--executor", executor, "--workers", "2", *extra)
    assert r.returncode == 0, r.stderr


def _sections(ws: Path) -> dict:
    return {r["z"]: r for r in json.loads((ws / "align" / "sections.json").read_text())}


def transform_residuals(data: Path, ws: Path, step: float = 8.0) -> dict:
    """Per section: |T_est(p) - T_true(p)| (px) on a grid of points p of the aligned frame. Each
    section's montage frame is compared after removing the stitch's free translation: the
    median over its tiles of (estimated - true) tile position."""
    sj = json.loads((data / "truth" / "sections.json").read_text())
    h, w = sj["shape_zyx"][1:]
    est, tru = {}, {}
    for path, store in ((ws / "stitch" / "tiles.csv", est), (data / "truth" / "tiles.csv", tru)):
        with open(path) as f:
            for r in csv.DictReader(f):
                store[(int(r["section"]), int(r["row"]), int(r["col"]))] = (float(r["y"]), float(r["x"]))
    yy, xx = np.meshgrid(np.arange(0, h, step), np.arange(0, w, step), indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1)
    out = {}
    for sec in sj["sections"]:
        s = sec["section"]
        if sec["missing"]:
            continue
        keys = [k for k in est if k[0] == s and k in tru]
        d = np.median([np.subtract(est[k], tru[k]) for k in keys], axis=0)
        t = DisplacementGrid.from_npz(ws / "align" / "transforms" / f"z{s:05d}.npz")
        out[s] = np.hypot(*(t.apply(pts) - (forward(sec["transform"], pts) + d)).T)
    return out


# ---------------------------------------------------------------------------------------------
# known answers: every section shows the same texture, so the true transforms are recoverable


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    data = make_dataset(root / "data", n_sections=16, tile_px=160, noise=6.0, noise_sections=(7,), seed=11)
    ws = root / "ws"
    _stitch_align(data, ws)
    return data, ws


def test_alignment_recovers_the_true_transforms(known):
    data, ws = known
    sections = _sections(ws)
    res = transform_residuals(data, ws)
    flagged = {z for z, r in sections.items() if r["status"] == "bad"}
    assert flagged == {7}, sections  # the noise section, and only it
    good = np.concatenate([v for z, v in res.items() if z not in flagged])
    print(f"known-answer alignment residual: median {np.median(good):.3f} px, max {good.max():.3f} px")
    assert np.median(good) <= 1.0 and good.max() <= 3.0
    # the neighbours of the bad section are fine: 8 was matched to 6 directly
    assert sections[8]["status"] == "bridged" and sections[8]["ref"] == 6
    assert res[6].max() <= 3.0 and res[8].max() <= 3.0


def test_neighbour_ncc_close_to_truth(known):
    data, ws = known
    truth = np.load(data / "truth_raw.npy").astype(np.float64)
    raw = np.asarray(zarr.open_group(str(ws / "volume.zarr"), mode="r")["raw"][:]).astype(np.float64)
    pairs = [(z, z + 1) for z in range(15) if 7 not in (z, z + 1)]
    ours = np.mean([ncc(raw[a], raw[b]) for a, b in pairs])
    want = np.mean([ncc(truth[a], truth[b]) for a, b in pairs])
    # the QC table's NCCs are those of the images the elastic step matched (half resolution)
    before = np.mean([r["ncc_before"] for r in _pairs_table(ws) if r["used"] == 1])
    after = np.mean([r["ncc_after"] for r in _pairs_table(ws) if r["used"] == 1])
    print(f"neighbour NCC: truth {want:.3f}, aligned {ours:.3f}; QC table before {before:.3f}, after {after:.3f}")
    assert ours >= want - 0.05
    assert after > before + 0.15


def _pairs_table(ws: Path) -> list[dict]:
    with open(ws / "align" / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        out.append({k: (float(v) if v not in ("",) and k not in ("flags", "status") else v) for k, v in r.items()})
    return out


def test_qc_outputs(known):
    data, ws = known
    rows = _pairs_table(ws)
    for col in ("n_accepted", "residual_median_px", "ncc_before", "ncc_after", "flags", "used", "ok"):
        assert col in rows[0]
    used = [r for r in rows if r["used"] == 1]
    assert len(used) == 14 and all(r["ncc_after"] > r["ncc_before"] for r in used)
    bad = [r for r in rows if r["z"] == 7]
    assert bad and all(r["ok"] == 0 and "flagged bad" in r["flags"] for r in bad)
    previews = sorted(p.name for p in (ws / "align").glob("preview_z*.png"))
    assert "preview_z007.png" in previews and "preview_z008.png" in previews and len(previews) >= 4
    from PIL import Image

    with Image.open(ws / "align" / "preview_z008.png") as im:
        assert im.mode == "RGB" and im.size[0] > im.size[1]
    assert len(list((ws / "align" / "transforms").glob("z*.npz"))) == 16
    raw = zarr.open_group(str(ws / "volume.zarr"), mode="r")["raw"]
    assert raw.dtype == np.uint8 and raw.shape == (16, 256, 256)


# ---------------------------------------------------------------------------------------------
# synthetic tissue (`connectome synth`): a fold and a missing section


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("fold")
    data = generate(root / "data", preset="small", seed=6, missing_sections=1, damaged_sections=1)
    ws = root / "ws"
    _stitch_align(data, ws)
    return data, ws


def test_fold_is_flagged_and_bridged_missing_section_left_empty(folded):
    data, ws = folded
    sj = json.loads((data / "truth" / "sections.json").read_text())
    damaged = [s["section"] for s in sj["sections"] if s["damaged"]]
    missing = [s["section"] for s in sj["sections"] if s["missing"]]
    assert damaged == [6] and missing == [10]
    sections = _sections(ws)
    assert {z for z, r in sections.items() if r["status"] == "bad"} == {6}
    assert sections[6]["reason"].startswith("fold score")
    assert sections[7]["status"] == "bridged" and sections[7]["ref"] == 5
    # 11 follows the gap: matched to 9 (its predecessor), or bridged further down if that match failed
    assert sections[10]["status"] == "missing"
    assert sections[11]["status"] in ("aligned", "bridged") and sections[11]["ref"] in (9, 8, 7)
    raw = np.asarray(zarr.open_group(str(ws / "volume.zarr"), mode="r")["raw"][:])
    assert not raw[10].any()
    truth = np.asarray(zarr.open_group(str(data / "truth.zarr"), mode="r")["raw"][:]).astype(np.float64)
    pairs = [(z, z + 1) for z in range(15) if not {z, z + 1} & {6, 10}]
    ours = [ncc(raw[a].astype(np.float64), raw[b].astype(np.float64)) for a, b in pairs]
    want = [ncc(truth[a], truth[b]) for a, b in pairs]
    print(f"synth neighbour NCC: truth {np.mean(want):.3f}, aligned {np.mean(ours):.3f}")
    assert min(np.subtract(ours, want)) >= -0.05
    res = transform_residuals(data, ws)
    good = np.concatenate([v for z, v in res.items() if z != 6])
    # reported, not asserted: on this data the content itself drifts (oblique neurites), see docs/stages/align.md
    print(f"synth absolute transform residual: median {np.median(good):.2f} px, max {good.max():.2f} px")


# ---------------------------------------------------------------------------------------------
# resumption and executors (a small known-answer set)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    data = make_dataset(root / "data", n_sections=6, frame_hw=(200, 200), tile_px=128, seed=5)
    ref = root / "ref"
    _stitch_align(data, ref, "--block-shape", "2,64,64", executor="serial")
    return data, ref


def _fresh_copy(ref: Path, ws: Path) -> None:
    """A copy of a stitched and aligned workspace with everything of `align` removed."""
    shutil.copytree(ref, ws, ignore=shutil.ignore_patterns("align", "logs", "align-*"))
    shutil.rmtree(ws / "volume.zarr" / "raw")


def _aligned(ws: Path) -> dict:
    out = tree_digest(ws / "volume.zarr" / "raw")
    out.update({f"t/{k}": v for k, v in tree_digest(ws / "align" / "transforms").items()})
    return out


def test_sigkill_then_resume_is_bit_identical(small, tmp_path):
    data, ref = small
    ws = tmp_path / "ws"
    _fresh_copy(ref, ws)
    done = ws / "blockwise" / "align-render" / "done"
    cmd = [
        sys.executable,
        "-m",
        "connectome",
        "align",
        "--workspace",
        str(ws),
        "--block-shape",
        "2,64,64",
        "--executor",
        "local",
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "CONNECTOME_BLOCK_DELAY_S": "0.1"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 8):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    finished = len(os.listdir(done))
    assert 8 <= finished < 48, "the kill must land mid-render"
    r = run_cli("align", "--workspace", ws, "--block-shape", "2,64,64", "--executor", "local", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert f"{48 - finished} blocks processed, {finished} already done" in r.stdout
    assert _aligned(ws) == _aligned(ref)
    assert (ws / "align" / "pairs.csv").read_bytes() == (ref / "align" / "pairs.csv").read_bytes()


@pytest.mark.parametrize("executor", ["local", "dask", "mpi"])
def test_identical_output_across_executors(small, tmp_path, executor, request):
    data, ref = small
    ws = tmp_path / f"ws_{executor}"
    _fresh_copy(ref, ws)
    args = ["align", "--workspace", str(ws), "--block-shape", "2,64,64"]
    if executor == "mpi":
        r = subprocess.run(
            [str(BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "connectome", *args, "--executor", "mpi"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    elif executor == "dask":
        sched = request.getfixturevalue("dask_cluster")
        r = run_cli(*args, "--executor", "dask", "--scheduler-file", sched)
    else:
        r = run_cli(*args, "--executor", executor, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert _aligned(ws) == _aligned(ref)


def test_rerun_does_nothing_and_align_needs_stitch(small, tmp_path):
    data, ref = small
    before = _aligned(ref)
    r = run_cli("align", "--workspace", ref, "--block-shape", "2,64,64", "--executor", "serial")
    assert r.returncode == 0 and "align-render: 0 blocks processed, 48 already done" in r.stdout
    assert _aligned(ref) == before
    from connectome.workspace import Workspace

    Workspace.create(tmp_path / "bare", (4, 32, 32), (40, 8, 8))
    r = run_cli("align", "--workspace", tmp_path / "bare")
    assert r.returncode == 2 and "run `connectome stitch` first" in r.stderr
    r = run_cli("align", "--workspace", tmp_path / "nowhere")
    assert r.returncode == 2 and "not found" in r.stderr


# ---------------------------------------------------------------------------------------------
# units with known answers


def test_register_pair_recovers_an_affine_and_a_smooth_warp():
    from scipy import ndimage

    from connectome.montage.align import MatchParams, register_pair

    world = texture((420, 420), seed=9)
    fixed = world[10:410, 10:410]
    a = np.array([[np.cos(0.004), -np.sin(0.004), 3.3], [np.sin(0.004), np.cos(0.004), -5.2]])
    yy, xx = np.mgrid[:400, :400].astype(float)
    # moving(P(q)) = fixed(q) with P(q) = A q + (bump, 0), bump a 1.5 px Gaussian (sigma 60) at (200, 150):
    # sample fixed at P^-1 by fixed-point iteration
    q = np.stack([yy, xx], -1)
    p = q.copy()
    ainv = np.linalg.inv(a[:, :2])
    for _ in range(8):
        b = 1.5 * np.exp(-((p[..., 0] - 200) ** 2 + (p[..., 1] - 150) ** 2) / (2 * 60.0**2))
        p = (q - a[:, 2] - np.stack([b, np.zeros_like(b)], -1)) @ ainv.T
    moving = ndimage.map_coordinates(world, [p[..., 0] + 10, p[..., 1] + 10], order=3, mode="nearest")
    mask = np.ones((400, 400), bool)
    res = register_pair(fixed, mask, moving, mask, MatchParams())
    assert res.ok, res.reason
    pts = np.stack(np.meshgrid(np.arange(60, 340, 20.0), np.arange(60, 340, 20.0), indexing="ij"), -1).reshape(-1, 2)
    want = pts @ a[:, :2].T + a[:, 2]
    want[:, 0] += 1.5 * np.exp(-((pts[:, 0] - 200) ** 2 + (pts[:, 1] - 150) ** 2) / (2 * 60.0**2))
    err = np.hypot(*(res.grid.apply(pts) - want).T)
    assert np.median(err) < 0.3 and err.max() < 1.0, (np.median(err), err.max())


def test_displacement_grid_compose_and_storage(tmp_path):
    from connectome.montage.warp import compose, identity_grid

    g = identity_grid((0, 0), (99, 99), 10.0)
    shift = DisplacementGrid(g.origin_yx, g.spacing, g.disp_yx + (1.5, -2.0))
    lin = DisplacementGrid(g.origin_yx, g.spacing, g.nodes() * 0.01)
    pts = np.array([[10.0, 20.0], [55.5, 31.2]])
    np.testing.assert_allclose(compose(shift, lin).apply(pts), pts * 1.01 + (1.5, -2.0), atol=1e-9)
    np.testing.assert_allclose(lin.dense((10, 20), (2, 3))[1, 2], (11 * 1.01, 22 * 1.01), atol=1e-9)
    shift.to_npz(tmp_path / "t.npz")
    back = DisplacementGrid.from_npz(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.disp_yx, shift.disp_yx)
    assert back.origin_yx == shift.origin_yx and back.spacing == shift.spacing


def test_fold_score_sees_a_dark_band_only():
    from connectome.montage.align import fold_score

    img = texture((300, 300), seed=4)
    mask = np.ones_like(img, bool)
    clean = fold_score(img, mask)
    yy, xx = np.mgrid[:300, :300]
    band = np.abs((yy - 150) * 0.8 + (xx - 140) * 0.6) < 5
    folded = np.where(band, 0.35 * img + 12, img)
    assert clean < 3.8 < fold_score(folded, mask)
    # a dark blob (a cell, a vessel wall) across only part of the section is not a fold
    blob = np.where(band & (xx < 140), 0.35 * img + 12, img)
    assert fold_score(blob, mask) < 3.8


def test_config_defaults_pinned_and_loadable(tmp_path):
    from connectome.config import load_config
    from connectome.errors import UserInputError
    from connectome.montage.align_stage import AlignConfig
    from connectome.montage.stitch_stage import StitchConfig

    s, a = StitchConfig(), AlignConfig()
    assert (
        s.stage_jitter_px,
        s.search_px,
        s.min_z,
        s.strong_z,
        s.min_ncc,
        s.min_peak_ratio,
        s.max_residual_px,
        s.voxel_size_nm,
    ) == (15.0, 32, 2.0, 8.0, 0.2, 1.1, 3.0, (40.0, 8.0, 8.0))
    assert (
        a.pair.match_downsample,
        a.pair.patch_px,
        a.pair.stride_px,
        a.pair.min_peak_ratio,
        a.pair.min_coverage,
        a.pair.smoothness,
        a.pair.regulariser,
        a.neighbours,
        a.max_skip,
        a.max_fold_score,
    ) == (2, 192, 64, 1.3, 0.2, 0.25, "bending", 1, 4, 3.8)
    assert (
        a.drift_prior.translation_px,
        a.drift_prior.linear_px,
        a.drift_prior.warp_px,
        a.drift_prior.match_px,
        a.drift_prior.estimate_flow,
    ) == (6.0, 1.0, 1.5, 1.0, True)
    assert a.blockwise.block_shape_zyx == (8, 256, 256)
    cfg = tmp_path / "a.yaml"
    cfg.write_text("pair:\n  patch_px: 128\n  stride_px: 48\nmax_skip: 3\n")
    loaded = load_config(AlignConfig, cfg)
    assert loaded.pair.patch_px == 128 and loaded.pair.stride_px == 48 and loaded.max_skip == 3
    for text, message in (
        ("pair:\n  patchpx: 128\n", "unknown key 'pair.patchpx'"),
        ("pair:\n  patch_px: 97\n", "patch_px must be a multiple of 2 \\* match_downsample"),
        ("pair:\n  regulariser: spline\n", "regulariser must be 'bending' or 'membrane'"),
        ("neighbours: 0\n", "neighbours >= 1"),
        ("drift_prior:\n  flow_px: -1\n", "flow_px must be >= 0"),
        ("drift_prior:\n  linear_px: -1\n", "linear_px must be >= 0"),
    ):
        cfg.write_text(text)
        with pytest.raises(UserInputError, match=message):
            load_config(AlignConfig, cfg)
    cfg.write_text("drift_prior:\n  translation_px: 0\n  warp_px: 3\n")
    loaded = load_config(AlignConfig, cfg)
    assert loaded.drift_prior.translation_px == 0 and loaded.drift_prior.warp_px == 3


def test_drift_control_bounds_the_wander_of_oblique_content(folded, tmp_path):
    """On synth tissue the matches carry the apparent motion of oblique neurites; summed plainly
    along z it makes the stack wander. The joint solve with the stage-frame prior keeps the
    error near the sections' own drift (measured on the same matches, side by side)."""
    from connectome.montage.align_stage import AlignConfig
    from connectome.montage.align_store import present_sections
    from connectome.montage.compose import compose_transforms
    from connectome.montage.zsolve import DriftPrior

    data, ws = folded
    plain_ws = tmp_path / "plain"
    shutil.copytree(ws, plain_ws, ignore=shutil.ignore_patterns("raw"))
    present, _ = present_sections(plain_ws)
    compose_transforms(plain_ws, present, (256, 256), AlignConfig(drift_prior=DriftPrior(0, 0, 0)))
    good = lambda res: np.concatenate([v for z, v in res.items() if z != 6])  # noqa: E731
    ours, plain = good(transform_residuals(data, ws)), good(transform_residuals(data, plain_ws))
    print(
        f"synth residual: drift control median {np.median(ours):.2f} / max {ours.max():.2f} px; "
        f"plain composition {np.median(plain):.2f} / {plain.max():.2f} px"
    )
    assert ours.max() < 0.5 * plain.max()
    assert np.median(ours) < np.median(plain)


def _chain_edges(d_list, ncc):
    from connectome.montage.zsolve import Edge

    return [
        Edge(z + 1, z, w, (lambda q, d=d: np.broadcast_to(d, q.shape).copy()))
        for z, (d, w) in enumerate(zip(d_list, ncc))
    ]


def test_zsolve_plain_composition_and_pinning():
    """No prior: the solve sums the matches (composition). Near-identical sections (high match
    weight) are pinned by their matches: the default prior then moves them by < 0.05 px."""
    from connectome.montage.zsolve import DriftPrior, solve

    nodes = np.stack(np.meshgrid(np.arange(0, 257, 32.0), np.arange(0, 257, 32.0), indexing="ij"), -1)
    rng = np.random.default_rng(0)
    steps = rng.normal(0, 2.0, (10, 2))
    truth = np.cumsum(steps, axis=0)
    prior = DriftPrior()
    plain = solve(nodes, 0, list(range(1, 11)), _chain_edges(steps, [1.0] * 10), DriftPrior(0, 0, 0, 1.0))
    pinned = solve(nodes, 0, list(range(1, 11)), _chain_edges(steps, [prior.match_weight(0.99, 1)] * 10), prior)
    for z in range(1, 11):
        np.testing.assert_allclose(plain[z][4, 4], truth[z - 1], atol=1e-6)
        np.testing.assert_allclose(pinned[z], np.broadcast_to(truth[z - 1], pinned[z].shape), atol=0.05)


def test_zsolve_prior_splits_translation_linear_and_warp():
    """A systematic bias in weak matches (oblique content) is held back by the prior; the
    linear part and the warp are pulled harder than the translation."""
    from connectome.montage.zsolve import DriftPrior, Edge, projectors, solve

    nodes = np.stack(np.meshgrid(np.arange(0, 257, 32.0), np.arange(0, 257, 32.0), indexing="ij"), -1)
    pts = nodes.reshape(-1, 2)
    proj = projectors(pts)
    assert np.allclose(sum(proj), np.eye(len(pts))) and np.allclose(proj[0] @ proj[1], 0)
    prior = DriftPrior()
    w = prior.match_weight(0.4, 1)  # a synth-like match: sigma 1.5 px
    bias = np.array([0.8, -0.5])
    plain = solve(nodes, 0, list(range(1, 16)), _chain_edges([bias] * 15, [w] * 15), DriftPrior(0, 0, 0))
    held = solve(nodes, 0, list(range(1, 16)), _chain_edges([bias] * 15, [w] * 15), prior)
    assert np.hypot(*plain[15][0, 0]) > 13 and np.hypot(*held[15][0, 0]) < 4
    # a shear-like bias (a linear field) is held back harder than a translation of the same size
    lin = (pts - pts.mean(0)) @ np.array([[0.0, 0.004], [0.004, 0.0]])
    edges = [Edge(z + 1, z, w, (lambda q, f=lin: f.copy())) for z in range(15)]
    sheared = solve(nodes, 0, list(range(1, 16)), edges, prior)
    ratio_lin = np.abs(sheared[15]).max() / (15 * np.abs(lin).max())
    ratio_t = np.hypot(*held[15][0, 0]) / np.hypot(*(15 * bias))
    assert ratio_lin < ratio_t


def test_zsolve_keeps_content_flow_out_of_the_transforms():
    """Sections scattered around their stage frames (stationary), content moving 0.5 px per
    section: the solve attributes the trend to the content (reported as flow) and recovers
    the sections' own placement; without flow estimation the trend ends up in the transforms."""
    from connectome.montage.zsolve import DriftPrior, Edge, solve

    rng = np.random.default_rng(3)
    nodes = np.stack(np.meshgrid(np.arange(0, 257, 64.0), np.arange(0, 257, 64.0), indexing="ij"), -1)
    n, flow = 48, np.array([0.5, -0.3])
    s = np.vstack([[0.0, 0.0], rng.normal(0, 1.5, (n - 1, 2))])
    w = DriftPrior().match_weight(0.55, 1)
    edges = [
        Edge(
            z,
            z - 1,
            w,
            (lambda q, d=s[z] - s[z - 1] + flow + rng.normal(0, 0.2, 2): np.broadcast_to(d, q.shape).copy()),
        )
        for z in range(1, n)
    ]
    info: dict = {}
    est = solve(nodes, 0, list(range(1, n)), edges, DriftPrior(flow_scales_with_match=False), info=info)
    plain = solve(nodes, 0, list(range(1, n)), edges, DriftPrior(estimate_flow=False))
    err = np.array([np.hypot(*(est[z][0, 0] - s[z])) for z in range(1, n)])
    err_plain = np.array([np.hypot(*(plain[z][0, 0] - s[z])) for z in range(1, n)])
    slope = lambda e: np.polyfit(np.arange(1, n), e, 1)[0]  # noqa: E731
    print(f"flow {info['flow_yx']}, error median {np.median(err):.2f} / plain {np.median(err_plain):.2f} px")
    np.testing.assert_allclose(info["flow_yx"], flow, atol=0.1)
    assert abs(slope(np.array([est[z][0, 0] - s[z] for z in range(1, n)])[:, 0])) < 0.03
    assert np.median(err) < 0.5 * np.median(err_plain)


def test_bending_regulariser_leaves_affine_fields_alone():
    from connectome.montage.align import smooth_field

    yy, xx = np.meshgrid(np.arange(8.0), np.arange(9.0), indexing="ij")
    r = np.stack([0.3 * yy - 0.2 * xx + 1.0, 0.1 * xx + 0.5], -1)
    acc = np.zeros(yy.shape, dtype=bool)
    acc[2:6, 2:7] = True  # matches in the middle only
    bent = smooth_field(r, acc, smoothness=100.0, bending=True, ridge=0.0)
    np.testing.assert_allclose(bent, r, atol=1e-3)  # exact on the matches and extended linearly
    membrane = smooth_field(r, acc, smoothness=100.0, bending=False)
    assert np.abs(membrane - r)[acc].max() > 0.3  # a membrane flattens the slope


def test_step1_refs_match_several_neighbours():
    from connectome.montage.align_store import step1_refs

    refs = step1_refs([0, 1, 3, 4, 5], 6, 2)
    assert refs == [(), (0,), (), (1, 0), (3, 1), (4, 3)]
    assert step1_refs([0, 1, 3], 4, 1) == [(), (0,), (), (1,)]
