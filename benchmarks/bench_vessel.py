"""Vessel U-Net: blockwise inference throughput and memory; training throughput on 1 and 2
Horovod ranks and the scaling efficiency.

    .venv/bin/python benchmarks/bench_vessel.py [--shape 32,1024,1024] [--workdir bench_out/vessel]
                                                [--model DIR] [--train-steps 40] [--skip-train]
                                                [--skip-inference]

1. ``connectome synth`` makes a volume of ``--shape`` (demo preset, seed 400) and its raw is
   imported into a workspace;
2. inference: ``connectome mask-vessels`` with ``--executor serial`` and with ``--executor local
   --workers 2``, each from scratch (``--restart``) in its own process: megavoxels/s of the whole
   command (model loading and both passes included; the U-Net pass alone is also reported) and
   the peak RSS of the process tree (benchmarks/_measure.py);
3. training: ``horovodrun -np N --gloo connectome train vessel`` for N = 1 and 2 with the model's
   own training config (architecture, tile size, augmentation; from its model.json), batch 4 per
   rank (weak scaling), one TensorFlow thread per rank (intra = inter = 1): steady-state
   examples/s from the trainer's log (the first step, with graph tracing, excluded) and the
   efficiency ``eps(2) / (2 * eps(1))``. ``--skip-inference`` / ``--skip-train`` run one part only.

Results go to ``WORKDIR/results.json`` and a table on stdout. The machine's core count and load
are printed too: on a shared 2-core machine, 2 ranks compete with everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

TRAINER = {
    "batch_size": 4,
    "validate_every": 0,
    "checkpoint_every": 1000,
    "log_every": 10,
    "warmup_steps": 5,
    "intra_op_threads": 1,
    "inter_op_threads": 1,
    "distributed": "horovod",
    "prefetch": 2,
}


def train_config(model_dir: Path, steps: int) -> str:
    """YAML: the model's own training config (architecture, data: tile size, zoom, ...) with the
    benchmark's trainer settings (no validation, 1 thread per rank)."""
    import yaml

    from unet import default_vessel_model

    doc = json.loads(((model_dir or default_vessel_model()) / "model.json").read_text())
    trained = doc["training"]["config"]
    cfg = {
        "model": trained["model"],
        "data": trained["data"],
        "loss": trained["loss"],
        "augment": trained["augment"],
        "trainer": {**TRAINER, "steps": steps},
        "final_validation": False,
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "connectome", *map(str, args)]


def check(res, what):
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-3000:])
        raise SystemExit(f"{what} failed with exit code {res.returncode}")


def stage_seconds(stdout: str) -> dict:
    out = {}
    for name, sec in re.findall(r"^(mask-vessels(?:-post)?): .* total, ([0-9.]+) s$", stdout, re.M):
        out[name] = float(sec)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="32,1024,1024", help="Z,Y,X of the synthetic volume")
    ap.add_argument("--workdir", default=str(ROOT / "bench_out" / "vessel"))
    ap.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "shape_zyx": args.shape}

    synth = work / "synth"
    if not (synth / "synth.json").is_file():
        check(
            run_measured(
                cli("synth", synth, "--preset", "demo", "--seed", 400, "--shape", args.shape, "--no-progress")
            )[2],
            "synth",
        )
    ws = work / "ws"
    if not (ws / "volume.zarr").is_dir():
        check(
            run_measured(
                cli(
                    "import",
                    synth / "truth.zarr" / "raw",
                    "--workspace",
                    ws,
                    "--voxel-size",
                    "40,8,8",
                    "--executor",
                    "serial",
                    "-q",
                )
            )[2],
            "import",
        )
    z, y, x = (int(v) for v in args.shape.split(","))
    mvox = z * y * x / 1e6
    model = ["--model", args.model] if args.model else []

    if not args.skip_inference:
        inference = {}
        for name, extra in (
            ("serial", ["--executor", "serial"]),
            ("local x2", ["--executor", "local", "--workers", "2"]),
        ):
            sec, peak, res = run_measured(cli("mask-vessels", "--workspace", ws, *model, *extra, "--restart"))
            check(res, f"mask-vessels ({name})")
            st = stage_seconds(res.stdout)
            inference[name] = {
                "seconds": round(sec, 2),
                "megavoxels": mvox,
                "mvox_per_s": round(mvox / sec, 3),
                "unet_pass_mvox_per_s": (round(mvox / st["mask-vessels"], 3) if "mask-vessels" in st else None),
                "postprocess_mvox_per_s": (
                    round(mvox / st["mask-vessels-post"], 3) if st.get("mask-vessels-post") else None
                ),
                "peak_rss_mib": round(peak / 2**20, 1),
            }
            print(
                f"inference {name:9s}: {sec:6.1f} s  {mvox / sec:6.2f} Mvox/s (U-Net pass "
                f"{inference[name]['unet_pass_mvox_per_s']} Mvox/s)  peak RSS {peak / 2**20:7.1f} MiB",
                flush=True,
            )
        results["inference"] = inference
        try:
            import zarr

            from connectome.evaluate import mask_overlap
            from connectome.workspace import Workspace

            truth = zarr.open_group(str(synth / "truth.zarr"), mode="r")["vessels"]
            results["inference_iou"] = round(mask_overlap(Workspace.open(ws).array("vessel_mask"), truth)["iou"], 4)
            print(f"vessel IoU on this volume (seed 400): {results['inference_iou']}")
        except Exception as exc:  # noqa: BLE001 - a benchmark reports what it can
            print(f"(IoU not computed: {exc})")

    if not args.skip_train:
        cfg = work / "train.yaml"
        cfg.write_text(train_config(Path(args.model) if args.model else None, args.train_steps))
        training = {}
        for n in (1, 2):
            out = work / f"train_np{n}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [
                str(BIN / "horovodrun"),
                "-np",
                str(n),
                "-H",
                f"localhost:{n}",
                "--gloo",
                *cli("train", "vessel", "--data", synth, "--out", out, "--config", cfg, "-q"),
            ]
            sec, peak, res = run_measured(cmd, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
            check(res, f"train with {n} rank(s)")
            end = [
                json.loads(line) for line in (out / "train" / "log.jsonl").read_text().splitlines() if '"end"' in line
            ][-1]
            training[n] = {
                "examples_per_s": round(end["examples_per_s"], 3),
                "global_batch": 4 * n,
                "steps": args.train_steps,
                "wall_s": round(sec, 1),
                "peak_rss_mib": round(peak / 2**20, 1),
            }
            print(
                f"training {n} rank(s): {end['examples_per_s']:6.2f} examples/s (global batch {4 * n}), "
                f"peak RSS {peak / 2**20:7.1f} MiB",
                flush=True,
            )
        eff = training[2]["examples_per_s"] / (2 * training[1]["examples_per_s"])
        results["training"] = {"1": training[1], "2": training[2], "scaling_efficiency_2_ranks": round(eff, 3)}
        print(f"scaling efficiency 1 -> 2 ranks: {eff:.2f}")
    results["load_avg_at_end"] = os.getloadavg()
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
