"""Choose the learned-boundary watershed's parameters on validation volumes (never test volumes).

For each ``--val`` synth folder: the boundary model (default: the shipped one) predicts the
boundary map and affinities of the true raw (the in-memory path of ``connectome
predict-boundaries``; cached in ``--work``), then every combination of the grid below is
segmented whole-volume (:func:`ffn.watershed.segment_watershed`) and scored against the true
neurons (vessel voxels excluded, as ``connectome evaluate`` does). Prints one row per
combination with the per-volume and mean ARAND / VOI, best first by mean ARAND + VOI / 4.

    .venv/bin/python benchmarks/tune_watershed.py --val data/b1111 --val data/b1112 [--model DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

GRID = {
    "fragment_threshold": [0.3, 0.5],
    "seed_radius_px": [3],
    "affinities": ["learned"],
    "scoring": ["mean", "quantile_50", "quantile_75"],
    "min_size_voxels": [0],
    "merge_threshold": [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5],
}


def predictions(val: Path, model, work: Path):
    import zarr

    from unet.boundary import default_model, predict_arrays, read_spec

    g = zarr.open_group(str(val / "truth.zarr"), mode="r")
    raw = np.asarray(g["raw"][:])
    vs = tuple(float(v) for v in g["raw"].attrs["voxel_size_nm"])
    sha = read_spec(Path(model or default_model())).weights_sha256[:12]
    cache = work / f"{val.name}_{sha}.npy"
    if cache.is_file():
        b4 = np.load(cache)
    else:
        t = time.perf_counter()
        b4 = predict_arrays(raw, vs, model)
        print(f"{val.name}: predicted in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        np.save(cache, b4)
    return b4, np.asarray(g["neurons"][:]), np.asarray(g["vessels"][:])


def main(argv=None) -> int:
    from connectome.evaluate.segmentation import contingency_from_arrays, segmentation_metrics
    from ffn.watershed import WatershedConfig, absorb_small, affinities_for, agglomerate, fragments_2d

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", action="append", required=True, help="validation synth folder (repeatable)")
    p.add_argument("--model", help="boundary model directory (default: the shipped one)")
    p.add_argument("--work", default="bench_out/tune_watershed", help="cache of the predictions")
    p.add_argument("--grid", help="JSON object replacing the default grid's lists, e.g. '{\"merge_threshold\": [0.5]}'")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    grid = {**GRID, **(json.loads(a.grid) if a.grid else {})}
    vols = [(Path(v).name, *predictions(Path(v), a.model, work)) for v in a.val]
    rows = []
    fkeys = [k for k in grid if k not in ("affinities", "merge_threshold", "min_size_voxels", "scoring")]
    # the fragments depend on fkeys only; each agglomeration yields every threshold at once
    thresholds = sorted(grid["merge_threshold"])
    for fcombo in itertools.product(*(grid[k] for k in fkeys)):
        fparams = dict(zip(fkeys, fcombo))
        fcfg = WatershedConfig(**fparams)
        frags = [fragments_2d(b4[0].astype(np.float32) / 255.0, fcfg) for _, b4, _, _ in vols]
        for aff_mode, scoring in itertools.product(grid["affinities"], grid["scoring"]):
            cfg = WatershedConfig(**fparams, affinities=aff_mode, scoring=scoring)
            t0 = time.perf_counter()
            segs = [
                agglomerate(affinities_for(b4, cfg), fr, thresholds, scoring) for (_, b4, _, _), fr in zip(vols, frags)
            ]
            for min_size, (i, t) in itertools.product(grid["min_size_voxels"], enumerate(thresholds)):
                per = []
                for (name, _, neurons, vessels), s_vol in zip(vols, segs):
                    m = segmentation_metrics(
                        contingency_from_arrays(neurons, absorb_small(s_vol[i], min_size), vessels)
                    )
                    per.append((name, m["arand_error"], m["voi_split"], m["voi_merge"]))
                params = {
                    **fparams,
                    "affinities": aff_mode,
                    "scoring": scoring,
                    "min_size_voxels": min_size,
                    "merge_threshold": t,
                }
                arand = float(np.mean([r[1] for r in per]))
                voi = float(np.mean([r[2] + r[3] for r in per]))
                row = {
                    **params,
                    "arand": round(arand, 4),
                    "voi": round(voi, 4),
                    "score": round(arand + voi / 4, 4),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "volumes": {
                        n: {"arand": round(x, 4), "voi_split": round(sp, 3), "voi_merge": round(mg, 3)}
                        for n, x, sp, mg in per
                    },
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: r["score"])
    print()
    keys = list(grid.keys())
    print(" ".join(f"{k:>18}" for k in keys) + f" {'ARAND':>7} {'VOI':>6} {'score':>7}")
    for r in rows[:15]:
        print(" ".join(f"{str(r[k]):>18}" for k in keys) + f" {r['arand']:7.4f} {r['voi']:6.3f} {r['score']:7.4f}")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
