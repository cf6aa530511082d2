"""Neuron segmentation methods side by side on held-out synthetic volumes.

For each volume: ``connectome synth`` (preset, seed and imaging options as given; seeds never
used to train or choose a model -- the model cards list theirs), the true raw imported as a
workspace (stage 3 in isolation: no alignment residual), ``connectome predict-boundaries``
(when a learned method is asked for), then ``connectome segment --method M`` for each method in
a copy of that workspace, each scored by ``connectome evaluate``. One row per (volume, method):
adapted Rand error, VOI split / merge / sum, their ratio to the classical baseline's, split and
merged objects, unlabelled fraction, wall time and voxels/s of ``segment``.

``--suite acceptance`` runs the volumes of issue 19's acceptance: demo-preset seeds 1121 and
1122, small-preset seed 1123, and demo seed 1124 with imaging outside every training volume's
range (PSF blur 1.7 px, noise 0.22, membrane gray 0.34, mitochondria gray 0.28, section gain
drift 0.1), then checks the targets: on the in-range volumes mean ARAND <= 0.08 and mean VOI <=
1.0 for the default method, and on every volume ARAND and VOI at most 2/3 of the baseline's.

    .venv/bin/python benchmarks/eval_ffn.py --suite acceptance [--methods baseline,watershed,ffn]
    .venv/bin/python benchmarks/eval_ffn.py --seeds 801 --preset demo [--set noise_sigma=0.2] \\
        [--methods watershed] [--config-watershed SEG.yaml] [--ffn-model DIR] [--work DIR] [--out rows.json]
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

import numpy as np

from connectome.training.provenance import portable_command

BIN = Path(sys.executable).parent

#: issue 19's acceptance volumes: (name, preset, seed, synth overrides, in the training ranges)
ACCEPTANCE = (
    ("demo-1121", "demo", 1121, {}, True),
    ("demo-1122", "demo", 1122, {}, True),
    ("small-1123", "small", 1123, {}, True),
    (
        "demo-1124-offrange",
        "demo",
        1124,
        {"psf_sigma_px": 1.7, "noise_sigma": 0.22, "membrane_gray": 0.34, "mito_gray": 0.28, "section_gain_sigma": 0.1},
        False,
    ),
)


def _cli(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "connectome"), *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"connectome {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return r


def evaluate_volume(
    name: str,
    preset: str,
    seed: int,
    sets: dict,
    work: Path,
    methods,
    configs: dict,
    ffn_model: str | None,
    boundary_model: str | None,
    executor: str,
    workers: int,
) -> list[dict]:
    from connectome.evaluate import EvaluateConfig, evaluate_workspace

    syn = work / f"syn_{name}"
    _cli(
        "synth",
        syn,
        "--preset",
        preset,
        "--seed",
        seed,
        "--no-progress",
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
    )
    base = work / f"ws_{name}"
    if not base.exists():
        _cli("import", syn / "truth.zarr" / "raw", "--workspace", base, "--voxel-size", "40,8,8", "--no-progress")
    common = ["--executor", executor, "--workers", workers, "--no-progress"]
    rows = []
    boundary_s = None
    if any(m != "baseline" for m in methods):
        t = time.perf_counter()
        _cli(
            "predict-boundaries", "--workspace", base, *common, *(["--model", boundary_model] if boundary_model else [])
        )
        boundary_s = time.perf_counter() - t
    import zarr

    shape = zarr.open_array(str(syn / "truth.zarr" / "raw"), mode="r").shape
    nvox = int(np.prod(shape))
    for method in methods:
        ws = work / f"ws_{name}_{method}"
        if ws.exists():
            shutil.rmtree(ws)
        shutil.copytree(base, ws)
        args = ["segment", "--workspace", ws, "--method", method, *common]
        if method == "ffn" and ffn_model:
            args += ["--model", ffn_model]
        if configs.get(method):
            args += ["--config", configs[method]]
        t = time.perf_counter()
        _cli(*args)
        wall = time.perf_counter() - t
        res = evaluate_workspace(ws, syn, EvaluateConfig())
        seg, skel = res["segmentation"], res.get("skeletons") or {}
        ok = skel.get("status") == "ok"
        rows.append(
            {
                "volume": name,
                "seed": seed,
                "preset": preset,
                "synth_set": sets,
                "method": method,
                "arand": round(seg["arand_error"], 4),
                "voi_split": round(seg["voi_split"], 4),
                "voi_merge": round(seg["voi_merge"], 4),
                "voi": round(seg["voi_sum"], 4),
                "split_objects": seg.get("n_split_truth_objects"),
                "merged_segments": seg.get("n_merger_segments"),
                "unlabelled": round(seg["unlabelled_fraction"], 4),
                "seconds": round(wall, 1),
                # skeleton metrics along the true skeletons (connectome/evaluate/skeletons.py)
                "erl_nm": round(skel["erl_nm"], 1) if ok else None,
                "erl_truth_nm": round(skel["erl_truth_nm"], 1) if ok and "erl_truth_nm" in skel else None,
                "skeleton_merges": skel.get("n_merges") if ok else None,
                "skeleton_splits": skel.get("n_splits") if ok else None,
                "voxels_per_s": round(nvox / wall),
                "predict_boundaries_s": None if boundary_s is None else round(boundary_s, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base_row = next((r for r in rows if r["method"] == "baseline"), None)
    for r in rows:
        if base_row:
            r["arand_vs_baseline"] = round(r["arand"] / base_row["arand"], 3) if base_row["arand"] else None
            r["voi_vs_baseline"] = round(r["voi"] / base_row["voi"], 3) if base_row["voi"] else None
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'volume':>20} {'method':>10} {'ARAND':>7} {'VOI split':>9} {'VOI merge':>9} {'VOI':>6} "
        f"{'ARAND/base':>10} {'VOI/base':>8} {'splits':>6} {'merges':>6} {'unlab.':>7} {'time s':>7} {'kvox/s':>7} "
        f"{'ERL nm':>8} {'ERL truth':>9} {'sk.merges':>9} {'sk.splits':>9}"
    )
    for r in rows:
        print(
            f"{r['volume']:>20} {r['method']:>10} {r['arand']:7.4f} {r['voi_split']:9.4f} {r['voi_merge']:9.4f} "
            f"{r['voi']:6.3f} {str(r.get('arand_vs_baseline', '-')):>10} {str(r.get('voi_vs_baseline', '-')):>8} "
            f"{str(r['split_objects']):>6} {str(r['merged_segments']):>6} {r['unlabelled']:7.4f} "
            f"{r['seconds']:7.1f} {r['voxels_per_s'] / 1e3:7.1f} {str(r.get('erl_nm')):>8} "
            f"{str(r.get('erl_truth_nm')):>9} {str(r.get('skeleton_merges')):>9} {str(r.get('skeleton_splits')):>9}"
        )


def check_acceptance(rows: list[dict], default: str, in_range: set[str]) -> bool:
    mine = [r for r in rows if r["method"] == default]
    inr = [r for r in mine if r["volume"] in in_range]
    ok = True
    if inr:
        ma, mv = float(np.mean([r["arand"] for r in inr])), float(np.mean([r["voi"] for r in inr]))
        good = ma <= 0.08 and mv <= 1.0
        ok &= good
        print(
            f"\n{default}: mean over the in-range volumes ARAND {ma:.4f} (target <= 0.08), VOI {mv:.3f} "
            f"(target <= 1.0): {'met' if good else 'NOT met'}"
        )
    for r in mine:
        if r.get("arand_vs_baseline") is None:
            continue
        good = r["arand_vs_baseline"] <= 2 / 3 and r["voi_vs_baseline"] <= 2 / 3
        ok &= good
        print(
            f"{default} on {r['volume']}: ARAND {r['arand_vs_baseline']:.3f} x baseline, VOI "
            f"{r['voi_vs_baseline']:.3f} x baseline (target <= 0.667 each): {'met' if good else 'NOT met'}"
        )
    return ok


def _sets(items) -> dict:
    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=["acceptance"], help="the acceptance volumes of issue 19 (ignores --seeds)")
    p.add_argument("--only", help="comma-separated volume names of the suite to run (e.g. small-1123)")
    p.add_argument("--seeds", default="801", help="comma-separated synth seeds (held out from training)")
    p.add_argument("--preset", default="demo", choices=["small", "demo", "bench"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="synth imaging override (repeatable)")
    p.add_argument("--methods", default="baseline,watershed", help="comma-separated: baseline, watershed, ffn")
    p.add_argument("--default", default="watershed", help="the method the acceptance check is about")
    p.add_argument("--ffn-model", help="FFN model directory (default: the shipped one)")
    p.add_argument("--boundary-model", help="boundary model directory (default: the shipped one)")
    for m in ("watershed", "ffn", "baseline"):
        p.add_argument(f"--config-{m}", metavar="SEG.yaml", help=f"segment config for method {m}")
    p.add_argument("--executor", default="local", choices=["serial", "local"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", help="keep the volumes and workspaces in this folder (reused: synth is idempotent)")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument(
        "--record",
        action="store_true",
        help="write the table into the boundary model's model.json 'test' section and regenerate its card",
    )
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    configs = {m: getattr(a, f"config_{m}") for m in ("watershed", "ffn", "baseline")}
    if a.suite:
        vols = [v for v in ACCEPTANCE if not a.only or v[0] in a.only.split(",")]
    else:
        vols = [
            (f"{a.preset}-{s}" + ("-set" if a.set else ""), a.preset, int(s), _sets(a.set), True)
            for s in a.seeds.split(",")
        ]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(a.work) if a.work else Path(d)
        work.mkdir(parents=True, exist_ok=True)
        for name, preset, seed, sets, _ in vols:
            rows += evaluate_volume(
                name, preset, seed, sets, work, methods, configs, a.ffn_model, a.boundary_model, a.executor, a.workers
            )
    print_table(rows)
    ok = check_acceptance(rows, a.default, {v[0] for v in vols if v[4]}) if a.suite else True
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    if a.record:
        record(
            rows,
            a.boundary_model,
            a.ffn_model if "ffn" in " ".join(methods) else None,
            "python benchmarks/eval_ffn.py " + portable_command(list(argv or sys.argv[1:])),
        )
    return 0 if ok or not a.suite else 3


def table_lines(rows: list[dict]) -> list[str]:
    out = [
        "| volume | imaging | method | ARAND | VOI split | VOI merge | VOI | ARAND / baseline | VOI / baseline | "
        "ERL (nm) / truth | skeleton merges / splits | segment s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        imaging = ", ".join(f"{k} {v}" for k, v in r["synth_set"].items()) or "preset"
        out.append(
            f"| {r['volume']} | {imaging} | {r['method']} | {r['arand']} | {r['voi_split']} | {r['voi_merge']} | "
            f"{r['voi']} | {r.get('arand_vs_baseline', '-')} | {r.get('voi_vs_baseline', '-')} | "
            f"{r.get('erl_nm', '-')} / {r.get('erl_truth_nm', '-')} | "
            f"{r.get('skeleton_merges', '-')} / {r.get('skeleton_splits', '-')} | {r['seconds']} |"
        )
    return out


def record(rows: list[dict], boundary_model: str | None, ffn_model: str | None, command: str) -> None:
    """The rows as the 'test' section of the boundary model's model.json and, when FFN methods
    ran, the FFN model's (+ their regenerated cards)."""
    from ffn.card import write_model_card as ffn_card
    from ffn.segment import default_model_dir
    from unet.boundary import default_model
    from unet.boundary_train import write_model_card as unet_card

    test = {
        "command": command,
        "rows": rows,
        "text": [
            "Volumes from seeds never used for training or checkpoint choice, the true raw imported "
            "(alignment out of the measurement), `connectome predict-boundaries` then `connectome "
            "segment --method M`, scored by `connectome evaluate` (vessel voxels excluded):",
            "",
            "```",
            command,
            "```",
            "",
            *table_lines(rows),
        ],
    }
    targets = [(Path(boundary_model) if boundary_model else default_model(), unet_card)]
    if ffn_model is not None or any(r["method"].startswith("ffn") for r in rows):
        targets.append((Path(ffn_model) if ffn_model else default_model_dir(), ffn_card))
    for mdir, card in targets:
        doc = json.loads((mdir / "model.json").read_text())
        doc["test"] = test
        (mdir / "model.json").write_text(json.dumps(doc, indent=1) + "\n")
        card(mdir)


if __name__ == "__main__":
    sys.exit(main())
