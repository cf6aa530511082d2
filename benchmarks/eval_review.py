"""The review-and-retrain loop measured (issue 23): IoU on an unseen `newbrain` volume against the
number of boxes a (simulated) reviewer corrected, for the uncertainty and random strategies.

::

    .venv/bin/python benchmarks/eval_review.py --out bench_out/eval_review \
        [--budgets 0,5,10,20] [--strategies uncertainty,random] [--steps 500] \
        [--train-seed 7] [--test-seed 11] [--replay-seed 101]

1. Data: `newbrain` volume A (``--train-seed``) through ``pipelines/newbrain-vessels.yaml``
   (synth -> stitch -> align -> mask-vessels with the shipped model -> evaluate) into
   ``OUT/ws_train``; `newbrain` volume B (``--test-seed``, never used for training or validation)
   through the same stages into ``OUT/ws_test`` (its IoU is the budget-0 row); a `demo`-preset
   synth folder (``--replay-seed``, by default one the shipped model was trained on) for replay.
2. Per strategy and budget N > 0, in ``OUT/runs/<strategy>-<N>/``: a copy of ``ws_train``;
   ``connectome review plan --count N --strategy S``; the simulated reviewer paints the truth
   ``vessels`` of volume A (a whole-volume labels file: ``review import`` keeps only the queued
   boxes); ``connectome train vessel --init unet/models/vessel --corrections ... --data REPLAY
   --steps K``; then ``mask-vessels --model NEW`` + ``evaluate`` on a copy of volume B's raw.
3. ``OUT/results.json``, ``OUT/results.md`` and ``OUT/iou_vs_items.png`` over every finished run
   under ``OUT/runs`` (also those of earlier invocations: other ``--seed`` of the random strategy
   go to ``random-<N>-seed<S>``, other ``--steps`` to ``<strategy>-<N>-s<K>``); the table is printed.

Resumable: a run with ``result.json`` is skipped; every command is itself resumable. About 4
minutes per run on 2 busy cores (fine-tuning 500 steps ~3 min, mask-vessels + evaluate ~1 min).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONNECTOME = str(ROOT / ".venv" / "bin" / "connectome")
SHIPPED = ROOT / "unet" / "models" / "vessel"
DEFAULT_STEPS = 500


def sh(*args, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, args)) + "\n")
        f.flush()
        r = subprocess.run([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, args))}; see {log}")
    return time.perf_counter() - t0


def vessel_scores(ws: Path) -> dict:
    v = json.loads((ws / "evaluation.json").read_text())["vessels"]
    return {k: round(float(v[k]), 4) for k in ("iou", "precision", "recall")}


def prepare(out: Path, a) -> None:
    log = out / "prepare.log"
    if not (out / "ws_train" / "evaluation.json").is_file():
        sh(CONNECTOME, "run", ROOT / "pipelines" / "newbrain-vessels.yaml", "--workspace", out / "ws_train", log=log)
    test = out / "ws_test"
    if not (test / "evaluation.json").is_file():
        sh(CONNECTOME, "synth", out / "synth_test", "--preset", "newbrain", "--seed", a.test_seed, log=log)
        sh(
            CONNECTOME,
            "stitch",
            "--tiles",
            out / "synth_test" / "tiles" / "manifest.csv",
            "--workspace",
            test,
            "--frame-shape",
            "512,512",
            log=log,
        )
        sh(CONNECTOME, "align", "--workspace", test, log=log)
        sh(CONNECTOME, "mask-vessels", "--workspace", test, log=log)
        sh(CONNECTOME, "evaluate", "--workspace", test, "--truth", out / "synth_test", log=log)
    if not (out / "synth_replay" / "truth.zarr" / "zarr.json").is_file():
        sh(CONNECTOME, "synth", out / "synth_replay", "--preset", "demo", "--seed", a.replay_seed, log=log)
    ws_meta = json.loads((out / "ws_train" / "synth" / "synth.json").read_text())
    test_meta = json.loads((out / "synth_test" / "synth.json").read_text())
    assert ws_meta["seed"] != test_meta["seed"], "the test volume must have another seed"


def copy_workspace(src: Path, dst: Path, arrays) -> None:
    """A workspace with only ``arrays`` of ``src`` (and their stage progress)."""
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "volume.zarr").mkdir(parents=True)
    shutil.copy2(src / "volume.zarr" / "zarr.json", tmp / "volume.zarr" / "zarr.json")
    for name in arrays:
        shutil.copytree(src / "volume.zarr" / name, tmp / "volume.zarr" / name)
    tmp.rename(dst)


def write_truth_labels(truth_dir: Path, dst: Path) -> None:
    """The simulated reviewer's painting: the truth vessels, whole volume (import keeps the boxes)."""
    import zarr

    if (dst / "zarr.json").is_file():
        return
    v = np.asarray(zarr.open_group(str(truth_dir / "truth.zarr"), mode="r")["vessels"][:])
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    a = zarr.create_array(str(tmp), shape=v.shape, chunks=(8, 256, 256), dtype="uint8", zarr_format=3)
    a[:] = (v != 0).astype(np.uint8)
    tmp.rename(dst)


def _tag(a, strategy: str = "random") -> str:
    """Run-name suffix for a non-default step count or random seed."""
    return (f"-s{a.steps}" if a.steps != DEFAULT_STEPS else "") + (
        f"-seed{a.seed}" if a.seed != 0 and strategy == "random" else ""
    )


def one_run(out: Path, strategy: str, n: int, a) -> dict:
    run = out / "runs" / (f"{strategy}-{n}" + _tag(a, strategy))
    res = run / "result.json"
    if res.is_file():
        return json.loads(res.read_text())
    run.mkdir(parents=True, exist_ok=True)
    log = run / "run.log"
    ws = run / "ws"
    copy_workspace(out / "ws_train", ws, ("raw", "vessel_prob", "vessel_mask"))
    review = ws / "review" / "vessels"
    if not (review / "corrections.json").is_file():
        sh(
            CONNECTOME,
            "review",
            "plan",
            "--workspace",
            ws,
            "--target",
            "vessels",
            "--count",
            n,
            "--strategy",
            strategy,
            "--seed",
            a.seed,
            "--overwrite",
            log=log,
        )
        sh(
            CONNECTOME,
            "review",
            "import",
            "--workspace",
            ws,
            "--target",
            "vessels",
            "--labels",
            out / "truth_labels.zarr",
            log=log,
        )
    model = run / "model"
    ft_seconds = None
    if not (model / "model.json").is_file():
        ft_seconds = sh(
            CONNECTOME,
            "train",
            "vessel",
            "--init",
            SHIPPED,
            "--corrections",
            review,
            "--data",
            out / "synth_replay",
            "--out",
            model,
            "--steps",
            a.steps,
            log=log,
        )
    doc = json.loads((model / "model.json").read_text())
    ev = run / "ws_eval"
    copy_workspace(out / "ws_test", ev, ("raw",))
    if not (ev / "evaluation.json").is_file():
        sh(CONNECTOME, "mask-vessels", "--workspace", ev, "--model", model, log=log)
        sh(CONNECTOME, "evaluate", "--workspace", ev, "--truth", out / "synth_test", log=log)
    corr = doc["fine_tuning"]["corrections"]
    result = {
        "strategy": strategy + (f" (seed {a.seed})" if a.seed and strategy == "random" else ""),
        "items": n,
        **vessel_scores(ev),
        "steps": doc["training"]["steps"],
        "finetune_seconds": doc["training"]["seconds"],
        "finetune_command_seconds": round(ft_seconds, 1) if ft_seconds else None,
        "corrected_voxels": corr["voxels"].get("corrected"),
        "threshold": doc["output"]["threshold"],
        "heldback_iou": (doc["validation"].get("corrected_boxes") or {}).get("iou"),
        "model": str(model),
    }
    res.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(ev / "blockwise", ignore_errors=True)
    return result


def report(out: Path, rows: list[dict], base: dict, a) -> str:
    lines = [
        "| strategy | items reviewed | IoU (unseen newbrain) | precision | recall | fine-tune steps | "
        "fine-tune s | threshold | held-back box IoU |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| (shipped model) | 0 | {base['iou']:.4f} | {base['precision']:.4f} | {base['recall']:.4f} | - | - | - | - |",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['items']} | {r['iou']:.4f} | {r['precision']:.4f} | {r['recall']:.4f} | "
            f"{r['steps']} | {r['finetune_seconds']:.0f} | {r['threshold']:g} | {r['heldback_iou']} |"
        )
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"baseline": base, "runs": rows}, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for s, k in sorted({(r["strategy"], r["steps"]) for r in rows}):
            pts = sorted((r["items"], r["iou"]) for r in rows if r["strategy"] == s and r["steps"] == k)
            if len(pts) > 1:  # a curve from the shipped model; a lone run is a point
                pts = [(0, base["iou"])] + pts
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o" if len(pts) > 1 else "*",
                ms=6 if len(pts) > 1 else 12,
                ls="-" if len(pts) > 1 else "none",
                label=f"{s}, {k} steps",
            )
        ax.axhline(0.9, color="grey", ls="--", lw=0.8, label="target 0.90")
        ax.set_xlabel("boxes reviewed (8 x 96 x 96 voxels each)")
        ax.set_ylabel("vessel IoU, unseen newbrain volume")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "iou_vs_items.png", dpi=120)
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budgets", default="0,5,10,20")
    p.add_argument("--strategies", default="uncertainty,random")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help="fine-tuning steps per run (runs with other than the default go to <strategy>-<N>-s<steps>)",
    )
    p.add_argument("--train-seed", type=int, default=7, help="(the pipeline's seed; informational)")
    p.add_argument("--test-seed", type=int, default=11)
    p.add_argument(
        "--replay-seed",
        type=int,
        default=101,
        help="demo-preset replay folder (a seed the shipped model was trained on)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    a = p.parse_args(argv)
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepare(out, a)
    write_truth_labels(out / "ws_train" / "synth", out / "truth_labels.zarr")
    base = vessel_scores(out / "ws_test")
    budgets = [int(b) for b in a.budgets.split(",") if int(b) > 0]
    for n in budgets:  # smallest budgets first: a partial table is still useful
        for s in a.strategies.split(","):
            one_run(out, s, n, a)
            print(report(out, all_results(out), base, a), flush=True)
            print(flush=True)
    print(report(out, all_results(out), base, a))
    return 0


def all_results(out: Path) -> list[dict]:
    """Every finished run under OUT/runs (earlier invocations, other seeds or step counts too)."""
    rows = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    return sorted(rows, key=lambda r: (r["items"], r["strategy"] != "uncertainty", r["strategy"], r["steps"]))


if __name__ == "__main__":
    sys.exit(main())
