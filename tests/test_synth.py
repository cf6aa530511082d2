"""Tests of `connectome synth`: layout, determinism, realism measured on the output, acquisition
geometry, and the error paths a user can hit."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from connectome.cli import main
from connectome.errors import UserInputError
from connectome.synth import generate, make_config
from connectome.synth.acquisition import SectionTransform


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _truth(out: Path):
    import zarr

    return zarr.open_group(str(out / "truth.zarr"), mode="r")


def _tile(out: Path, rel: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(out / "tiles" / rel))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "small"
    generate(out, preset="small", seed=0, preview=True)
    return out


# ------------------------------------------------------------------------------ layout
def test_layout_matches_the_contract(small):
    meta = json.loads((small / "synth.json").read_text())
    assert meta["preset"] == "small" and meta["seed"] == 0
    shape = tuple(meta["shape_zyx"])
    assert shape == (16, 256, 256) and meta["voxel_size_nm"] == [40.0, 8.0, 8.0]
    g = _truth(small)
    for name, dtype in (("raw", "uint8"), ("neurons", "uint64"), ("vessels", "uint8"), ("synapse_clefts", "uint64")):
        a = g[name]
        assert a.shape == shape and str(a.dtype) == dtype
        assert list(a.attrs["voxel_size_nm"]) == [40.0, 8.0, 8.0]
    assert set(np.unique(g["vessels"][:])) <= {0, 1}
    assert (small / "preview.png").is_file() and not (small / ".synth-incomplete").exists()
    headers = {
        "tiles/manifest.csv": "section,row,col,path,x,y",
        "truth/synapses.csv": "synapse_id,z,y,x,pre_segment_id,post_segment_id,score",
        "truth/connectivity.csv": "pre_segment_id,post_segment_id,synapse_count,mean_score",
        "truth/tiles.csv": "section,row,col,x,y,gain,offset",
    }
    for rel, header in headers.items():
        assert (small / rel).read_text().splitlines()[0] == header


def test_synapse_tables_agree_with_the_cleft_labels(small):
    g = _truth(small)
    clefts, neurons = g["synapse_clefts"][:], g["neurons"][:]
    rows = _csv(small / "truth" / "synapses.csv")
    assert rows, "no synapse in the small volume"
    assert {int(r["synapse_id"]) for r in rows} == set(np.unique(clefts[clefts > 0]).tolist())
    present = set(np.unique(neurons).tolist())
    for r in rows:
        sid, pre, post = int(r["synapse_id"]), int(r["pre_segment_id"]), int(r["post_segment_id"])
        assert pre != post and pre in present and post in present and float(r["score"]) == 1.0
        zz, yy, xx = np.nonzero(clefts == sid)
        assert abs(int(r["z"]) - zz.mean()) <= 0.5 and abs(int(r["y"]) - yy.mean()) <= 0.5
        # the cleft lies on the interface: both partners own voxels next to it
        box = tuple(slice(max(0, c.min() - 2), c.max() + 3) for c in (zz, yy, xx))
        around = set(np.unique(neurons[box]).tolist())
        assert pre in around and post in around
    conn = _csv(small / "truth" / "connectivity.csv")
    pairs = {}
    for r in rows:
        key = (r["pre_segment_id"], r["post_segment_id"])
        pairs[key] = pairs.get(key, 0) + 1
    assert {(c["pre_segment_id"], c["post_segment_id"]): int(c["synapse_count"]) for c in conn} == pairs
    assert all(c["pre_segment_id"] != "0" and c["pre_segment_id"] != c["post_segment_id"] for c in conn)


# ------------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_data_and_another_seed_does_not(small, tmp_path):
    again = generate(tmp_path / "again", preset="small", seed=0, workers=2)  # the fixture used 1 worker
    g1, g2 = _truth(small), _truth(again)
    for name in ("raw", "neurons", "vessels", "synapse_clefts"):
        assert np.array_equal(g1[name][:], g2[name][:]), name
    for rel in (
        "tiles/manifest.csv",
        "truth/synapses.csv",
        "truth/connectivity.csv",
        "truth/tiles.csv",
        "truth/sections.json",
    ):
        assert (small / rel).read_bytes() == (again / rel).read_bytes(), rel
    rel = _csv(small / "tiles" / "manifest.csv")[-1]["path"]
    assert (small / "tiles" / rel).read_bytes() == (again / "tiles" / rel).read_bytes()
    other = generate(tmp_path / "other", shape_zyx=(4, 128, 128), preset="small", seed=1)
    same_shape = generate(tmp_path / "seed0", shape_zyx=(4, 128, 128), preset="small", seed=0)
    assert not np.array_equal(_truth(other)["raw"][:], _truth(same_shape)["raw"][:])
    assert not np.array_equal(_truth(other)["neurons"][:], _truth(same_shape)["neurons"][:])


def test_rerun_is_idempotent_and_new_parameters_replace_the_output(small, tmp_path):
    out = tmp_path / "re"
    generate(out, shape_zyx=(3, 96, 96), seed=2)
    stamp = (out / "truth" / "synapses.csv").stat().st_mtime_ns
    generate(out, shape_zyx=(3, 96, 96), seed=2)
    assert (out / "truth" / "synapses.csv").stat().st_mtime_ns == stamp
    (out / "notes.txt").write_text("mine")
    generate(out, shape_zyx=(3, 96, 80), seed=2)
    assert _truth(out)["raw"].shape == (3, 96, 80)
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------ realism
def test_neuropil_is_dense_with_vessel_and_synapses_at_realistic_density(small):
    g = _truth(small)
    neurons, vessels = g["neurons"][:], g["vessels"][:]
    non_vessel = vessels == 0
    neuron_frac = np.count_nonzero(neurons[non_vessel]) / np.count_nonzero(non_vessel)
    assert neuron_frac >= 0.85
    assert 0.01 <= vessels.mean() <= 0.15
    n_syn = len(_csv(small / "truth" / "synapses.csv"))
    vol_um3 = 16 * 256 * 256 * 40 * 8 * 8 * 1e-9
    assert 0.3 <= n_syn / vol_um3 <= 3.0
    # many neurites, a wide range of calibres, and neurites that are not parallel to z
    ids, sizes = np.unique(neurons[8][neurons[8] > 0], return_counts=True)
    assert len(ids) >= 25
    diam_nm = 2 * np.sqrt(sizes / np.pi) * 8
    assert diam_nm.min() < 250 and diam_nm.max() > 500
    moved = [
        np.linalg.norm(np.subtract(*[ndi.center_of_mass(neurons[z] == i) for z in (0, 15)])) * 8
        for i in ids
        if (neurons[0] == i).sum() > 30 and (neurons[15] == i).sum() > 30
    ]
    assert max(moved) > 300  # some neurite shifts > 300 nm over 640 nm of depth: oblique
    # the statistics written to synth.json are measured, and agree with ours
    stats = json.loads((small / "synth.json").read_text())["statistics"]
    assert stats["neuron_fraction_of_non_vessel"] == pytest.approx(neuron_frac, abs=1e-3)
    assert stats["vessel_fraction"] == pytest.approx(vessels.mean(), abs=1e-3)


def test_membranes_are_thin_and_single_pixels_too_noisy_to_threshold(small):
    g = _truth(small)
    raw = g["raw"][:].astype(np.float32)
    neurons, vessels = g["neurons"][:], g["vessels"][:]
    ecs = (neurons == 0) & (vessels == 0)
    # extracellular space is a thin seam: few voxels lie more than 2 px from a neuron
    dist = np.stack([ndi.distance_transform_edt(e) for e in ecs])
    assert np.count_nonzero(dist > 2) < 0.01 * ecs.size
    interior = (neurons > 0) & np.stack([ndi.distance_transform_edt(~e) >= 3 for e in ecs])

    def best_balanced_accuracy(img):
        a, b = np.sort(img[ecs]), np.sort(img[interior])
        t = np.arange(256)
        return float(np.max(0.5 * (np.searchsorted(a, t) / len(a) + 1 - np.searchsorted(b, t) / len(b))))

    acc_raw = best_balanced_accuracy(raw)
    acc_smooth = best_balanced_accuracy(np.stack([ndi.gaussian_filter(s, 1.0) for s in raw]))
    assert acc_raw < 0.9, acc_raw
    assert acc_smooth > acc_raw + 0.04 and acc_smooth > 0.9, (acc_raw, acc_smooth)
    assert 70 < raw[interior].mean() < 200 and raw[ecs].mean() < raw[interior].mean() - 30


# ------------------------------------------------------------------------------ acquisition
def test_tiles_overlap_cover_the_frame_and_follow_the_manifest(small):
    meta = json.loads((small / "synth.json").read_text())
    tile_px, jitter = meta["tiles"]["tile_px"], meta["tiles"]["jitter_px"]
    manifest = _csv(small / "tiles" / "manifest.csv")
    true = {(r["section"], r["row"], r["col"]): r for r in _csv(small / "truth" / "tiles.csv")}
    assert len(manifest) == len(true) == 16 * 4
    for r in manifest:
        img = _tile(small, r["path"])
        assert img.dtype == np.uint8 and img.shape == (tile_px, tile_px)
        t = true[(r["section"], r["row"], r["col"])]
        assert abs(int(t["x"]) - int(r["x"])) <= jitter and abs(int(t["y"]) - int(r["y"])) <= jitter
    for s in range(16):
        pos = {(int(t["row"]), int(t["col"])): (int(t["y"]), int(t["x"])) for k, t in true.items() if k[0] == str(s)}
        nominal = {
            (int(r["row"]), int(r["col"])): (int(r["y"]), int(r["x"])) for r in manifest if r["section"] == str(s)
        }
        for (row, col), (_y, _x) in pos.items():
            for nb, axis in (((row, col + 1), 1), ((row + 1, col), 0)):
                if nb in pos:
                    for p in (pos, nominal):
                        overlap = (tile_px - (p[nb][axis] - p[(row, col)][axis])) / tile_px
                        assert 0.08 <= overlap <= 0.15, overlap
    sec0 = {(r["row"], r["col"]): r for r in manifest if r["section"] == "0"}
    assert (int(sec0[("0", "0")]["x"]), int(sec0[("0", "0")]["y"])) == (0, 0)
    assert (int(true[("0", "0", "0")]["x"]), int(true[("0", "0", "0")]["y"])) == (0, 0)


def test_section_zero_is_the_frame_and_its_tiles_are_raw_with_a_gain(small):
    sections = json.loads((small / "truth" / "sections.json").read_text())["sections"]
    s0 = sections[0]
    assert s0["transform"]["affine"] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] and s0["transform"]["elastic"] is None
    assert not s0["missing"] and not s0["damaged"]
    raw = _truth(small)["raw"][0]
    for t in (r for r in _csv(small / "truth" / "tiles.csv") if r["section"] == "0"):
        y, x = int(t["y"]), int(t["x"])
        img = _tile(small, f"s0000/r{int(t['row']):02d}_c{int(t['col']):02d}.png").astype(int)
        ys, xs = slice(max(0, y), min(256, y + img.shape[0])), slice(max(0, x), min(256, x + img.shape[1]))
        expect = np.clip(np.rint(float(t["gain"]) * raw[ys, xs] + float(t["offset"])), 0, 255)
        assert np.array_equal(img[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x], expect)


def test_true_section_transform_maps_tiles_back_onto_raw(small):
    """Pixels of a drifted, warped section, pulled back with sections.json, match raw."""
    sections = json.loads((small / "truth" / "sections.json").read_text())["sections"]
    s = 11
    tr = sections[s]["transform"]
    e = tr["elastic"]
    assert e is not None and tr["affine"] != [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    st = SectionTransform(
        np.array(tr["affine"])[:, :2],
        np.array(tr["affine"])[:, 2],
        tuple(e["origin_yx"]),
        e["spacing_px"],
        np.array(e["dy"]),
        np.array(e["dx"]),
    )
    raw = _truth(small)["raw"][s].astype(np.float64)
    t = next(
        r for r in _csv(small / "truth" / "tiles.csv") if r["section"] == str(s) and r["row"] == "0" and r["col"] == "0"
    )
    img = (_tile(small, f"s{s:04d}/r00_c00.png").astype(np.float64) - float(t["offset"])) / float(t["gain"])
    ty, tx = np.mgrid[0 : img.shape[0] : 3, 0 : img.shape[1] : 3]
    m = np.stack([ty.ravel() + int(t["y"]), tx.ravel() + int(t["x"])], 1)
    p = st.inverse(m)
    assert np.allclose(st.forward(p), m, atol=1e-3)
    inside = np.all((p >= 2) & (p <= 253), axis=1)
    got = img[ty.ravel(), tx.ravel()][inside]
    with_truth = ndi.map_coordinates(raw, p[inside].T, order=3)
    naive = ndi.map_coordinates(raw, m[inside].T.astype(float), order=3)  # ignoring the drift
    err_truth, err_naive = np.abs(got - with_truth).mean(), np.abs(got - naive).mean()
    assert err_truth < 4.0 and err_truth < 0.5 * err_naive, (err_truth, err_naive)


def test_missing_and_damaged_sections_and_vessels_off(tmp_path):
    out = generate(
        tmp_path / "flags", shape_zyx=(6, 160, 160), seed=3, missing_sections=1, damaged_sections=1, vessels=False
    )
    sections = json.loads((out / "truth" / "sections.json").read_text())["sections"]
    missing = [s["section"] for s in sections if s["missing"]]
    damaged = [s for s in sections if s["damaged"]]
    assert len(missing) == 1 and len(damaged) == 1 and missing[0] != 0 and damaged[0]["section"] != 0
    assert damaged[0]["damage"]["type"] == "fold" and damaged[0]["damage"]["width_px"] > 0
    listed = {int(r["section"]) for r in _csv(out / "tiles" / "manifest.csv")}
    assert listed == set(range(6)) - set(missing)
    assert not (out / "tiles" / f"s{missing[0]:04d}").exists()
    assert _truth(out)["vessels"][:].max() == 0
    assert _truth(out)["raw"][missing[0]].std() > 10  # the truth keeps the missing section's content


# ------------------------------------------------------------------------------ config and errors
def test_presets_pin_their_shapes():
    assert make_config("small").shape_zyx == (16, 256, 256)
    assert make_config("demo").shape_zyx == (64, 512, 512)
    bench = make_config("bench").shape_zyx
    assert bench[0] >= 256 and bench[1] >= 2048 and bench[2] >= 2048
    assert make_config("demo", (8, 100, 90)).shape_zyx == (8, 100, 90)
    with pytest.raises(UserInputError, match="unknown parameter"):
        make_config("small", overrides={"nosie_sigma": 0.1})


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--shape", "3,96,96", "--seed", "5", "--no-progress"]) == 0
    assert "synth: wrote" in capsys.readouterr().out
    assert (out / "tiles" / "manifest.csv").is_file() and (out / "truth.zarr" / "zarr.json").is_file()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("shape", ["0,128,128", "4,-5,128", "4,128"])
def test_cli_rejects_bad_shapes(tmp_path, capsys, shape):
    assert main(["synth", str(tmp_path / "o"), "--shape", shape]) == 2
    assert "--shape" in _error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_cli_rejects_a_shape_too_small_for_one_tile(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "o"), "--shape", "4,40,200"]) == 2
    err = _error_line(capsys)
    assert "--shape" in err and "64" in err


def test_cli_rejects_unwritable_or_foreign_out(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["synth", str(a_file), "--shape", "2,96,96"]) == 2
    assert "not a directory" in _error_line(capsys)
    assert main(["synth", str(a_file / "sub"), "--shape", "2,96,96"]) == 2
    assert "not writable" in _error_line(capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.tif").write_text("x")
    assert main(["synth", str(foreign), "--shape", "2,96,96"]) == 2
    assert "not empty" in _error_line(capsys)
    assert (foreign / "data.tif").read_text() == "x"
    assert main(["synth", str(tmp_path / "n"), "--shape", "2,96,96", "--seed", "-1"]) == 2
    assert "--seed" in _error_line(capsys)


def test_cli_rejects_a_read_only_parent(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.name != "posix" or os.geteuid() == 0:
        # root ignores directory permissions: make creating anything inside `ro` fail the way the
        # kernel does for an unprivileged user, so the same error path runs
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if Path(self).resolve().is_relative_to(ro.resolve()):
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        assert main(["synth", str(ro / "out"), "--shape", "2,96,96"]) == 2
        assert "not writable" in _error_line(capsys)
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------------------ content flow
def _shifted_stack(flow_yx, n=6, size=192, seed=0):
    """One smooth random texture, section k shifted (subpixel, in Fourier space) by k * flow."""
    rng = np.random.default_rng(seed)
    pad = 48
    tex = ndi.gaussian_filter(rng.standard_normal((size + 2 * pad,) * 2), 1.5)
    spec = np.fft.fft2(tex)
    fy, fx = np.fft.fftfreq(tex.shape[0])[:, None], np.fft.fftfreq(tex.shape[1])[None, :]
    out = []
    for k in range(n):
        s = np.real(np.fft.ifft2(spec * np.exp(-2j * np.pi * k * (fy * flow_yx[0] + fx * flow_yx[1]))))
        s = s[pad:-pad, pad:-pad] + 0.2 * tex.std() * rng.standard_normal((size, size))
        out.append(np.clip(128 + 40 * s / tex.std(), 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.mark.parametrize("flow", [(0.3, -0.7), (-1.6, 2.25), (0.0, 0.0)])
def test_content_flow_recovers_a_known_shift_with_its_sign(flow):
    from connectome.synth.flow import FlowMeter, measure_flow

    stack = _shifted_stack(flow)  # content at (y, x) in z is at (y + dy, x + dx) in z+1
    r = measure_flow(stack)
    assert r["pairs"] == len(stack) - 1
    assert np.allclose(r["mean_px_per_section_yx"], flow, atol=0.1), r
    assert r["magnitude_px_per_section"] == pytest.approx(np.hypot(*flow), abs=0.1)
    assert max(r["std_px_yx"]) < 0.1
    meter = FlowMeter()  # fed section by section, as the generator does slab by slab
    for s in stack:
        meter.add(s)
    assert meter.result() == r


def test_synth_json_records_the_content_flow_of_the_truth_raw(small):
    from connectome.synth.flow import measure_flow

    cf = json.loads((small / "synth.json").read_text())["statistics"]["content_flow"]
    assert cf["pairs"] == 15 and "content at (y, x) in section z" in cf["method"]
    assert cf == measure_flow(_truth(small)["raw"][:])  # what the slab-wise measurement saw is truth raw
    assert cf["magnitude_px_per_section"] == pytest.approx(np.hypot(*cf["mean_px_per_section_yx"]), abs=1e-3)


def test_oriented_fibres_make_the_content_flow_their_way(tmp_path):
    flow = np.array([0.6, -0.6])
    out = generate(tmp_path / "fibres", preset="small", seed=1, fibre_fraction=0.7, fibre_flow_px=tuple(flow))
    stats = json.loads((out / "synth.json").read_text())["statistics"]
    assert stats["neuropil"]["fibre_axons"] > 0.5 * stats["neuropil"]["axons"]
    m = np.array(stats["content_flow"]["mean_px_per_section_yx"])
    cos = m @ flow / (np.linalg.norm(m) * np.linalg.norm(flow))
    assert cos > 0.8 and np.linalg.norm(m) > 0.4 * np.linalg.norm(flow), (m, cos)
    assert stats["neuropil"]["body_coverage"] > 0.7  # fibres pack as densely as free axons


def test_fibres_off_leave_the_default_data_and_fingerprint_unchanged(small, tmp_path):
    # the small fixture is the default generator's output (preset small, seed 0); these geometry
    # counts are those of the generator before fibres existed: any change of its random stream shows
    neuropil = json.loads((small / "synth.json").read_text())["statistics"]["neuropil"]
    assert {k: neuropil[k] for k in ("dendrites", "axons", "spines", "mitochondria")} == {
        "dendrites": 3,
        "axons": 174,
        "spines": 5,
        "mitochondria": 48,
    }
    assert "fibre_axons" not in neuropil
    a = generate(tmp_path / "a", shape_zyx=(4, 128, 128), seed=4)
    b = generate(
        tmp_path / "b",
        shape_zyx=(4, 128, 128),
        seed=4,
        fibre_fraction=0.0,
        fibre_flow_px=(1.0, -1.0),
        fibre_spread_deg=20.0,
    )
    for name in ("raw", "neurons"):
        assert np.array_equal(_truth(a)[name][:], _truth(b)[name][:]), name
    fp_a, fp_b = (json.loads((o / "synth.json").read_text())["fingerprint"] for o in (a, b))
    assert fp_a == fp_b and "fibre_flow_px" not in fp_a["config"]
    assert "fibre_flow_px" in make_config("small", overrides={"fibre_fraction": 0.5}).fingerprint_json()


def test_fibre_parameters_parse_and_validate(tmp_path):
    assert make_config("demo", overrides={"fibre_flow_px": "0.0,0.8"}).fibre_flow_px == (0.0, 0.8)
    assert make_config("demo", overrides={"fibre_flow_px": [0, -1]}).fibre_flow_px == (0.0, -1.0)
    fib = make_config("fibres")
    assert (
        fib.shape_zyx == make_config("demo").shape_zyx and fib.fibre_fraction > 0 and np.hypot(*fib.fibre_flow_px) > 0.5
    )
    for bad in (
        {"fibre_flow_px": "1,2,3"},
        {"fibre_flow_px": "a,b"},
        {"fibre_fraction": 1.5},
        {"fibre_spread_deg": -1.0},
    ):
        with pytest.raises(UserInputError, match="fibre_"):
            make_config("small", overrides=bad)
    out = tmp_path / "cli"
    assert (
        main(
            [
                "synth",
                str(out),
                "--shape",
                "3,96,96",
                "--no-progress",
                "--set",
                "fibre_fraction=0.5",
                "--set",
                "fibre_flow_px=-0.5,0.8",
            ]
        )
        == 0
    )
    meta = json.loads((out / "synth.json").read_text())
    assert meta["parameters"]["fibre_flow_px"] == [-0.5, 0.8] and meta["statistics"]["content_flow"]["pairs"] == 2


def test_large_jitter_on_small_overlaps_leaves_no_gaps():
    """5 % overlap with +/-15 px jitter: without the acquisition QC about a quarter of the seams
    would be gaps; with it every neighbour pair overlaps by >= min_tile_overlap_px, and the QC
    never touches the presets' own jitter."""
    from connectome.synth.acquisition import plan_acquisition

    def seams(cfg, seed):
        plan = plan_acquisition(cfg, seed)
        g, out = plan.grid, []
        for sec in plan.sections:
            pos = {(t.row, t.col): t.true_yx for t in sec.tiles}
            for (r, c), (y, x) in pos.items():
                if (r, c + 1) in pos:
                    out.append(g.tile_px - (pos[(r, c + 1)][1] - x))
                if (r + 1, c) in pos:
                    out.append(g.tile_px - (pos[(r + 1, c)][0] - y))
        return np.asarray(out), plan

    over = {"tile_overlap": 0.05, "stage_jitter_px": 15}
    qc, plan = seams(make_config("demo", shape_zyx=(8, 512, 512), overrides=over), 5)
    raw, _ = seams(make_config("demo", shape_zyx=(8, 512, 512), overrides={**over, "min_tile_overlap_px": 0}), 5)
    assert (raw < 1).mean() > 0.1 and qc.min() >= 6
    assert (
        np.abs(
            np.array([t.true_yx for s in plan.sections for t in s.tiles])
            - np.array([t.nominal_yx for s in plan.sections for t in s.tiles])
        ).max()
        >= 10
    )
    dflt, _ = seams(make_config("demo", shape_zyx=(8, 512, 512)), 5)
    off, _ = seams(make_config("demo", shape_zyx=(8, 512, 512), overrides={"min_tile_overlap_px": 0}), 5)
    np.testing.assert_array_equal(dflt, off)
