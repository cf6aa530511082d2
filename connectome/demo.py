"""``connectome demo``: the whole reconstruction on synthetic data, in one command.

It runs ``pipelines/demo.yaml`` (synth -> stitch -> align -> mask-vessels -> predict-boundaries -> segment -> synapses
-> graph -> skeletonize -> evaluate -> export-precomputed) through the pipeline runner
(:func:`connectome.pipeline.run_pipeline`), with the synthetic volume's preset and seed set from
the command line (the demo preset: 64 x 512 x 512 voxels of 40 x 8 x 8 nm). Every stage is the
real command with its own progress display; finished stages are skipped when the demo is run
again (``WS/pipeline/done``), and ``WS/run.json`` records each stage's time and block counts.
At the end it prints a table of the evaluation's headline metrics -- among them the alignment
criteria (a)-(e) of :mod:`connectome.evaluate.align_truth` with their targets and pass/FAIL; the
demo's evaluate stage runs with ``downstream: true``, so (e) segments the true raw volume as well
-- the stage timings, and the command that opens the result in Neuroglancer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"
SHAPES = {"small": (16, 256, 256), "demo": (64, 512, 512)}

#: (label, evaluation.json section, dotted keys, format): the headline metrics of the demo table
METRICS = [
    ("stitching: tile position error median (px)", "stitching", ("error_median_px",), "{:.2f}"),
    ("alignment: residual median (px)", "alignment", ("residual_median_px",), "{:.2f}"),
    # the alignment criteria against the truth transforms (connectome/evaluate/align_truth.py),
    # each with its target and pass/FAIL
    (
        "alignment (a): adjacent-pair error median / p95 (px)",
        "alignment.adjacent_pair_error",
        ("median_px", "p95_px"),
        "{:.2f} / {:.2f}",
    ),
    (
        "alignment (b): worst section RMS, global affine off (px)",
        "alignment.accumulated_error",
        ("worst_rms_px", "worst_z"),
        "{:.2f} (z {})",
    ),
    ("alignment (c): drift (px/section)", "alignment.drift", ("slope_px_per_section",), "{:.3f}"),
    ("alignment (d): neighbour NCC aligned - truth", "alignment.over_registration", ("delta_ncc",), "{:+.3f}"),
    (
        "alignment (e): ARAND / VOI aligned - truth raw",
        "alignment.downstream",
        ("delta_arand", "delta_voi"),
        "{:+.3f} / {:+.3f}",
    ),
    ("vessels: IoU", "vessels", ("iou",), "{:.3f}"),
    ("neurons: adapted Rand error", "segmentation", ("arand_error",), "{:.3f}"),
    ("neurons: VOI split / merge (bits)", "segmentation", ("voi_split", "voi_merge"), "{:.3f} / {:.3f}"),
    # skeleton metrics along the true skeletons (connectome/evaluate/skeletons.py, FFN paper)
    ("neurons: ERL / ERL of the truth (nm)", "skeletons", ("erl_nm", "erl_truth_nm"), "{:.0f} / {:.0f}"),
    ("neurons: skeleton merges / splits", "skeletons", ("n_merges", "n_splits"), "{} / {}"),
    ("synapses: F1 (precision / recall)", "synapses", ("f1", "precision", "recall"), "{:.3f} ({:.3f} / {:.3f})"),
    ("synapses: partner accuracy", "synapses", ("partner_accuracy",), "{:.3f}"),
    (
        "connectivity: edge F1 (all / >= 2 synapses)",
        "connectivity",
        ("edges_min1.f1", "edges_min2.f1"),
        "{:.3f} / {:.3f}",
    ),
]


def demo_pipeline(workspace: Path, preset: str, seed: int) -> Path:
    """``pipelines/demo.yaml`` with the synth preset, seed and frame shape set; written to
    ``WS/pipeline/demo.yaml`` (atomically) and returned."""
    import yaml

    from connectome.atomic import atomic_write_text
    from connectome.inputs import load_yaml

    doc = load_yaml(PIPELINE, "pipeline")
    for st in doc["stages"]:
        if st["stage"] == "synth":
            st["options"].update(preset=preset, seed=int(seed))
        elif st["stage"] == "stitch":
            st["options"]["frame-shape"] = list(SHAPES[preset][1:])
        elif st["stage"] == "evaluate":
            # alignment criterion (e): the same segmenter on the true raw (WS/evaluate/truth_raw/)
            st["config"] = {**(st.get("config") or {}), "downstream": True}
    doc["vars"] = {**(doc.get("vars") or {}), "data": str(workspace.absolute()) + "-data"}
    out = workspace / "pipeline" / "demo.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, yaml.safe_dump(doc, sort_keys=False))
    return out


def _metric(ev: dict, section: str, keys: tuple[str, ...], fmt: str) -> str:
    from connectome.evaluate.report import _get

    sec: object = ev
    for part in section.split("."):  # "alignment.drift": a criterion inside a section
        if isinstance(sec, dict) and sec.get("status", "ok") != "ok":
            break
        sec = sec.get(part) if isinstance(sec, dict) else None
    if not isinstance(sec, dict):
        return "not run"
    if sec.get("status", "ok") != "ok":
        return str(sec.get("reason") or sec.get("status"))
    vals = [_get(sec, k) for k in keys]
    ok = [isinstance(v, (int, float)) and v == v for v in vals]
    if not any(ok):
        return "n/a"
    # each value in its own format; a missing one (e.g. no edge with >= 2 synapses) reads n/a
    parts = re.split(r"(\{[^}]*\})", fmt)
    out, i = [], 0
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            out.append(part.format(vals[i]) if ok[i] else "n/a")
            i += 1
        else:
            out.append(part)
    return "".join(out) + _verdict(sec)


def _verdict(sec: dict) -> str:
    """``"  (<= 2: pass)"`` for an alignment criterion (its targets and pass flags), else ''."""
    from connectome.evaluate.report import check_text

    if "pass" not in sec:
        return ""
    signed = "target" in sec and any(k.startswith("delta") for k in sec)
    if "target_median_px" in sec:  # (a): two targets
        return (
            f"  (targets {sec['target_median_px']:g} / {sec['target_p95_px']:g}: {'pass' if sec['pass'] else 'FAIL'})"
        )
    target = next((sec[k] for k in sec if k.startswith("target")), None)
    return f"  ({check_text(None, target, sec['pass'], signed)})"


def summary_table(workspace: Path) -> str:
    ev_path, run_path = workspace / "evaluation.json", workspace / "run.json"
    lines = ["", "demo results (against the synthetic ground truth)"]
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else {}
    for label, section, key, fmt in METRICS:
        lines.append(f"  {label:56s} {_metric(ev, section, key, fmt)}")
    if run_path.is_file():
        rec = json.loads(run_path.read_text())
        stages = rec.get("stages", {})
        total = sum(float(s.get("seconds") or 0) for s in stages.values())
        lines.append("")
        lines.append(
            "stage timings (s): "
            + ", ".join(f"{k} {float(v.get('seconds') or 0):.1f}" for k, v in stages.items())
            + f"; total {total:.1f}"
        )
    lines += ["", f"metrics: {ev_path}", f"view:    connectome view --workspace {workspace}"]
    return "\n".join(lines)


def run_demo(workspace: str | Path, preset: str = "demo", seed: int = 1, progress=None) -> int:
    from connectome.pipeline import run_pipeline

    ws = Path(workspace)
    rc = run_pipeline(demo_pipeline(ws, preset, seed), ws, progress=progress)
    print(summary_table(ws), flush=True)
    return rc
