"""Neuron segmentation speed and memory, every method side by side in one run (issue 19).

1. ``connectome predict-boundaries`` and ``connectome segment --method M`` for M in the default
   (``auto`` -> watershed), ``watershed``, ``ffn-agglomerate``, ``baseline`` (and ``ffn`` with
   ``--ffn-floods``) on one
   64 x 512 x 512 volume of 8 nm data (synth demo preset, seed 9301, never trained on; true raw
   imported): wall time, voxels/s, peak RSS of the whole process tree, ARAND / VOI.
2. Memory flat in volume size: the default method's peak RSS on a 32 x 512 x 512 and a
   96 x 768 x 768 volume (3.4x the voxels).
3. Where the FFN methods spend their time: one 32 x 256 x 256 subvolume in-process with a timed
   forward pass -- fraction of wall time in the network and its achieved GFLOP/s.
4. Training examples/s with 1 and 2 Horovod ranks (``horovodrun --gloo``) for the boundary
   U-Net and the FFN (the shipped configs, a few steps each).

    .venv/bin/python benchmarks/bench_segment.py [--ffn-model DIR] [--skip-training] [--skip-memory] [--out r.json]

FFN rows need an FFN model (``--ffn-model`` or the shipped ``ffn/models/boundary16``); without
one they are skipped and say so. Run on a quiet machine: every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def _cli(*args) -> list[str]:
    return [str(BIN / "connectome"), *map(str, args)]


def _check(r, what):
    if r.returncode:
        raise SystemExit(f"{what} failed:\n{r.stderr[-3000:]}")


def _volume(work: Path, name: str, shape: str, seed: int) -> tuple[Path, Path]:
    syn = work / f"syn_{name}"
    _check(
        subprocess.run(
            _cli("synth", syn, "--preset", "demo", "--seed", seed, "--shape", shape, "--no-progress"),
            capture_output=True,
            text=True,
        ),
        "synth",
    )
    ws = work / f"ws_{name}"
    _check(
        subprocess.run(
            _cli("import", syn / "truth.zarr" / "raw", "--workspace", ws, "--voxel-size", "40,8,8", "--no-progress"),
            capture_output=True,
            text=True,
        ),
        "import",
    )
    return syn, ws


def _score(ws: Path, syn: Path) -> dict:
    from connectome.evaluate import EvaluateConfig, evaluate_workspace

    s = evaluate_workspace(ws, syn, EvaluateConfig())["segmentation"]
    return {"arand": round(s["arand_error"], 4), "voi": round(s["voi_sum"], 3)}


def stage_rows(work: Path, ffn_model: str | None, ffn_floods: bool = False) -> list[dict]:
    syn, ws = _volume(work, "main", "64,512,512", 9301)
    nvox = 64 * 512 * 512
    rows = []
    sec, peak, r = run_measured(_cli("predict-boundaries", "--workspace", ws, "--no-progress"))
    _check(r, "predict-boundaries")
    rows.append(
        {
            "command": "predict-boundaries",
            "seconds": round(sec, 1),
            "voxels_per_s": round(nvox / sec),
            "peak_rss_mib": round(peak / 2**20),
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    methods = [("default (auto)", []), ("watershed", ["--method", "watershed"])]
    if ffn_model:
        methods.append(("ffn-agglomerate", ["--method", "ffn-agglomerate", "--model", ffn_model]))
        if ffn_floods:  # full floods run ~30 kvox/s here: minutes on this volume
            methods.append(("ffn", ["--method", "ffn", "--model", ffn_model]))
    else:
        print("ffn rows: skipped (no FFN model; pass --ffn-model DIR)", flush=True)
    methods.append(("baseline", ["--method", "baseline"]))
    for name, extra in methods:
        w = work / f"ws_main_{name.split()[0]}"
        shutil.copytree(ws, w, ignore=shutil.ignore_patterns("segment*", "segmentation"))
        sec, peak, r = run_measured(_cli("segment", "--workspace", w, *extra, "--no-progress"))
        _check(r, f"segment {name}")
        rows.append(
            {
                "command": f"segment {name}",
                "seconds": round(sec, 1),
                "voxels_per_s": round(nvox / sec),
                "peak_rss_mib": round(peak / 2**20),
                **_score(w, syn),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def memory_rows(work: Path) -> list[dict]:
    rows = []
    for name, shape, seed in (("m32", "32,512,512", 9302), ("m96", "96,768,768", 9303)):
        syn, ws = _volume(work, name, shape, seed)
        _check(
            subprocess.run(
                _cli("predict-boundaries", "--workspace", ws, "--no-progress"), capture_output=True, text=True
            ),
            "predict-boundaries",
        )
        nvox = int(np.prod([int(v) for v in shape.split(",")]))
        sec, peak, r = run_measured(_cli("segment", "--workspace", ws, "--no-progress"))
        _check(r, "segment")
        rows.append(
            {
                "volume": shape,
                "voxels": nvox,
                "seconds": round(sec, 1),
                "voxels_per_s": round(nvox / sec),
                "peak_rss_mib": round(peak / 2**20),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def forward_rows(work: Path, ffn_model: str) -> list[dict]:
    import zarr

    from ffn.agglomerate import segment_ffn_agglomerate
    from ffn.modeldir import read_model_dir
    from ffn.segment import SegmentConfig, _predictor, segment_ffn_at
    from unet.boundary import predict_arrays
    from unet.data import intensity_stats, model_factor

    syn = work / "syn_main"
    g = zarr.open_group(str(syn / "truth.zarr"), mode="r")
    raw = np.asarray(g["raw"][:32, :256, :256])
    b4 = predict_arrays(raw, (40.0, 8.0, 8.0))
    spec = read_model_dir(ffn_model)
    factor = model_factor(spec.voxel_size_nm[1], 8.0, "bench")
    stats = intensity_stats(raw, factor)
    cfg = SegmentConfig()
    spec_pred = _predictor(str(Path(ffn_model).resolve()), spec.weights_sha256, 0)
    rows = []
    for method in ("ffn-agglomerate", "ffn"):
        acc = [0.0, 0]

        def timed(x, acc=acc):  # called within this iteration only
            t = time.perf_counter()
            out = spec_pred[1](x)
            acc[0] += time.perf_counter() - t
            acc[1] += len(x)
            return out

        t = time.perf_counter()
        if method == "ffn":
            segment_ffn_at(raw, None, (40.0, 8.0, 8.0), factor, stats, cfg, (spec_pred[0], timed), b4[0])
        else:
            segment_ffn_agglomerate(
                b4,
                raw,
                None,
                (40.0, 8.0, 8.0),
                factor,
                stats,
                cfg.watershed,
                cfg.ffn_agglomeration,
                cfg.inference,
                (spec_pred[0], timed),
            )
        wall = time.perf_counter() - t
        rows.append(
            {
                "method": method,
                "voxels": int(raw.size),
                "seconds": round(wall, 2),
                "voxels_per_s": round(raw.size / wall),
                "fovs": acc[1],
                "forward_fraction": round(acc[0] / wall, 3),
                "forward_gflop_per_s": round(acc[1] * spec.model.flops_per_fov() / 1e9 / max(acc[0], 1e-9), 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def training_rows(work: Path, steps: int) -> list[dict]:
    from connectome.synth import generate

    for s in (9311, 9312):
        generate(work / f"t{s}", preset="small", seed=s, shape_zyx=(32, 256, 256))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    configs = {
        "boundary": (
            ROOT / "unet" / "configs" / "boundary_demo.yaml",
            f"trainer: {{log_every: {steps // 2}, validate_every: 0, checkpoint_every: {steps}, "
            "intra_op_threads: 1, inter_op_threads: 1, warmup_steps: 0}\n",
        ),
        "ffn": (
            ROOT / "ffn" / "configs" / "boundary16.yaml",
            f"trainer: {{log_every: {steps // 2}, validate_every: 0, checkpoint_every: {steps}, "
            "intra_op_threads: 1, inter_op_threads: 1, warmup_steps: 0}\n"
            "examples: {val_episodes_per_volume: 1, val_segment_zyx: [0, 0, 0]}\n",
        ),
    }
    import yaml

    rows = []
    for kind, (base, override) in configs.items():
        cfg = yaml.safe_load(base.read_text())
        for k, v in yaml.safe_load(override).items():
            cfg.setdefault(k, {}).update(v)
        path = work / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        rates = {}
        for ranks in (1, 2):
            out = work / f"{kind}_m{ranks}"
            args = _cli(
                "train",
                kind,
                "--data",
                work / "t9311",
                "--val",
                work / "t9312",
                "--out",
                out,
                "--config",
                path,
                "--steps",
                steps,
            )
            if ranks > 1:
                args = [str(BIN / "horovodrun"), "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo"] + args
            r = subprocess.run(args, capture_output=True, text=True, env=env)
            _check(r, f"train {kind} ({ranks} ranks)")
            events = [json.loads(x) for x in (out / "train" / "log.jsonl").read_text().splitlines()]
            rates[ranks] = [e for e in events if e["event"] == "end"][-1]["examples_per_s"]
        rows.append(
            {
                "model": kind,
                "examples_per_s_1_rank": round(rates[1], 2),
                "examples_per_s_2_ranks": round(rates[2], 2),
                "scaling_efficiency": round(rates[2] / (2 * rates[1]), 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ffn-model", help="FFN model directory (default: the shipped ffn/models/boundary16 if present)")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument(
        "--ffn-floods",
        action="store_true",
        help="also time `segment --method ffn` on the 64 x 512 x 512 volume (slow; its forward share is "
        "measured on one subvolume either way)",
    )
    p.add_argument("--steps", type=int, default=30, help="training steps per run")
    p.add_argument("--work", help="keep volumes and workspaces here")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    ffn_model = a.ffn_model or (
        str(ROOT / "ffn" / "models" / "boundary16")
        if (ROOT / "ffn" / "models" / "boundary16" / "model.json").is_file()
        else None
    )
    res = {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(a.work) if a.work else Path(d)
        work.mkdir(parents=True, exist_ok=True)
        res["stages"] = stage_rows(work, ffn_model, a.ffn_floods)
        if ffn_model:
            res["forward"] = forward_rows(work, ffn_model)
        if not a.skip_memory:
            res["memory"] = memory_rows(work)
        if not a.skip_training:
            res["training"] = training_rows(work, a.steps)
    print(f"\n{'command':<28} {'s':>7} {'kvox/s':>8} {'peak MiB':>9} {'ARAND':>7} {'VOI':>6}")
    for r in res["stages"]:
        print(
            f"{r['command']:<28} {r['seconds']:7.1f} {r['voxels_per_s'] / 1e3:8.1f} {r['peak_rss_mib']:9d} "
            f"{str(r.get('arand', '')):>7} {str(r.get('voi', '')):>6}"
        )
    for r in res.get("forward", []):
        print(
            f"{r['method']:<28} one 32x256x256 subvolume: {r['voxels_per_s'] / 1e3:.1f} kvox/s, "
            f"{r['forward_fraction'] * 100:.0f} % in the forward pass, {r['forward_gflop_per_s']} GFLOP/s"
        )
    for r in res.get("memory", []):
        print(
            f"default segment on {r['volume']:<12}: peak RSS {r['peak_rss_mib']} MiB, "
            f"{r['voxels_per_s'] / 1e3:.1f} kvox/s"
        )
    for r in res.get("training", []):
        print(
            f"train {r['model']:<9}: {r['examples_per_s_1_rank']} ex/s on 1 rank, {r['examples_per_s_2_ranks']} on 2 "
            f"(efficiency {r['scaling_efficiency']})"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
