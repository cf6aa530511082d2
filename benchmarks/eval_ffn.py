"""FFN against the classical baseline on held-out synthetic volumes, side by side.

For each seed: ``connectome synth`` (preset and shape as given; seeds never used in training --
the shipped model card lists its training and validation seeds), the true raw imported as a
workspace (stage 3 in isolation: no alignment residual), then ``connectome segment`` with the FFN
(``--model``, default the shipped model) and with ``--method baseline`` in copies of that
workspace, both scored by ``connectome evaluate``. Prints one table row per (seed, method):
adapted Rand error, VOI split / merge / sum, split and merged objects, unlabelled fraction, and
wall time; the acceptance targets of the FFN stage are ARAND <= 0.10, VOI <= 0.50 and both
strictly better than the baseline.

    .venv/bin/python benchmarks/eval_ffn.py [--seeds 701,702] [--preset demo] [--shape 64,512,512]
                                            [--model DIR] [--config SEGMENT.yaml] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _cli(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "connectome"), *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"connectome {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return r


def evaluate_seed(seed: int, preset: str, shape: str, work: Path, model: str | None, config: str | None,
                  executor: str, workers: int) -> list[dict]:
    from connectome.evaluate import EvaluateConfig, evaluate_workspace

    syn = work / f"syn{seed}"
    _cli("synth", syn, "--preset", preset, "--seed", seed, "--shape", shape, "--no-progress")
    base = work / f"ws{seed}"
    _cli("import", syn / "truth.zarr" / "raw", "--workspace", base, "--voxel-size", "40,8,8")
    rows = []
    for method in ("ffn", "baseline"):
        ws = work / f"ws{seed}_{method}"
        shutil.copytree(base, ws)
        args = ["segment", "--workspace", ws, "--executor", executor, "--workers", workers, "--no-progress"]
        if method == "baseline":
            args += ["--method", "baseline"]
        else:
            args += (["--model", model] if model else []) + (["--config", config] if config else [])
        t = time.perf_counter()
        _cli(*args)
        wall = time.perf_counter() - t
        seg = evaluate_workspace(ws, syn, EvaluateConfig())["segmentation"]
        rows.append({"seed": seed, "method": method, "arand": round(seg["arand_error"], 4),
                     "voi_split": round(seg["voi_split"], 4), "voi_merge": round(seg["voi_merge"], 4),
                     "voi": round(seg["voi_sum"], 4), "split_objects": seg.get("n_split_truth_objects"),
                     "merged_segments": seg.get("n_merger_segments"),
                     "unlabelled": round(seg["unlabelled_fraction"], 4), "seconds": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="701", help="comma-separated synth seeds (held out from training)")
    p.add_argument("--preset", default="demo", choices=["small", "demo", "bench"])
    p.add_argument("--shape", default="64,512,512", metavar="Z,Y,X")
    p.add_argument("--model", help="FFN model directory (default: the shipped ffn/models/demo)")
    p.add_argument("--config", help="segment config YAML for the FFN run")
    p.add_argument("--executor", default="local", choices=["serial", "local"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", help="keep the volumes and workspaces in this folder")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(a.keep) if a.keep else Path(d)
        work.mkdir(parents=True, exist_ok=True)
        for s in (int(v) for v in a.seeds.split(",")):
            rows += evaluate_seed(s, a.preset, a.shape, work, a.model, a.config, a.executor, a.workers)
    print(f"\n{'seed':>6} {'method':>9} {'ARAND':>7} {'VOI split':>9} {'VOI merge':>9} {'VOI':>6} "
          f"{'splits':>6} {'merges':>6} {'unlab.':>7} {'time s':>7}")
    for r in rows:
        print(f"{r['seed']:>6} {r['method']:>9} {r['arand']:7.4f} {r['voi_split']:9.4f} {r['voi_merge']:9.4f} "
              f"{r['voi']:6.3f} {str(r['split_objects']):>6} {str(r['merged_segments']):>6} {r['unlabelled']:7.4f} "
              f"{r['seconds']:7.1f}")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
