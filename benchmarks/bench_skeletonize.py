"""``connectome skeletonize`` on a demo-size segmentation (64 x 512 x 512 voxels of 40 x 8 x 8 nm):
wall time, peak RSS, skeletons and cable length.

    .venv/bin/python benchmarks/bench_skeletonize.py [--source demo_ws] [--workdir bench_out/skeletonize]
                                                     [--workers 1,2] [--block-shape 64,256,256]

1. the segmentation: ``SOURCE/volume.zarr/segmentation`` (default ``demo_ws``, the workspace of
   ``connectome demo``); if SOURCE has none, ``connectome synth --preset demo --seed 1`` is made in
   WORKDIR and its true ``neurons`` are used;
2. it is copied into a fresh workspace ``WORKDIR/ws`` (chunks 32 x 256 x 256);
3. ``connectome skeletonize --workspace WORKDIR/ws --restart`` runs in its own process for each
   worker count (``--executor serial`` for 1, ``local`` otherwise), timed with
   ``benchmarks/_measure.py`` (wall time, peak RSS of the process tree);
4. a second run (nothing to do) is timed too.

Prints one JSON line per run and writes them to ``WORKDIR/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def source_segmentation(source: Path, workdir: Path):
    import zarr

    from connectome.workspace import Workspace

    if (source / "volume.zarr").is_dir():
        ws = Workspace.open(source, mode="r")
        if ws.has("segmentation"):
            return ws.array("segmentation"), ws.voxel_size_nm, f"{source}/volume.zarr/segmentation"
    syn = workdir / "synth"
    if not (syn / "synth.json").is_file():
        r = run_measured(
            [sys.executable, "-m", "connectome", "synth", str(syn), "--preset", "demo", "--seed", "1", "--no-progress"]
        )[2]
        if r.returncode:
            raise SystemExit(r.stderr)
    arr = zarr.open_array(str(syn / "truth.zarr" / "neurons"), mode="r")
    return arr, tuple(arr.attrs["voxel_size_nm"]), f"{syn}/truth.zarr/neurons"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(ROOT / "demo_ws"))
    ap.add_argument("--workdir", default=str(ROOT / "bench_out" / "skeletonize"))
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--block-shape", default="64,256,256")
    a = ap.parse_args(argv)
    import numpy as np

    from connectome.workspace import Workspace

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src, vs, where = source_segmentation(Path(a.source), work)
    ws_path = work / "ws"
    shutil.rmtree(ws_path, ignore_errors=True)
    ws = Workspace.create(ws_path, src.shape, vs)
    data = np.asarray(src[:]).astype(np.uint64)
    ws.require_array("segmentation", "uint64", (32, 256, 256))[:] = data
    ids, counts = np.unique(data, return_counts=True)
    base = {
        "source": where,
        "shape_zyx": list(data.shape),
        "voxel_size_nm": list(vs),
        "segments": int((ids != 0).sum()),
        "segments_over_100_voxels": int(((ids != 0) & (counts >= 100)).sum()),
        "block_shape": a.block_shape,
    }
    rows = []
    for w in (int(x) for x in a.workers.split(",")):
        execu = ["--executor", "serial"] if w == 1 else ["--executor", "local", "--workers", str(w)]
        for attempt in ("fresh", "rerun"):
            cmd = [
                sys.executable,
                "-m",
                "connectome",
                "skeletonize",
                "--workspace",
                str(ws_path),
                "--block-shape",
                a.block_shape,
                "--no-progress",
                *execu,
            ] + (["--restart"] if attempt == "fresh" else [])
            seconds, peak, r = run_measured(cmd)
            if r.returncode:
                raise SystemExit(r.stderr)
            summary = json.loads((ws_path / "skeletons" / "summary.json").read_text())
            row = {
                **base,
                "workers": w,
                "run": attempt,
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(peak / 2**20),
                "skeletons": summary["segments"],
                "cable_length_mm": round(summary["cable_length_nm"] / 1e6, 2),
                "segments_in_several_pieces": summary["segments_in_several_pieces"],
                "stdout": r.stdout.strip(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(work / "results.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
