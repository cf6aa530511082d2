"""Stitch + align throughput, peak memory and accuracy, next to a naive baseline.

Two datasets:

* ``synth``  -- ``connectome synth --preset bench`` at ``--shape`` (tissue whose structures run
  obliquely through the sections: consecutive sections differ, so content-based alignment
  drifts away from the physical truth over many sections -- an inherent limit, shown here);
* ``known``  -- :func:`connectome.montage.testdata.make_dataset`: one texture distorted per
  section by known transforms (the transforms are recoverable; geometry errors show).

For each: ``connectome stitch`` and ``connectome align`` are run as real processes (wall time,
peak RSS of the whole process tree via ``_measure.run_measured``), then scored against the
ground truth: tile positions (anchored at tile (0, 0)), transform residuals on a 16 px grid
of the aligned frame (sections the QC flags excluded), and mean neighbour NCC. The baseline
registers the same stitched montages by whole-image ``skimage.registration.phase_cross_correlation``
per section pair (translation only, upsample 10), chains the shifts and renders with
``scipy.ndimage.shift`` one section at a time.

    .venv/bin/python benchmarks/bench_montage.py --shape 24,1024,1024 --workers 2
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


def _tiles(path: Path) -> dict:
    with open(path) as f:
        return {(int(r["section"]), int(r["row"]), int(r["col"])): (float(r["y"]), float(r["x"]))
                for r in csv.DictReader(f)}


def stitch_errors(ws: Path, data: Path) -> np.ndarray:
    """Tile position errors anchored at tile (0, 0), leaving out sections where the stitch QC
    accepted no pair at all (e.g. tiles of pure noise: nothing to register, all at nominal)."""
    est, tru = _tiles(ws / "stitch" / "tiles.csv"), _tiles(data / "truth" / "tiles.csv")
    with open(ws / "stitch" / "sections.csv") as f:
        unmatched = {int(r["section"]) for r in csv.DictReader(f) if r["n_accepted"] in ("", "0")}
    out = []
    for (s, r, c), e in est.items():
        if (s, 0, 0) in est and (s, r, c) in tru and s not in unmatched:
            out.append(np.hypot(*(np.subtract(e, est[(s, 0, 0)]) - np.subtract(tru[(s, r, c)], tru[(s, 0, 0)]))))
    return np.asarray(out)


def transform_errors(ws: Path, data: Path, mapping) -> np.ndarray:
    """|T_est(p) - T_true(p)| over a 16 px grid, all unflagged sections; ``mapping(z, pts)``
    gives the estimate in the section's stitched montage frame (None = flagged/missing)."""
    from connectome.montage.testdata import forward

    sj = json.loads((data / "truth" / "sections.json").read_text())
    h, w = sj["shape_zyx"][1:]
    est, tru = _tiles(ws / "stitch" / "tiles.csv"), _tiles(data / "truth" / "tiles.csv")
    yy, xx = np.meshgrid(np.arange(0, h, 16.0), np.arange(0, w, 16.0), indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], 1)
    out = []
    for sec in sj["sections"]:
        s = sec["section"]
        m = None if sec["missing"] else mapping(s, pts)
        if m is None:
            continue
        keys = [k for k in est if k[0] == s and k in tru]
        d = np.median([np.subtract(est[k], tru[k]) for k in keys], axis=0)
        out.append(np.hypot(*(m - forward(sec["transform"], pts) - d).T))
    return np.concatenate(out)


def neighbour_ncc(raw, truth, skip: set) -> tuple[float, float]:
    from connectome.montage.qc import ncc

    zs = [z for z in range(raw.shape[0] - 1) if z not in skip and z + 1 not in skip]
    ours = [ncc(np.asarray(raw[z], float), np.asarray(raw[z + 1], float)) for z in zs]
    want = [ncc(np.asarray(truth[z], float), np.asarray(truth[z + 1], float)) for z in zs]
    return float(np.nanmean(ours)), float(np.nanmean(want))


def truth_raw(data: Path):
    if (data / "truth_raw.npy").exists():
        return np.load(data / "truth_raw.npy", mmap_mode="r")
    import zarr

    return zarr.open_group(str(data / "truth.zarr"), mode="r")["raw"]


# ---------------------------------------------------------------------------------------------
# the naive baseline (run in its own process so its time and memory are measured alike)

def baseline(ws: Path, out_json: Path) -> None:
    import zarr
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    from connectome.montage.stitch_stage import open_montages

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
    out = zarr.open_array(str(ws / "baseline_raw.zarr"), mode="w", shape=(nz,) + tuple(frame),
                          chunks=(1,) + tuple(frame), dtype="uint8")
    for z in present:
        img = np.asarray(montage[z], np.float32)
        moved = ndimage.shift(img, -shifts[z], order=1, mode="constant")
        out[z] = np.clip(np.rint(moved[oy:oy + frame[0], ox:ox + frame[1]]), 0, 255).astype(np.uint8)
    out_json.write_text(json.dumps({str(z): list(map(float, v)) for z, v in shifts.items()}))


# ---------------------------------------------------------------------------------------------

def run_dataset(name: str, data: Path, work: Path, workers: int) -> dict:
    import zarr

    from connectome.montage.warp import DisplacementGrid

    sj = json.loads((data / "truth" / "sections.json").read_text())
    nz, h, w = sj["shape_zyx"]
    ws = work / f"ws_{name}"
    shutil.rmtree(ws, ignore_errors=True)
    t_st, rss_st, r = run_measured(CLI + ["stitch", "--tiles", str(data / "tiles" / "manifest.csv"), "--workspace",
                                          str(ws), "--frame-shape", f"{h},{w}", "--workers", str(workers),
                                          "--no-progress"])
    assert r.returncode == 0, r.stderr
    t_al, rss_al, r = run_measured(CLI + ["align", "--workspace", str(ws), "--workers", str(workers), "--no-progress"])
    assert r.returncode == 0, r.stderr
    cov = zarr.open_group(str(ws / "stitch" / "montages.zarr"), mode="r")["coverage"]
    montage_mpx = sum(float(np.asarray(cov[z]).sum()) for z in range(cov.shape[0])) / 1e6
    raw = zarr.open_group(str(ws / "volume.zarr"), mode="r")["raw"]
    records = {r["z"]: r for r in json.loads((ws / "align" / "sections.json").read_text())}
    flagged = {z for z, r in records.items() if r["status"] in ("bad", "missing")}

    def ours(z, pts):
        if z in flagged:
            return None
        return DisplacementGrid.from_npz(ws / "align" / "transforms" / f"z{z:05d}.npz").apply(pts)

    se = stitch_errors(ws, data)
    ae = transform_errors(ws, data, ours)
    n_ours, n_truth = neighbour_ncc(raw, truth_raw(data), flagged)
    # baseline
    t_bl, rss_bl, r = run_measured([sys.executable, __file__, "--baseline-run", str(ws), str(work / f"{name}_bl.json")])
    assert r.returncode == 0, r.stderr
    shifts = {int(k): np.asarray(v) for k, v in json.loads((work / f"{name}_bl.json").read_text()).items()}
    missing = {s["section"] for s in sj["sections"] if s["missing"]}
    be = transform_errors(ws, data, lambda z, pts: pts + shifts[z] if z in shifts else None)
    braw = zarr.open_array(str(ws / "baseline_raw.zarr"), mode="r")
    n_bl, _ = neighbour_ncc(braw, truth_raw(data), flagged | missing)
    be_same = transform_errors(ws, data, lambda z, pts: pts + shifts[z] if z in shifts and z not in flagged else None)
    return {
        "dataset": name, "shape_zyx": [nz, h, w], "sections_flagged": sorted(flagged - missing),
        "sections_missing": sorted(missing),
        "stitch": {"seconds": round(t_st, 2), "peak_rss_mb": round(rss_st / 2 ** 20), "montage_mpx": round(montage_mpx, 1),
                   "mpx_per_s": round(montage_mpx / t_st, 2), "tile_err_median_px": round(float(np.median(se)), 3) if se.size else None,
                   "tile_err_max_px": round(float(se.max()), 3) if se.size else None},
        "align": {"seconds": round(t_al, 2), "peak_rss_mb": round(rss_al / 2 ** 20),
                  "mpx_per_s": round(nz * h * w / 1e6 / t_al, 2), "residual_median_px": round(float(np.median(ae)), 3),
                  "residual_max_px": round(float(ae.max()), 3), "ncc_neighbours": round(n_ours, 3),
                  "ncc_truth": round(n_truth, 3)},
        "baseline": {"seconds": round(t_bl, 2), "peak_rss_mb": round(rss_bl / 2 ** 20),
                     "mpx_per_s": round(nz * h * w / 1e6 / t_bl, 2),
                     "residual_median_px": round(float(np.median(be_same)), 3),
                     "residual_max_px": round(float(be_same.max()), 3),
                     "residual_median_all_px": round(float(np.median(be)), 3), "ncc_neighbours": round(n_bl, 3)},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="24,1024,1024", help="synth volume Z,Y,X (preset bench parameters)")
    p.add_argument("--known-shape", default="16,1024,1024", help="known-answer dataset Z,Y,X (0 to skip)")
    p.add_argument("--seed", type=int, default=1)
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
        synth = work / "synth"
        if not (synth / "synth.json").exists():
            t0 = time.perf_counter()
            r = run_measured(CLI + ["synth", str(synth), "--preset", "bench", "--shape", args.shape, "--seed",
                                    str(args.seed)])[2]
            assert r.returncode == 0, r.stderr
            print(f"synth {args.shape}: {time.perf_counter() - t0:.0f} s", flush=True)
        results.append(run_dataset("synth", synth, work, args.workers))
        print(json.dumps(results[-1]), flush=True)
        kz, ky, kx = (int(v) for v in args.known_shape.split(","))
        if kz > 0:
            from connectome.montage.testdata import make_dataset

            known = work / "known"
            if not (known / "truth_raw.npy").exists():
                make_dataset(known, n_sections=kz, frame_hw=(ky, kx), tile_px=600, jitter_px=7, drift_px=24,
                             rotation_deg=0.3, elastic_px=3.0, elastic_spacing=512, noise=8.0,
                             noise_sections=(kz // 2,), seed=args.seed)
            results.append(run_dataset("known", known, work, args.workers))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'dataset':8s} {'step':9s} {'s':>7s} {'MB':>6s} {'Mpx/s':>7s}  accuracy")
    for res in results:
        st, al, bl = res["stitch"], res["align"], res["baseline"]
        print(f"{res['dataset']:8s} {'stitch':9s} {st['seconds']:7.1f} {st['peak_rss_mb']:6d} {st['mpx_per_s']:7.2f}  "
              f"tile error median {st['tile_err_median_px']:.3f} px, max {st['tile_err_max_px']:.3f} px")
        print(f"{'':8s} {'align':9s} {al['seconds']:7.1f} {al['peak_rss_mb']:6d} {al['mpx_per_s']:7.2f}  "
              f"residual median {al['residual_median_px']:.2f} px, max {al['residual_max_px']:.2f} px; "
              f"NCC {al['ncc_neighbours']:.3f} (truth {al['ncc_truth']:.3f}); flagged {res['sections_flagged']}")
        print(f"{'':8s} {'baseline':9s} {bl['seconds']:7.1f} {bl['peak_rss_mb']:6d} {bl['mpx_per_s']:7.2f}  "
              f"residual median {bl['residual_median_px']:.2f} px, max {bl['residual_max_px']:.2f} px; "
              f"NCC {bl['ncc_neighbours']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
