"""MODEL_CARD.md of an FFN model directory, generated from its ``model.json`` (no hand-typed
numbers): architecture, input channels, the training command, data, steps and time, the
checkpoint's validation scores, and the test rows that ``benchmarks/eval_ffn.py --record``
adds."""

from __future__ import annotations

import json
from pathlib import Path


def write_model_card(model_dir: str | Path) -> Path:
    p = Path(model_dir)
    doc = json.loads((p / "model.json").read_text())
    a, t, w = doc["architecture"], doc.get("training", {}), doc["weights"]
    v = doc.get("validation", {})
    m = v.get("episodes_f1_at_0.9") or {}
    ex = (t.get("config") or {}).get("examples", {})
    lines = [
        "# Flood-Filling Network",
        "",
        "A residual 3D convolution stack (google/ffn's ConvStack3D design, re-implemented) that floods one object "
        "from a seed. `connectome segment --method ffn` floods whole neurons with it; `--method ffn-agglomerate` "
        "uses short local floods to decide which supervoxels of the learned-boundary watershed are one neuron "
        "(ffn/agglomerate.py).",
        "",
        "## Model",
        "",
        f"- Depth {a['depth']}, {a['features']} features, field of view {a['fov_zyx']} (z, y, x), moves "
        f"{a['deltas_zyx']}, {'anisotropic (1x3x3 + 3x3x3 per module)' if a.get('anisotropic') else '3x3x3'} "
        f"convolutions; {w['parameters']:,} parameters, weights {w['dtype']} ({w['size_bytes'] / 1e6:.2f} MB, sha256 "
        f"`{w['sha256'][:16]}...`).",
        f"- Input channels: {', '.join(a.get('channels', ['raw']))} + the seed logits, at "
        f"{doc['input']['voxel_size_nm']} nm (z, y, x); raw standardised with the volume's percentiles, boundary = "
        "2 x (boundary probability of `connectome predict-boundaries`) - 1.",
        f"- Move threshold {doc.get('inference', {}).get('move_threshold', 0.9)} at training and inference.",
        "",
        "## Training",
        "",
        "```",
        t.get("command", "?"),
        "```",
        "",
        f"- {t.get('steps')} steps x batch {t.get('global_batch')} = {t.get('steps', 0) * t.get('global_batch', 0):,} "
        f"examples on {t.get('ranks')} rank(s); last run {t.get('seconds_last_run', 0) / 60:.1f} min at "
        f"{t.get('examples_per_s_last_run')} examples/s.",
        f"- Episodes of {ex.get('episode_rounds', 1)} round(s) of moves (at most {ex.get('episode_max_fovs', 16)} FOVs), "
        "the network's own output fed back as the seed; intensity augmentation, section shifts; boundary channel "
        f"noise {ex.get('boundary_noise')} and gamma {ex.get('boundary_gamma')}.",
        "- Training data: " + ", ".join(str(d) for d in t.get("data", [])),
        "- Validation data (checkpoint choice by canvas ARAND / VOI on a central crop): "
        + ", ".join(str(d) for d in t.get("validation_data", [])),
        "",
        "## Validation",
        "",
        f"- Checkpoint of step {v.get('best_step')}: episodes precision {m.get('precision', float('nan')):.3f} / recall "
        f"{m.get('recall', float('nan')):.3f} at 0.9; validation-crop canvas ARAND {m.get('arand', float('nan')):.3f}, "
        f"VOI split {m.get('voi_split', float('nan')):.3f} / merge {m.get('voi_merge', float('nan')):.3f}.",
    ]
    test = doc.get("test")
    if test:
        lines += ["", "## Test (unseen seeds)", "", *test.get("text", [])]
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- Trained on synthetic serial-section EM only; its boundary channel comes from the shipped boundary "
        "model, so use the two together. Check it on labelled real data before trusting it.",
        "",
    ]
    path = p / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
