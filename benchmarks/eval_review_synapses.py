"""The review-and-retrain loop for synapses measured (issue 23): synapse F1 on an unseen `newbrain`
volume against the number of synapse decisions a (simulated) reviewer made, for the uncertainty
and random strategies.

::

    .venv/bin/python benchmarks/eval_review_synapses.py --out bench_out/eval_review_synapses \
        [--budgets 0,10,20,40] [--strategies uncertainty,random] [--steps 400] \
        [--train-seed 7] [--test-seed 11] [--replay-seed 101]

1. Data: `newbrain` volume A (``--train-seed``) through ``pipelines/newbrain.yaml`` (synth ->
   stitch -> align -> mask-vessels -> predict-boundaries -> segment -> synapses -> evaluate, the
   shipped models) into ``OUT/ws_train``; volume B (``--test-seed``, never used for training or
   validation) through the same stages into ``OUT/ws_test`` (its F1 is the budget-0 row); a
   `demo`-preset synth folder (``--replay-seed``) for replay.
2. Per strategy and budget N > 0, in ``OUT/runs/<strategy>-<N>/``: a copy of ``ws_train``;
   ``connectome review plan --target synapses --count N --strategy S``; the simulated reviewer
   decides every queued item from volume A's truth (:func:`simulated_decisions`) with
   ``connectome review decide`` (N decisions); ``connectome train synapse --init
   unet/models/synapse --corrections ... --data REPLAY --steps K``; then ``synapses --model NEW``
   + ``evaluate`` on a copy of volume B's workspace (raw and the shipped segmentation).
3. ``OUT/results.json``, ``OUT/results.md`` and ``OUT/f1_vs_decisions.png`` over every finished
   run; the table is printed. ``--upper-bound`` adds the ceiling row: the same fine-tuning on the
   dense truth of *all* of volume A (every synapse; :mod:`unet.synapse_train` examples) instead
   of a review.

Resumable: a run with ``result.json`` is skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_review import CONNECTOME, ROOT, copy_workspace, sh  # noqa: E402

SHIPPED = ROOT / "unet" / "models" / "synapse"
DEFAULT_STEPS = 400
SHIPPED_THRESHOLD = float(json.loads((SHIPPED / "model.json").read_text())["output"]["threshold"])
WS_ARRAYS = ("raw", "segmentation", "synapse_prob")


def synapse_scores(ws: Path) -> dict:
    v = json.loads((ws / "evaluation.json").read_text())["synapses"]
    return {k: round(float(v[k]), 4) for k in ("f1", "precision", "recall", "partner_accuracy")} | {
        "n_true": int(v["n_true"]),
        "n_predicted": int(v["n_predicted"]),
    }


def prepare(out: Path, a) -> None:
    log = out / "prepare.log"
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "ws_train" / "evaluation.json").is_file():
        sh(CONNECTOME, "run", ROOT / "pipelines" / "newbrain.yaml", "--workspace", out / "ws_train", log=log)
    test = out / "ws_test"
    if not (test / "evaluation.json").is_file():
        sh(CONNECTOME, "synth", out / "synth_test", "--preset", "newbrain", "--seed", a.test_seed, log=log)
        manifest = out / "synth_test" / "tiles" / "manifest.csv"
        sh(CONNECTOME, "stitch", "--tiles", manifest, "--workspace", test, "--frame-shape", "512,512", log=log)
        for stage in ("align", "mask-vessels", "predict-boundaries", "segment", "synapses"):
            sh(CONNECTOME, stage, "--workspace", test, log=log)
        sh(CONNECTOME, "evaluate", "--workspace", test, "--truth", out / "synth_test", log=log)
    if not (out / "synth_replay" / "truth.zarr" / "zarr.json").is_file():
        sh(CONNECTOME, "synth", out / "synth_replay", "--preset", "demo", "--seed", a.replay_seed, log=log)
    seeds = {json.loads((out / d / "synth.json").read_text())["seed"] for d in ("ws_train/synth", "synth_test")}
    assert len(seeds) == 2, "the test volume must have another seed"


def simulated_decisions(queue_csv: Path, clefts: np.ndarray, prob: np.ndarray, t: float) -> list[tuple[str, str, list]]:
    """(item_id, decision, missed points) for every queued item, answered from the truth clefts
    like a careful reviewer: the item itself is judged (a detection is accepted when its signal
    ``p >= t`` touches a truth cleft, else rejected; a missed candidate is rejected - "it is a
    synapse" - when its signal ``p >= t - 0.2`` touches one, else accepted), and every other truth
    cleft in the box gets a missed point (its voxel nearest the box centre), each cleft once over
    the whole queue."""
    from connectome.review.queue import read_queue

    t8, lo8 = max(1, round(255 * t)), max(1, round(255 * max(0.05, t - 0.2)))
    out, pointed = [], set()
    for it in read_queue(queue_csv):
        sl = it.slices
        cl = clefts[sl]
        signal = prob[sl] >= (t8 if it.kind == "detection" else lo8)
        lab, _ = ndi.label(signal, structure=np.ones((3, 3, 3), bool))
        c = tuple((np.asarray(it.end_zyx) - np.asarray(it.begin_zyx)) // 2)
        own = lab[c] if lab[c] else (np.bincount(lab[lab > 0]).argmax() if lab.any() else 0)
        hit = set(np.unique(cl[(lab == own) & (lab > 0)]).tolist()) - {0}
        if it.kind == "detection":
            decision = "accept" if hit else "reject"
        else:
            decision = "reject" if hit else "accept"
        centre = np.asarray([(b + e - 1) / 2 for b, e in zip(it.begin_zyx, it.end_zyx)])
        pts = []
        for i in sorted(set(np.unique(cl).tolist()) - {0} - hit - pointed):
            vox = np.argwhere(cl == i) + np.asarray(it.begin_zyx)
            pts.append([int(v) for v in vox[np.argmin(((vox - centre) ** 2).sum(1))]])
            pointed.add(i)
        pointed |= hit
        out.append((it.item_id, decision, pts))
    return out


def _tag(a, strategy: str) -> str:
    return (f"-s{a.steps}" if a.steps != DEFAULT_STEPS else "") + (
        f"-seed{a.seed}" if a.seed != 0 and strategy == "random" else ""
    )


def _evaluate(out: Path, run: Path, model: Path, log: Path) -> dict:
    ev = run / "ws_eval"
    copy_workspace(out / "ws_test", ev, ("raw", "segmentation"))
    if not (ev / "evaluation.json").is_file():
        sh(CONNECTOME, "synapses", "--workspace", ev, "--model", model, log=log)
        sh(CONNECTOME, "evaluate", "--workspace", ev, "--truth", out / "synth_test", log=log)
    scores = synapse_scores(ev)
    shutil.rmtree(ev / "blockwise", ignore_errors=True)
    return scores


def review_and_finetune(out: Path, ws: Path, run: Path, strategy: str, n: int, a, init: Path, log: Path):
    """Plan N items on ``ws``, the simulated reviewer decides them, fine-tune ``init`` on them
    into ``run/model``; returns (review folder, model)."""
    import zarr

    review = ws / "review" / "synapses"
    if not (review / "decisions.csv").is_file():
        sh(CONNECTOME, "review", "plan", "--workspace", ws, "--target", "synapses", "--count", n,
           "--strategy", strategy, "--seed", a.seed, "--overwrite", log=log)  # fmt: skip
        clefts = np.asarray(
            zarr.open_group(str(out / "ws_train" / "synth" / "truth.zarr"), mode="r")["synapse_clefts"][:]
        )
        prob = np.asarray(zarr.open_array(str(ws / "volume.zarr" / "synapse_prob"), mode="r")[:])
        for item, decision, pts in simulated_decisions(review / "queue.csv", clefts, prob, SHIPPED_THRESHOLD):
            for p in pts:  # the missed synapses in the box first, then the item's own decision
                sh(CONNECTOME, "review", "decide", "--workspace", ws, "--target", "synapses", "--item", item,
                   "--decision", "missed", "--point", ",".join(map(str, p)), "--author", "simulated", log=log)  # fmt: skip
            sh(CONNECTOME, "review", "decide", "--workspace", ws, "--target", "synapses", "--item", item,
               "--decision", decision, "--author", "simulated", log=log)  # fmt: skip
    model = run / "model"
    if not (model / "model.json").is_file():
        sh(CONNECTOME, "train", "synapse", "--init", init, "--corrections", review, "--data",
           out / "synth_replay", "--out", model, "--steps", a.steps, log=log)  # fmt: skip
    return review, model


def one_run(out: Path, strategy: str, n: int, a) -> dict:
    run = out / "runs" / (f"{strategy}-{n}" + _tag(a, strategy))
    res = run / "result.json"
    if res.is_file():
        return json.loads(res.read_text())
    run.mkdir(parents=True, exist_ok=True)
    log = run / "run.log"
    ws = run / "ws"
    copy_workspace(out / "ws_train", ws, WS_ARRAYS)
    shutil.copy2(out / "ws_train" / "synapses.csv", ws / "synapses.csv")
    review, model = review_and_finetune(out, ws, run, strategy, n, a, SHIPPED, log)
    doc = json.loads((model / "model.json").read_text())
    corr = doc["fine_tuning"]["corrections"]
    lines = (review / "decisions.csv").read_text().splitlines()
    result = {
        "strategy": strategy + (f" (seed {a.seed})" if a.seed and strategy == "random" else ""),
        "items": n,
        "decisions": len(lines) - 1,
        **_evaluate(out, run, model, log),
        "decided": corr.get("decisions"),
        "points": corr.get("points"),
        "steps": doc["training"]["steps"],
        "finetune_seconds": doc["training"]["seconds"],
        "heldback_agreement": (doc["validation"].get("held_back_items") or {}).get("agreement"),
        "heldback_agreement_init": (doc["validation"].get("held_back_items_init") or {}).get("agreement"),
        "model": str(model),
    }
    res.write_text(json.dumps(result, indent=1) + "\n")
    return result


def second_round(out: Path, n1: int, n2: int, a) -> dict:
    """The loop twice: the round-1 model (``runs/uncertainty-<n1>``) runs on volume A, the
    reviewer decides ``n2`` more items of a new uncertainty queue there, and the round-1 model is
    fine-tuned on them; scored on volume B like every run."""
    first = out / "runs" / (f"uncertainty-{n1}" + _tag(a, "uncertainty"))
    r1 = one_run(out, "uncertainty", n1, a)
    run = out / "runs" / (f"uncertainty-{n1}+{n2}" + _tag(a, "uncertainty"))
    res = run / "result.json"
    if res.is_file():
        return json.loads(res.read_text())
    run.mkdir(parents=True, exist_ok=True)
    log = run / "run.log"
    ws = run / "ws"
    if not ws.exists():
        copy_workspace(out / "ws_train", ws, ("raw", "segmentation"))
        sh(CONNECTOME, "synapses", "--workspace", ws, "--model", first / "model", log=log)
    review, model = review_and_finetune(out, ws, run, "uncertainty", n2, a, first / "model", log)
    doc = json.loads((model / "model.json").read_text())
    lines = (review / "decisions.csv").read_text().splitlines()
    result = {
        "strategy": "uncertainty, 2 rounds",
        "items": n1 + n2,
        "decisions": r1["decisions"] + len(lines) - 1,
        **_evaluate(out, run, model, log),
        "points": r1["points"] + doc["fine_tuning"]["corrections"].get("points", 0),
        "steps": r1["steps"] + doc["training"]["steps"],
        "finetune_seconds": round(r1["finetune_seconds"] + doc["training"]["seconds"], 1),
        "heldback_agreement": (doc["validation"].get("held_back_items") or {}).get("agreement"),
        "heldback_agreement_init": (doc["validation"].get("held_back_items_init") or {}).get("agreement"),
        "model": str(model),
    }
    res.write_text(json.dumps(result, indent=1) + "\n")
    return result


def upper_bound(out: Path, a) -> dict:
    """The ceiling: the shipped model trained further on the dense truth of all of volume A."""
    run = out / "runs" / f"upper-bound-{a.steps}"
    res = run / "result.json"
    if res.is_file():
        return json.loads(res.read_text())
    run.mkdir(parents=True, exist_ok=True)
    log = run / "run.log"
    model = run / "model"
    if not (model / "model.json").is_file():
        sh(sys.executable, Path(__file__).resolve(), "--_dense", out, model, a.steps, log=log)
    result = {"strategy": "upper bound (dense truth of all of A)", "items": None, "decisions": None,
              **_evaluate(out, run, model, log), "steps": a.steps, "model": str(model)}  # fmt: skip
    res.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _dense(out: Path, model: Path, steps: int) -> None:
    """Fine-tune the shipped model on volume A's dense truth (+ replay) - the upper bound only."""
    import tensorflow as tf

    from connectome.training import weights as wio
    from unet.modeldir import load_weights, read_model_dir, write_model_dir
    from unet.synapse_data import load_synapse_volume
    from unet.synapse_train import SynapseJob, SynapseTrainConfig

    spec = read_model_dir(SHIPPED, task="synapse", ndim=3, out_channels=(2, 3))
    cfg = SynapseTrainConfig()
    vols = [load_synapse_volume(p, 16.0, 16.0, 64.0) for p in (out / "ws_train" / "synth", out / "synth_replay")]
    job = SynapseJob(cfg, vols, [], {})
    net = job.build_model()
    wio.assign(net.weights, load_weights(spec))
    opt = tf.keras.optimizers.Adam(3e-4)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = job.loss(y, net(x, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        return loss

    for s in range(steps):
        x, y = job.batch(s, 0, 1, cfg.trainer.batch_size)
        step(tf.constant(x), tf.constant(y))
    doc = json.loads(json.dumps(spec.doc))
    doc["notes"] = f"upper bound: shipped model + {steps} steps on the dense truth of {out / 'ws_train' / 'synth'}"
    write_model_dir(model, wio.variables_dict(net.weights), doc, float_dtype="float32")


def report(out: Path, rows: list[dict], base: dict) -> str:
    lines = [
        "| strategy | items | decisions | points | F1 | precision | recall | partners | fine-tuning s | held-back agreement (init) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| shipped model | 0 | 0 | 0 | {base['f1']:.3f} | {base['precision']:.3f} | {base['recall']:.3f} | "
        f"{base['partner_accuracy']:.3f} | - | - |",
    ]
    for r in sorted(rows, key=lambda r: (r["strategy"], r["items"] or 10**9)):
        lines.append(
            f"| {r['strategy']} | {r['items'] if r['items'] is not None else '-'} | {r.get('decisions') or '-'} | "
            f"{r.get('points') if r.get('points') is not None else '-'} | {r['f1']:.3f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['partner_accuracy']:.3f} | {r.get('finetune_seconds') or '-'} | "
            f"{r.get('heldback_agreement', '-')} ({r.get('heldback_agreement_init', '-')}) |"
        )
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"shipped": base, "runs": rows}, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for strat in sorted({r["strategy"] for r in rows if r["items"] is not None}):
            pts = sorted((r["decisions"], r["f1"]) for r in rows if r["strategy"] == strat)
            ax.plot([0] + [p[0] for p in pts], [base["f1"]] + [p[1] for p in pts], "o-", label=strat)
        for r in rows:
            if r["items"] is None:
                ax.axhline(r["f1"], ls=":", c="gray", label=r["strategy"])
        ax.axhline(0.9, ls="--", c="k", lw=0.8, label="target 0.90")
        ax.set_xlabel("synapse decisions reviewed")
        ax.set_ylabel("synapse F1 on an unseen newbrain volume")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "f1_vs_decisions.png", dpi=100)
    except ImportError:
        pass
    return table


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_dense":
        _dense(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "eval_review_synapses")
    ap.add_argument("--budgets", default="10,20,40")
    ap.add_argument("--strategies", default="uncertainty,random")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    ap.add_argument("--train-seed", type=int, default=7)
    ap.add_argument("--test-seed", type=int, default=11)
    ap.add_argument("--replay-seed", type=int, default=101)
    ap.add_argument("--upper-bound", action="store_true")
    ap.add_argument("--second-round", metavar="N1,N2", help="also the loop twice: N1 items, fine-tune, N2 more items")
    a = ap.parse_args(argv)
    out = a.out.resolve()
    prepare(out, a)
    base = synapse_scores(out / "ws_test")
    for strat in a.strategies.split(","):
        for n in (int(v) for v in a.budgets.split(",") if v.strip()):
            if n > 0:
                r = one_run(out, strat, n, a)
                print(f"{strat} {n}: F1 {r['f1']:.3f} (P {r['precision']:.3f} R {r['recall']:.3f})", flush=True)
    if a.second_round:
        n1, n2 = (int(v) for v in a.second_round.split(","))
        r = second_round(out, n1, n2, a)
        print(f"uncertainty {n1}+{n2}: F1 {r['f1']:.3f} (P {r['precision']:.3f} R {r['recall']:.3f})", flush=True)
    if a.upper_bound:
        upper_bound(out, a)
    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]
    print(report(out, rows, base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
