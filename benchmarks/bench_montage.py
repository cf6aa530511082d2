"""Stitch + align: throughput, peak memory and accuracy, side by side with a naive baseline.

Datasets (``connectome synth`` volumes; seeds never used for tuning the defaults are passed with
``--seeds``)::

    demo       --preset demo                                       64 x 512 x 512
    large      --preset demo --shape 24,1024,1024                  24 x 1024 x 1024
    variant    --preset demo --set tile_overlap=0.05 --set stage_jitter_px=15
    fibres     --preset fibres (oriented fibres: a net content flow of ~0.6 px per section)
    known      connectome.montage.testdata.make_dataset: one texture distorted per section by known
               transforms (no content change between sections: geometry errors show)

For each: ``connectome stitch`` and ``connectome align`` run as real processes (wall time and
peak RSS of the whole process tree via ``_measure.run_measured``), then the outputs are scored
with the alignment criteria of ``connectome evaluate`` (:mod:`connectome.evaluate.align_truth`):
(a) adjacent-pair error median / p95, (b) worst section after one global affine, (c) drift,
(d) neighbour NCC minus the truth's (both smoothed by 1 px), and the stitched tile errors
(median / max over tiles placed by registration; tiles the stitcher left at their nominal
position are counted, not scored).

The baseline registers the same stitched montages by whole-image
``skimage.registration.phase_cross_correlation`` per section pair (translation only, upsample 10),
chains the shifts and renders with ``scipy.ndimage.shift`` one section at a time; it is scored by
the same criteria. Throughput is output voxels (the aligned volume) per second of stitch + align
(the baseline: our stitch + its alignment).

    .venv/bin/python benchmarks/bench_montage.py --datasets demo,large,variant --workers 2
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402

CLI = [sys.executable, "-m", "connectome"]
DATASETS = {
    "demo": ["--preset", "demo"],
    "large": ["--preset", "demo", "--shape", "24,1024,1024"],
    "variant": ["--preset", "demo", "--set", "tile_overlap=0.05", "--set", "stage_jitter_px=15"],
    "fibres": ["--preset", "fibres"],
}


def _columns(path: Path) -> dict:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: [r[k] for r in rows] for k in (rows[0].keys() if rows else [])}


def truth_raw(data: Path):
    if (data / "truth_raw.npy").exists():
        return np.load(data / "truth_raw.npy", mmap_mode="r")
    import zarr

    return zarr.open_group(str(data / "truth.zarr"), mode="r")["raw"]


def score(ws: Path, data: Path, transforms: dict, status: dict, raw) -> dict:
    """Criteria (a)-(d) for one set of section transforms (callables) and its rendered volume."""
    from connectome.evaluate import align_truth
    from connectome.evaluate.alignment import pair_ncc

    truth = align_truth.read_truth_sections(data)
    tiles = _columns(ws / "stitch" / "tiles.csv")
    offsets = align_truth.tile_offsets(tiles, _columns(data / "truth" / "tiles.csv"))
    nz, h, w = truth["doc"]["shape_zyx"]
    crit = align_truth.transform_criteria(nz, (h, w), transforms, status, truth["by_z"], offsets, 16)
    flagged = {z for z, s in status.items() if s in align_truth.QC_FLAGGED}
    flagged |= {z for z, r in truth["by_z"].items() if r.get("missing")}
    d = align_truth.over_registration(pair_ncc(raw, smooth_px=1.0), pair_ncc(truth_raw(data), smooth_px=1.0), flagged)
    a, b, c = crit["adjacent_pair_error"], crit["accumulated_error"], crit["drift"]
    return {
        "pair_median_px": a.get("median_px"),
        "pair_p95_px": a.get("p95_px"),
        "pairs_excluded": a.get("n_pairs_excluded"),
        "worst_section_px": b.get("worst_rms_px"),
        "drift_px_per_section": c.get("slope_px_per_section"),
        "delta_ncc": d.get("delta_ncc"),
    }


def stitch_scores(ws: Path, data: Path) -> dict:
    from connectome.evaluate.stitching import tile_position_errors

    return tile_position_errors(_columns(ws / "stitch" / "tiles.csv"), _columns(data / "truth" / "tiles.csv"))


# ---------------------------------------------------------------------------------------------
# the naive baseline (run in its own process so its time and memory are measured alike)


def baseline(ws: Path, out_json: Path) -> None:
    import zarr
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    from connectome.montage.store import open_montages

    montage, coverage, attrs = open_montages(ws)
    oy, ox = attrs["offset_yx"]
    nz = montage.shape[0]
    frame = zarr.open_group(str(ws / "volume.zarr"), mode="r")["raw"].shape[1:]
    present = [z for z in range(nz) if np.asarray(coverage[z, ::16, ::16]).any()]
    shifts = {present[0]: np.zeros(2)}
    prev_img = np.asarray(montage[present[0]], np.float32)
    for z in present[1:]:
        img = np.asarray(montage[z], np.float32)
        s, _, _ = phase_cross_correlation(prev_img, img, upsample_factor=10, normalization=None)
        # reference(q) = moving(q - s): T_z = T_prev - s
        shifts[z] = shifts[[p for p in present if p < z][-1]] - np.asarray(s)
        prev_img = img
    out = zarr.open_array(
        str(ws / "baseline_raw.zarr"), mode="w", shape=(nz,) + tuple(frame), chunks=(1,) + tuple(frame), dtype="uint8"
    )
    for z in present:
        img = np.asarray(montage[z], np.float32)
        moved = ndimage.shift(img, -shifts[z], order=1, mode="constant")
        out[z] = np.clip(np.rint(moved[oy : oy + frame[0], ox : ox + frame[1]]), 0, 255).astype(np.uint8)
    out_json.write_text(json.dumps({str(z): list(map(float, v)) for z, v in shifts.items()}))


# ---------------------------------------------------------------------------------------------


def run_dataset(name: str, data: Path, work: Path, workers: int) -> dict:
    import zarr

    from connectome.montage.warp import DisplacementGrid

    sj = json.loads((data / "truth" / "sections.json").read_text())
    nz, h, w = sj["shape_zyx"]
    out_mpx = nz * h * w / 1e6
    ws = work / f"ws_{name}"
    shutil.rmtree(ws, ignore_errors=True)
    t_st, rss_st, r = run_measured(
        CLI
        + [
            "stitch",
            "--tiles",
            str(data / "tiles" / "manifest.csv"),
            "--workspace",
            str(ws),
            "--frame-shape",
            f"{h},{w}",
            "--workers",
            str(workers),
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    t_al, rss_al, r = run_measured(CLI + ["align", "--workspace", str(ws), "--workers", str(workers), "--no-progress"])
    assert r.returncode == 0, r.stderr
    records = {r["z"]: r for r in json.loads((ws / "align" / "sections.json").read_text())}
    status = {z: r["status"] for z, r in records.items()}
    ours = {
        z: DisplacementGrid.from_npz(ws / "align" / "transforms" / f"z{z:05d}.npz").apply
        for z in records
        if (ws / "align" / "transforms" / f"z{z:05d}.npz").is_file()
    }
    raw = zarr.open_group(str(ws / "volume.zarr"), mode="r")["raw"]
    acc = score(ws, data, ours, status, raw)
    st = stitch_scores(ws, data)
    t_bl, rss_bl, r = run_measured([sys.executable, __file__, "--baseline-run", str(ws), str(work / f"{name}_bl.json")])
    assert r.returncode == 0, r.stderr
    shifts = {int(k): np.asarray(v) for k, v in json.loads((work / f"{name}_bl.json").read_text()).items()}
    bl_t = {z: (lambda p, s=s: np.asarray(p, dtype=np.float64) + s) for z, s in shifts.items()}
    bl_status = {z: ("aligned" if z in shifts else "missing") for z in range(nz)}
    bl_acc = score(ws, data, bl_t, bl_status, zarr.open_array(str(ws / "baseline_raw.zarr"), mode="r"))
    flow = json.loads((ws / "align" / "flow.json").read_text()) if (ws / "align" / "flow.json").is_file() else {}
    synth = json.loads((data / "synth.json").read_text()) if (data / "synth.json").is_file() else {}
    return {
        "dataset": name,
        "shape_zyx": [nz, h, w],
        "output_mpx": round(out_mpx, 2),
        "sections_flagged": sorted(z for z, s in status.items() if s == "bad"),
        "content_flow_true_yx": synth.get("statistics", {}).get("content_flow", {}).get("mean_px_per_section_yx"),
        "content_flow_estimated_yx": flow.get("flow_px_per_section_yx"),
        "stitch": {
            "seconds": round(t_st, 2),
            "peak_rss_mb": round(rss_st / 2**20),
            "tile_err_median_px": st.get("error_median_px"),
            "tile_err_max_px": st.get("error_max_px"),
            "tiles_at_nominal": st.get("n_tiles_at_nominal", 0),
        },
        "align": {"seconds": round(t_al, 2), "peak_rss_mb": round(rss_al / 2**20), **acc},
        "ours_mpx_per_s": round(out_mpx / (t_st + t_al), 2),
        "baseline": {"seconds": round(t_bl, 2), "peak_rss_mb": round(rss_bl / 2**20), **bl_acc},
        "baseline_mpx_per_s": round(out_mpx / (t_st + t_bl), 2),
    }


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def print_table(results: list[dict]) -> None:
    print()
    print(
        f"{'dataset':8s} {'method':9s} {'stitch s':>8s} {'align s':>8s} {'MB':>5s} {'Mpx/s':>6s}  "
        f"{'tile med/max (nominal)':>22s}  {'(a) med/p95':>11s} {'(b)':>5s} {'(c)':>6s} {'(d)':>7s}"
    )
    for res in results:
        st, al, bl = res["stitch"], res["align"], res["baseline"]
        tiles = f"{_f(st['tile_err_median_px'])}/{_f(st['tile_err_max_px'])} ({st['tiles_at_nominal']})"
        for method, a, secs, mb, rate in (
            ("ours", al, al["seconds"], max(st["peak_rss_mb"], al["peak_rss_mb"]), res["ours_mpx_per_s"]),
            ("baseline", bl, bl["seconds"], bl["peak_rss_mb"], res["baseline_mpx_per_s"]),
        ):
            print(
                f"{res['dataset'] if method == 'ours' else '':8s} {method:9s} {st['seconds']:8.1f} {secs:8.1f} "
                f"{mb:5d} {rate:6.2f}  {tiles if method == 'ours' else '':>22s}  "
                f"{_f(a['pair_median_px'])}/{_f(a['pair_p95_px']):>5s} {_f(a['worst_section_px'], '{:.1f}'):>5s} "
                f"{_f(a['drift_px_per_section'], '{:.3f}'):>6s} {_f(a['delta_ncc'], '{:+.3f}'):>7s}"
            )
    print(
        "targets: tile error median <= 0.3 / max <= 1.5 px, nothing left at nominal silently; (a) <= 1 / 2 px; "
        "(b) <= 5 px; (c) <= 0.1 px/section; (d) <= +0.02; >= 2 Mpx/s"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--datasets", default="demo,large,variant", help=f"comma-separated, of {', '.join(list(DATASETS) + ['known'])}"
    )
    p.add_argument("--seed", type=int, default=4101, help="synth seed of the first dataset (then +1, +2, ...)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", help="working folder (default: a temporary one, removed afterwards)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--baseline-run", nargs=2, metavar=("WS", "OUT_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_run:
        baseline(Path(args.baseline_run[0]), Path(args.baseline_run[1]))
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_montage_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for i, name in enumerate(d.strip() for d in args.datasets.split(",") if d.strip()):
            data = work / f"data_{name}"
            if name == "known":
                from connectome.montage.testdata import make_dataset

                if not (data / "truth_raw.npy").exists():
                    make_dataset(
                        data,
                        n_sections=16,
                        frame_hw=(1024, 1024),
                        tile_px=600,
                        jitter_px=7,
                        drift_px=24,
                        rotation_deg=0.3,
                        elastic_px=3.0,
                        elastic_spacing=512,
                        noise=8.0,
                        noise_sections=(8,),
                        seed=args.seed + i,
                    )
            elif name in DATASETS:
                if not (data / "synth.json").exists():
                    t0 = time.perf_counter()
                    r = run_measured(
                        CLI + ["synth", str(data), "--seed", str(args.seed + i), "--no-progress"] + DATASETS[name]
                    )[2]
                    assert r.returncode == 0, r.stderr
                    print(f"synth {name} (seed {args.seed + i}): {time.perf_counter() - t0:.0f} s", flush=True)
            else:
                p.error(f"--datasets: unknown dataset {name!r}")
            results.append(run_dataset(name, data, work, args.workers))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
