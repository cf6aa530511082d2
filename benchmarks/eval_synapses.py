"""Synapse stage on unseen synthetic volumes: detection, partners, connectivity; speed and memory.

For each seed (never used to train, validate or calibrate the shipped model -- its MODEL_CARD.md
lists those): ``connectome synth`` (``--preset``/``--shape``; ``--density`` > 0 sets
``synapse_density_per_um3`` for volumes with more multi-synapse edges), the true raw imported
as a workspace, then for each segmentation --

* ``truth``: the true neuron labels written as ``segmentation`` (partners judged alone);
* ``baseline``: ``connectome segment --method baseline`` (the FFN is not shipped yet; pass
  ``--ffn-model DIR`` to use an FFN model instead) --

``connectome synapses`` (timed, peak RSS of the process tree), ``connectome graph`` and
``connectome evaluate`` with synapses matched within ``--match-nm`` (200 nm). One row per
(seed, segmentation): synapses true/predicted, precision, recall, F1, partner accuracy, edge F1
for all edges and for edges with >= 2 synapses, the stage's megavoxels/s and peak memory.

    .venv/bin/python benchmarks/eval_synapses.py [--seeds 811,812] [--preset demo] [--shape 64,512,512]
        [--density 0] [--model DIR] [--ffn-model DIR] [--segmentations truth,baseline] [--out rows.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402

BIN = Path(sys.executable).parent


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "connectome", *map(str, args)]


def check(res, what: str):
    if res.returncode:
        raise SystemExit(f"{what} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return res


def make_volume(seed: int, preset: str, shape: str, density: float, work: Path) -> Path:
    out = work / f"syn{seed}"
    if density > 0:
        from connectome.synth import generate

        generate(
            out,
            preset=preset,
            seed=seed,
            shape_zyx=tuple(int(v) for v in shape.split(",")),
            synapse_density_per_um3=density,
        )
    else:
        check(
            run_measured(cli("synth", out, "--preset", preset, "--seed", seed, "--shape", shape, "--no-progress"))[2],
            "synth",
        )
    return out


def evaluate_seed(seed: int, a, work: Path) -> list[dict]:
    import zarr

    from connectome.evaluate import EvaluateConfig, evaluate_workspace
    from connectome.workspace import Workspace

    syn = make_volume(seed, a.preset, a.shape, a.density, work)
    base = work / f"ws{seed}"
    check(
        run_measured(cli("import", syn / "truth.zarr" / "raw", "--workspace", base, "--voxel-size", "40,8,8", "-q"))[2],
        "import",
    )
    rows = []
    for seg in a.segmentations.split(","):
        ws = work / f"ws{seed}_{seg}"
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(base, ws)
        if seg == "truth":
            neurons = zarr.open_group(str(syn / "truth.zarr"), mode="r")["neurons"]
            w = Workspace.open(ws)
            w.require_array("segmentation", "uint64", (32, 256, 256))[:] = neurons[:]
        else:
            extra = ["--model", a.ffn_model] if (seg == "ffn" and a.ffn_model) else ["--method", "baseline"]
            check(run_measured(cli("segment", "--workspace", ws, *extra, "--no-progress", "-q"))[2], "segment")
        model = ["--model", a.model] if a.model else []
        sec, peak, res = run_measured(
            cli(
                "synapses", "--workspace", ws, *model, "--no-progress", "--executor", a.executor, "--workers", a.workers
            )
        )
        check(res, "synapses")
        pred_s = re.search(r"^synapses: .* total, ([0-9.]+) s$", res.stdout, re.M)
        check(run_measured(cli("graph", "--workspace", ws))[2], "graph")
        r = evaluate_workspace(ws, syn, EvaluateConfig(synapse_match_distance_nm=a.match_nm))
        s, c = r["synapses"], r.get("connectivity", {})
        shape = Workspace.open(ws).shape_zyx
        mvox = shape[0] * shape[1] * shape[2] / 1e6

        def rnd(v):
            return round(v, 4) if isinstance(v, float) and v == v else v

        rows.append(
            {
                "seed": seed,
                "segmentation": seg,
                "n_true": s["n_true"],
                "n_predicted": s["n_predicted"],
                "precision": rnd(s["precision"]),
                "recall": rnd(s["recall"]),
                "f1": rnd(s["f1"]),
                "partner_accuracy": rnd(s["partner_accuracy"]),
                "edges_true": c.get("edges_min1", {}).get("n_true"),
                "edge_f1": rnd(c.get("edges_min1", {}).get("f1", float("nan"))),
                "edges_true_min2": c.get("edges_min2", {}).get("n_true"),
                "edge_f1_min2": rnd(c.get("edges_min2", {}).get("f1", float("nan"))),
                "seconds": round(sec, 1),
                "predict_seconds": float(pred_s.group(1)) if pred_s else None,
                "mvox_per_s": round(mvox / sec, 3),
                "predict_mvox_per_s": round(mvox / float(pred_s.group(1)), 3) if pred_s else None,
                "peak_rss_mib": round(peak / 2**20, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="811,812")
    p.add_argument("--preset", default="demo", choices=["small", "demo", "bench"])
    p.add_argument("--shape", default="64,512,512", metavar="Z,Y,X")
    p.add_argument("--density", type=float, default=0.0, help="synapses per um^3 (0: the preset's)")
    p.add_argument("--model", help="synapse model directory (default: the shipped unet/models/synapse)")
    p.add_argument("--ffn-model", help="FFN model for an 'ffn' segmentation row")
    p.add_argument("--segmentations", default="truth,baseline")
    p.add_argument("--match-nm", type=float, default=200.0)
    p.add_argument("--executor", default="local", choices=["serial", "local"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", help="keep volumes and workspaces in this folder")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument(
        "--record",
        action="store_true",
        help="add the rows and this command to the model's test section (model.json + MODEL_CARD.md)",
    )
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(a.keep) if a.keep else Path(d)
        work.mkdir(parents=True, exist_ok=True)
        for s in (int(v) for v in a.seeds.split(",")):
            rows += evaluate_seed(s, a, work)
    print(f"\nmatch within {a.match_nm:g} nm")
    print(
        f"{'seed':>5} {'seg':>9} {'true':>5} {'pred':>5} {'prec':>6} {'recall':>6} {'F1':>6} {'partner':>7} "
        f"{'edgeF1':>6} {'edges>=2':>8} {'edgeF1>=2':>9} {'Mvox/s':>7} {'pred Mvox/s':>11} {'RSS MiB':>8}"
    )
    for r in rows:
        print(
            f"{r['seed']:>5} {r['segmentation']:>9} {r['n_true']:>5} {r['n_predicted']:>5} {r['precision']!s:>6} "
            f"{r['recall']!s:>6} {r['f1']!s:>6} {r['partner_accuracy']!s:>7} {r['edge_f1']!s:>6} "
            f"{r['edges_true_min2']!s:>8} {r['edge_f1_min2']!s:>9} {r['mvox_per_s']:>7} "
            f"{r['predict_mvox_per_s']!s:>11} {r['peak_rss_mib']:>8}"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    if a.record:
        record_test(Path(a.model) if a.model else None, rows, argv if argv is not None else sys.argv[1:], a)
    return 0


def record_test(model_dir: Path | None, rows: list[dict], argv: list[str], a) -> None:
    """Write the rows into the model's ``model.json`` (``test``) and regenerate MODEL_CARD.md."""
    from connectome.atomic import atomic_write_text
    from connectome.synapses.predict import default_model
    from unet.synapse_train import write_model_card

    model_dir = Path(model_dir or default_model())
    doc = json.loads((model_dir / "model.json").read_text())
    # rows of earlier recorded runs stay unless this run has the same (volume, segmentation)
    name = f"{a.preset}, {a.shape}" + (f", {a.density:g} synapses/um^3" if a.density > 0 else "")
    new = [{"name": f"seed {r['seed']} ({name})", **r} for r in rows]
    old = doc.get("test") or {}
    keys = {(r["name"], r["segmentation"]) for r in new}
    from connectome.training.provenance import portable_command

    # paths relative to the repository root, so the card reads the same on every checkout
    command = ".venv/bin/python benchmarks/eval_synapses.py " + portable_command(
        [a for a in map(str, argv) if a != "--record"]
    )
    doc["test"] = {
        "commands": [c for c in old.get("commands", []) if c != command] + [command],
        "match_distance_nm": a.match_nm,
        "volumes": [r for r in old.get("volumes", []) if (r["name"], r["segmentation"]) not in keys] + new,
    }
    atomic_write_text(model_dir / "model.json", json.dumps(doc, indent=1))
    print(f"recorded in {write_model_card(model_dir)}")


if __name__ == "__main__":
    sys.exit(main())
