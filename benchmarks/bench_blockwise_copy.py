"""Blockwise copy through the engine vs a plain dask copy, side by side.

    .venv/bin/python benchmarks/bench_blockwise_copy.py [--gib 1] [--workdir bench_out] [--keep]

Makes an EM-like uint8 zarr volume of ``--gib`` GiB (and one twice that size, to show that
peak memory stays flat), then copies each

* through the engine: ``connectome import SRC.zarr --workspace WS --executor local`` (blockwise,
  done-markers, atomic chunk writes, 2 worker processes), and
* with plain dask: ``dask.array.from_zarr(SRC).to_zarr(DST)`` (threaded scheduler, same chunks,
  same zarr codec defaults),

each in its own process, and prints throughput (MiB/s), the ratio engine/dask (goal >= 0.8) and
the peak RSS of each process tree (goal <= 2 GiB, flat when the volume doubles).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402

CHUNK = (32, 512, 512)

DASK_COPY = """
import sys, dask, dask.array as da
dask.config.set(scheduler="threads", num_workers=2)
src, dst = sys.argv[1], sys.argv[2]
a = da.from_zarr(src)
a.to_zarr(dst, overwrite=True)
"""


def make_source(path: Path, shape) -> None:
    """An EM-like volume: smooth blobs + membranes-ish ridges + noise, written slab by slab."""
    import numpy as np
    import zarr
    from scipy.ndimage import gaussian_filter

    arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=CHUNK, dtype="uint8", zarr_format=3)
    rng = np.random.default_rng(0)
    tile = gaussian_filter(rng.normal(size=(CHUNK[0], 1024, 1024)).astype(np.float32), (2, 6, 6))
    tile = (tile - tile.mean()) / (tile.std() + 1e-6)
    reps = (1, -(-shape[1] // 1024), -(-shape[2] // 1024))
    base = np.tile(tile, reps)[:, : shape[1], : shape[2]]
    for z0 in range(0, shape[0], CHUNK[0]):
        z1 = min(shape[0], z0 + CHUNK[0])
        b = np.roll(base, 17 * z0, axis=2)[: z1 - z0]
        slab = 140 + 30 * b + rng.normal(0, 12, size=b.shape).astype(np.float32)
        slab -= 60 * (np.abs(np.roll(b, 5, axis=1)) < 0.08)
        arr[z0:z1] = np.clip(slab, 0, 255).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of the first volume in GiB (the second is 2x)")
    ap.add_argument("--workdir", default="bench_out/blockwise_copy")
    ap.add_argument("--keep", action="store_true", help="keep the volumes afterwards")
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    side = 4096
    rows = []
    for factor in (1, 2):
        z = int(round(args.gib * factor * 2**30 / (side * side)))
        shape = (z, side, side)
        nbytes = z * side * side
        src = work / f"src_{factor}.zarr"
        if not (src / "zarr.json").exists():
            print(f"making source {shape} ({nbytes / 2**30:.2f} GiB) ...", flush=True)
            make_source(src, shape)
        for name in ("engine", "dask"):
            dst = work / f"{name}_{factor}"
            shutil.rmtree(dst, ignore_errors=True)
            if name == "engine":
                cmd = [
                    sys.executable,
                    "-m",
                    "connectome",
                    "import",
                    str(src),
                    "--workspace",
                    str(dst),
                    "--voxel-size",
                    "40,8,8",
                    "--block-shape",
                    ",".join(map(str, CHUNK)),
                    "--executor",
                    "local",
                    "--workers",
                    "2",
                    "--no-progress",
                    "-q",
                ]
            else:
                cmd = [sys.executable, "-c", DASK_COPY, str(src), str(dst / "copy.zarr")]
            secs, peak, res = run_measured(cmd)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                return 1
            rows.append((factor, name, shape, nbytes, secs, peak))
            print(
                f"{name:6s} {nbytes / 2**30:5.2f} GiB  {secs:7.2f} s  {nbytes / 2**20 / secs:8.1f} MiB/s  "
                f"peak RSS {peak / 2**20:7.1f} MiB",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(dst, ignore_errors=True)
    print("\nsize_GiB  engine_MiB/s  dask_MiB/s  ratio  engine_peak_MiB  dask_peak_MiB")
    for factor in (1, 2):
        e = next(r for r in rows if r[0] == factor and r[1] == "engine")
        d = next(r for r in rows if r[0] == factor and r[1] == "dask")
        te, td = e[3] / 2**20 / e[4], d[3] / 2**20 / d[4]
        print(
            f"{e[3] / 2**30:8.2f}  {te:12.1f}  {td:10.1f}  {te / td:5.2f}  {e[5] / 2**20:15.1f}  {d[5] / 2**20:13.1f}"
        )
    e1 = next(r for r in rows if r[0] == 1 and r[1] == "engine")[5]
    e2 = next(r for r in rows if r[0] == 2 and r[1] == "engine")[5]
    print(f"\nengine peak RSS growth when the volume doubles: {e2 / e1:.2f}x (flat = ~1.0)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
