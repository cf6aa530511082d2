"""``connectome graph`` on a million synapses: seconds per phase, rows/s and peak RSS.

    .venv/bin/python benchmarks/bench_graph.py [--rows 1000000] [--segments 20000] [--seed 0]
                                               [--workdir bench_out/graph] [--repeat 1]

1. a workspace whose ``segmentation`` (16 x 256 x 256 voxels, chunks 16 x 128 x 128) holds
   ids 1..SEGMENTS as contiguous runs (~50 voxels each);
2. ``WS/synapses.csv`` with ROWS synapses: pre and post drawn uniformly from 1..SEGMENTS (1% of
   pre ids set to 0, to exercise the id-0 rule), scores uniform in [0, 1] (4 decimals), seeded;
   with 20k segments almost every synapse is its own edge, the worst case for the writers;
3. ``connectome graph --workspace WS`` in its own process (``benchmarks/_measure.py``: wall
   time and peak RSS of the process tree), ``--repeat`` times; the phases come from the
   command's own log line (open_workspace, read_csv, segment_sizes, aggregate, write_csv,
   write_graphml).

Prints JSON lines (one per phase, then a summary) and writes them to ``WORKDIR/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEG_SHAPE = (16, 256, 256)


def make_workspace(ws: Path, rows: int, segments: int, seed: int) -> float:
    """The segmentation and the synapse table; returns the seconds it took."""
    import numpy as np

    from connectome.workspace import Workspace

    t0 = time.perf_counter()
    w = Workspace.create(ws, SEG_SHAPE, (40, 8, 8))
    n = int(np.prod(SEG_SHAPE))
    seg = (1 + np.arange(n, dtype=np.uint64) * np.uint64(segments) // np.uint64(n)).reshape(SEG_SHAPE)
    w.require_array("segmentation", "uint64", (16, 128, 128), recreate=True)[:] = seg
    rng = np.random.default_rng(seed)
    pre = rng.integers(1, segments + 1, rows)
    pre[rng.random(rows) < 0.01] = 0
    post = rng.integers(1, segments + 1, rows)
    zyx = rng.integers(0, SEG_SHAPE, size=(rows, 3))
    score = rng.random(rows)
    with open(ws / "synapses.csv", "w") as f:
        f.write("synapse_id,z,y,x,pre_segment_id,post_segment_id,score\n")
        for lo in range(0, rows, 200_000):
            hi = min(rows, lo + 200_000)
            f.write(
                "".join(
                    f"{i},{z},{y},{x},{a},{b},{s:.4f}\n"
                    for i, (z, y, x), a, b, s in zip(
                        range(lo + 1, hi + 1),
                        zyx[lo:hi].tolist(),
                        pre[lo:hi].tolist(),
                        post[lo:hi].tolist(),
                        score[lo:hi].tolist(),
                    )
                )
            )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--segments", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs of the command (the best is reported too)")
    ap.add_argument("--workdir", default=str(ROOT / "bench_out" / "graph"))
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ws = work / f"ws_{args.rows}_{args.segments}_{args.seed}"
    lines = []

    def emit(record: dict) -> None:
        record = {"bench": "graph", **record}
        lines.append(json.dumps(record))
        print(lines[-1], flush=True)

    if not (ws / "synapses.csv").is_file():
        made = make_workspace(ws, args.rows, args.segments, args.seed)
        emit(
            {
                "step": "make_inputs",
                "seconds": round(made, 2),
                "rows": args.rows,
                "segments": args.segments,
                "csv_mib": round((ws / "synapses.csv").stat().st_size / 2**20, 1),
            }
        )
    runs = []
    for i in range(args.repeat):
        sec, peak, res = run_measured([sys.executable, "-m", "connectome", "graph", "--workspace", str(ws)])
        if res.returncode != 0:
            sys.stderr.write(res.stderr[-3000:])
            raise SystemExit(f"connectome graph failed with exit code {res.returncode}")
        m = re.search(r"phases \(s\): (.*)$", res.stderr, re.M)
        phases = {k: float(v) for k, v in re.findall(r"(\w+) ([0-9.]+)", m.group(1))} if m else {}
        for name, s in phases.items():
            rec = {"run": i, "phase": name, "seconds": s}
            if name in ("read_csv", "aggregate") and s > 0:
                rec["rows_per_s"] = round(args.rows / s)
            emit(rec)
        counts = re.search(r"graph: (\d+) neurons, (\d+) edges", res.stdout)
        runs.append(
            {
                "run": i,
                "total_seconds": round(sec, 2),
                "rows_per_s": round(args.rows / sec),
                "peak_rss_mib": round(peak / 2**20, 1),
                "nodes": int(counts.group(1)) if counts else None,
                "edges": int(counts.group(2)) if counts else None,
                "graphml_mib": round((ws / "connectivity.graphml").stat().st_size / 2**20, 1),
                "cpu_count": os.cpu_count(),
                "load_avg": [round(v, 2) for v in os.getloadavg()],
            }
        )
        emit(runs[-1])
    best = min(runs, key=lambda r: r["total_seconds"])
    emit(
        {
            "summary": True,
            "rows": args.rows,
            "best_total_seconds": best["total_seconds"],
            "best_rows_per_s": best["rows_per_s"],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        }
    )
    (work / "results.jsonl").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
