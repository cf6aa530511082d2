"""Wall time and peak memory of `connectome synth` for the demo and bench presets.

    .venv/bin/python benchmarks/bench_synth.py                      # demo preset only
    .venv/bin/python benchmarks/bench_synth.py --bench              # + bench preset (256x2048x2048)
    .venv/bin/python benchmarks/bench_synth.py --bench --bench-shape 64,1024,1024   # reduced bench
    .venv/bin/python benchmarks/bench_synth.py --workdir bench_out --keep

Each run is its own process (``python -m connectome.cli synth ...``); the figures are the wall
time and the peak RSS of that process tree (sampled every 50 ms by ``_measure.run_measured``).
Goals: demo <= 60 s on 2 cores; bench with bounded memory (peak RSS well below 8 GiB, and about
the same for a reduced and the full shape, because the volume is made in z-slabs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_one(preset: str, out: Path, shape: str | None, seed: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        sys.executable,
        "-m",
        "connectome.cli",
        "synth",
        str(out),
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--no-progress",
        "-q",
    ]
    if shape:
        cmd += ["--shape", shape]
    seconds, peak, res = run_measured(cmd)
    if res.returncode != 0:
        raise SystemExit(f"synth --preset {preset} failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")
    meta = json.loads((out / "synth.json").read_text())
    z, y, x = meta["shape_zyx"]
    return {
        "preset": preset,
        "shape_zyx": [z, y, x],
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak / 2**20),
        "mvoxels_per_s": round(z * y * x / seconds / 1e6, 2),
        "output_mib": round(_size(out) / 2**20),
        "tiles": meta["tiles"]["rows"] * meta["tiles"]["cols"],
        "statistics": {
            k: meta["statistics"][k]
            for k in ("neuron_fraction_of_non_vessel", "vessel_fraction", "synapse_density_per_um3", "noise_sigma_gray")
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", action="store_true", help="also run the bench preset (large: minutes)")
    ap.add_argument("--bench-shape", metavar="Z,Y,X", help="a reduced shape for the bench preset")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated datasets")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_synth_"))
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        if not args.no_demo:
            runs.append(run_one("demo", work / "demo", None, args.seed))
            r = runs[-1]
            print(
                f"demo  {r['shape_zyx']}: {r['seconds']} s (goal <= 60 s), peak RSS {r['peak_rss_mib']} MiB, "
                f"{r['mvoxels_per_s']} Mvoxel/s, output {r['output_mib']} MiB",
                flush=True,
            )
        if args.bench:
            runs.append(run_one("bench", work / "bench", args.bench_shape, args.seed))
            r = runs[-1]
            print(
                f"bench {r['shape_zyx']}: {r['seconds']} s, peak RSS {r['peak_rss_mib']} MiB (goal well below "
                f"8192), {r['mvoxels_per_s']} Mvoxel/s, output {r['output_mib']} MiB",
                flush=True,
            )
        print(json.dumps(runs, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
