"""FFN speed: the network's forward rate, and training examples/s with 1 and 2 Horovod ranks.

1. Forward (model only): FOVs/s and achieved GFLOP/s of the shipped demo, the compact and the reference network at
   batch 1 and 16, float32 and bfloat16 side by side (same weights).
2. Inference through the canvas (the shipped model or ``--model DIR``, on a held-out
   ``connectome synth`` volume at the model's pixel size): voxels/s of one subvolume, the
   fraction of its wall time spent in the network's forward pass (goal >= 0.8), the forward's
   GFLOP/s there, and ARAND / VOI against the truth -- float32 vs bfloat16, and sequential vs
   concurrent floods (the batching that fills the forward pass).
3. Training: examples/s of ``connectome train ffn`` with 1 rank and with 2 Horovod ranks
   (``horovodrun --gloo``, 1 thread each), and the scaling efficiency ``eps2 / (2 * eps1)``.

    .venv/bin/python benchmarks/bench_ffn.py [--model DIR] [--steps 40] [--skip-training] [--skip-canvas]

Run it on a quiet machine: every figure is a rate measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def forward_rates(repeats: int = 3) -> list[dict]:
    import tensorflow as tf

    from ffn.model import COMPACT, REFERENCE, build_model
    from ffn.segment import default_model_dir

    tf.config.threading.set_intra_op_parallelism_threads(0)
    rows = []
    nets = [("compact", COMPACT), ("reference", REFERENCE)]
    if (default_model_dir() / "model.json").is_file():
        from ffn.modeldir import read_model_dir

        nets.insert(0, ("demo (shipped)", read_model_dir(default_model_dir()).model))
    for name, cfg in nets:
        m32 = build_model(cfg)
        m16 = build_model(cfg, precision="bfloat16")
        m16.set_weights(m32.get_weights())
        for batch in (1, 16):
            x = tf.convert_to_tensor(
                np.random.default_rng(0).normal(size=(batch,) + cfg.fov_zyx + (len(cfg.channels) + 1,)), tf.float32
            )
            for prec, m in (("float32", m32), ("bfloat16", m16)):
                f = tf.function(m.call, reduce_retracing=True)
                f(x)
                n = max(1, repeats if batch > 1 else 4 * repeats)
                t = time.perf_counter()
                for _ in range(n):
                    f(x).numpy()
                dt = (time.perf_counter() - t) / n
                fovs = batch / dt
                rows.append(
                    {
                        "model": name,
                        "params": cfg.n_parameters(),
                        "batch": batch,
                        "precision": prec,
                        "fov_per_s": round(fovs, 2),
                        "gflop_per_s": round(fovs * cfg.flops_per_fov() / 1e9, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def canvas_rates(model_dir: str | None, work: Path) -> list[dict]:
    """One 32 x 256 x 256 subvolume (synth seed 9101, never trained on) through
    ``segment_ffn_at`` with the model at its own pixel size: voxels/s, forward fraction and
    GFLOP/s, and ARAND / VOI against the truth, for float32 and bfloat16 and for sequential
    (1) and concurrent (8) floods."""
    import zarr

    from connectome.evaluate.segmentation import Contingency, adapted_rand, voi
    from connectome.synth import generate
    from connectome.workspace import Workspace  # noqa: F401 - import cost outside the timing
    from ffn.inference import InferenceConfig
    from ffn.modeldir import read_model_dir
    from ffn.segment import SegmentConfig, _predictor, default_model_dir, segment_ffn_at
    from unet.data import intensity_stats, model_factor

    model_dir = str(Path(model_dir or default_model_dir()).resolve())
    syn = generate(work / "syn", preset="small", seed=9101, shape_zyx=(32, 256, 256))
    g = zarr.open_group(str(syn / "truth.zarr"), mode="r")
    raw, truth = np.asarray(g["raw"][:]), np.asarray(g["neurons"][:])
    spec = read_model_dir(model_dir)
    factor = model_factor(spec.voxel_size_nm[1], 8.0, "bench")
    stats = intensity_stats(raw, factor)
    bnd = None
    if "boundary" in spec.model.channels:  # the model reads the boundary channel of predict-boundaries
        from unet.boundary import predict_arrays

        bnd = predict_arrays(raw, (40.0, 8.0, 8.0))[0]
    rows = []
    for precision, conc in (("float32", 8), ("bfloat16", 8), ("float32", 1)):
        spec_pred = _predictor(model_dir, spec.weights_sha256, 0, precision)
        in_model = [0.0, 0, 0]

        def timed(x, spec_pred=spec_pred, in_model=in_model):  # called within this iteration only
            t = time.perf_counter()
            out = spec_pred[1](x)
            in_model[0] += time.perf_counter() - t
            in_model[1] += len(x)
            in_model[2] += 1
            return out

        cfg = SegmentConfig(inference=InferenceConfig(concurrent_objects=conc), precision=precision)
        t = time.perf_counter()
        labels = segment_ffn_at(raw, None, (40.0, 8.0, 8.0), factor, stats, cfg, (spec_pred[0], timed), bnd)
        wall = time.perf_counter() - t
        table = Contingency.from_labels(truth, labels).without_truth(0)
        split, merge = voi(table)
        rows.append(
            {
                "precision": precision,
                "concurrent_objects": conc,
                "voxels": int(raw.size),
                "seconds": round(wall, 2),
                "voxels_per_s": round(raw.size / wall),
                "fovs": in_model[1],
                "mean_batch": round(in_model[1] / max(1, in_model[2]), 2),
                "forward_fraction": round(in_model[0] / wall, 3),
                "forward_gflop_per_s": round(
                    in_model[1] * spec.model.flops_per_fov() / 1e9 / max(in_model[0], 1e-9), 1
                ),
                "arand": round(adapted_rand(table)[0], 4),
                "voi_split": round(split, 4),
                "voi_merge": round(merge, 4),
                "objects": int(len(np.unique(labels)) - 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def training_rates(work: Path, steps: int) -> dict:
    from connectome.synth import generate

    for s in (9201, 9202, 9203):
        generate(work / f"s{s}", preset="small", seed=s, shape_zyx=(32, 256, 256))
    (work / "t.yaml").write_text(
        "model: {depth: 6, features: 16, fov_zyx: [17, 33, 33], deltas_zyx: [4, 8, 8]}\n"
        f"trainer: {{batch_size: 4, log_every: {steps // 2}, validate_every: 0, checkpoint_every: {steps},"
        " intra_op_threads: 1, inter_op_threads: 1, warmup_steps: 0}\n"
        "examples: {val_episodes_per_volume: 1}\n"
    )
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    out = {}
    for ranks in (1, 2):
        args = [
            str(BIN / "connectome"),
            "train",
            "ffn",
            "--data",
            str(work / "s9201"),
            "--data",
            str(work / "s9203"),
            "--val",
            str(work / "s9202"),
            "--out",
            str(work / f"m{ranks}"),
            "--config",
            str(work / "t.yaml"),
            "--steps",
            str(steps),
        ]
        if ranks > 1:
            args = [str(BIN / "horovodrun"), "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo"] + args
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        events = [json.loads(line) for line in (work / f"m{ranks}" / "train" / "log.jsonl").read_text().splitlines()]
        out[ranks] = [e for e in events if e["event"] == "end"][-1]["examples_per_s"]
    row = {
        "examples_per_s_1_rank": round(out[1], 2),
        "examples_per_s_2_ranks": round(out[2], 2),
        "scaling_efficiency": round(out[2] / (2 * out[1]), 3),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="FFN model directory for the canvas measurement (default: the shipped one)")
    p.add_argument("--skip-canvas", action="store_true")
    p.add_argument("--steps", type=int, default=40, help="training steps per run")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    res = {"forward": forward_rates()}
    with tempfile.TemporaryDirectory() as d:
        from ffn.segment import default_model_dir

        if not a.skip_canvas and (a.model or (default_model_dir() / "model.json").is_file()):
            res["canvas"] = canvas_rates(a.model, Path(d))
        elif not a.skip_canvas:
            print("canvas: skipped (no shipped FFN model in this checkout; pass --model DIR)", flush=True)
        if not a.skip_training:
            res["training"] = training_rates(Path(d), a.steps)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
