"""``format_table``: the evaluation results as a readable, aligned text table.

One row per metric, grouped by section; a section the workspace has no output for reads
"not run", one whose truth is missing reads "no truth". Values that are undefined (e.g.
precision with no predictions) print as "n/a". The alignment criteria (a)-(e) (see
:mod:`.align_truth`) add their target and pass/FAIL in a fourth column.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

#: (section key, title, [(dotted metric key, label), ...]) in print order.
#: (dotted key, label) rows of a section
_Metrics = list[tuple[str, str]]

LAYOUT: list[tuple[str, str, _Metrics | Callable[[Mapping[str, Any]], _Metrics]]] = [
    (
        "stitching",
        "stitching",
        [
            ("n_tiles", "tiles compared"),
            ("n_missing_tiles", "tiles missing from the estimate"),
            ("n_tiles_at_nominal", "tiles left at their nominal position (reported)"),
            ("error_median_px", "tile position error median (px), registered tiles"),
            ("error_max_px", "tile position error max (px), registered tiles"),
            ("error_max_all_px", "tile position error max (px), all tiles"),
        ],
    ),
    (
        "alignment",
        "alignment",
        [
            ("n_patches_used", "patches compared"),
            ("residual_median_px", "residual median (px)"),
            ("residual_max_px", "residual max (px)"),
            ("fraction_over_flag", "fraction of patches over flag"),
            ("worst_section", "worst section (largest median)"),
            ("ncc_neighbour_mean", "neighbour NCC mean"),
            ("truth_ncc_neighbour_mean", "neighbour NCC mean of truth"),
        ],
    ),
    (
        "vessels",
        "vessel mask",
        [
            ("iou", "IoU"),
            ("dice", "Dice"),
            ("precision", "voxel precision"),
            ("recall", "voxel recall"),
        ],
    ),
    (
        "segmentation",
        "segmentation",
        [
            ("voi_split", "VOI split H(seg|truth) (bits)"),
            ("voi_merge", "VOI merge H(truth|seg) (bits)"),
            ("arand_error", "adapted Rand error"),
            ("arand_precision", "adapted Rand precision"),
            ("arand_recall", "adapted Rand recall"),
            ("n_split_truth_objects", "split truth objects"),
            ("n_merger_segments", "merger segments"),
            ("n_truth_objects", "truth objects"),
            ("n_segments", "segments overlapping neurons"),
            ("unlabelled_fraction", "unlabelled neuron voxels"),
        ],
    ),
    (
        "skeletons",
        "skeletons (along the true skeletons)",
        [
            ("erl_nm", "expected run length ERL (nm)"),
            ("erl_truth_nm", "ERL of the truth labels (ceiling, nm)"),
            ("erl_fraction_of_truth", "ERL / ERL of the truth"),
            ("total_length_nm", "true skeleton length (nm)"),
            ("n_merges", "merges (on skeleton nodes)"),
            ("n_splits", "splits (on skeleton nodes)"),
            ("n_skeletons", "true skeletons"),
            ("omitted_node_fraction", "nodes in no segment"),
        ],
    ),
    (
        "synapses",
        "synapses",
        [
            ("n_predicted", "predicted"),
            ("n_true", "true"),
            ("n_matched", "matched"),
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "F1"),
            ("partner_accuracy", "partner accuracy"),
        ],
    ),
    (
        "connectivity",
        "connectivity",
        lambda section: (
            [
                (
                    f"{key}.{m}",
                    f"edge {m if m != 'f1' else 'F1'} (>= {key[len('edges_min') :]} synapse"
                    f"{'s' if key != 'edges_min1' else ''})",
                )
                for key in sorted((k for k in section if k.startswith("edges_min")), key=lambda k: int(k[9:]))
                for m in ("precision", "recall", "f1")
            ]
            + [
                ("weighted.precision", "synapse-weighted precision"),
                ("weighted.recall", "synapse-weighted recall"),
                ("weighted.f1", "synapse-weighted F1"),
            ]
        ),
    ),
]


def _get(section: Mapping[str, Any], dotted: str):
    node: Any = section
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def _num(value, signed: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if signed:
        return f"{value:+.4f}" if isinstance(value, float) and value != round(value, 4) else f"{value:+g}"
    return f"{value:g}"


def check_text(value, target, passed, signed: bool = False) -> str:
    """``"<= 2: pass"`` / ``"<= +0.02: FAIL"`` (empty without a target)."""
    if target is None:
        return ""
    verdict = "n/a" if passed is None else ("pass" if passed else "FAIL")
    return f"<= {_num(target, signed)}: {verdict}"


def _status_text(crit: Mapping[str, Any]) -> str:
    reason = crit.get("reason")
    return str(crit.get("status")) + (f" ({reason})" if reason else "")


#: the alignment criteria as table rows: (result key, short name, [(label, value key, target key,
#: pass key, signed)]); a row with target key None has no check column
CRITERIA_ROWS: list[tuple[str, str, list[tuple[str, str, str | None, str | None, bool]]]] = [
    (
        "adjacent_pair_error",
        "(a) adjacent-pair error",
        [
            ("(a) adjacent-pair error median (px)", "median_px", "target_median_px", "pass_median", False),
            ("(a) adjacent-pair error p95 (px)", "p95_px", "target_p95_px", "pass_p95", False),
        ],
    ),
    (
        "accumulated_error",
        "(b) accumulated error",
        [
            ("(b) accumulated error, worst section RMS (px)", "worst_rms_px", "target_px", "pass", False),
            ("(b) worst section (after one global affine)", "worst_z", None, None, False),
        ],
    ),
    (
        "drift",
        "(c) drift",
        [("(c) drift (px/section)", "slope_px_per_section", "target_px_per_section", "pass", False)],
    ),
    (
        "over_registration",
        "(d) over-registration",
        [("(d) over-registration: NCC aligned - truth", "delta_ncc", "target", "pass", True)],
    ),
    (
        "downstream",
        "(e) downstream",
        [
            ("(e) downstream: ARAND aligned - truth raw", "delta_arand", "target", "pass", True),
            ("(e) downstream: VOI aligned - truth raw (bits)", "delta_voi", None, None, True),
        ],
    ),
]


def alignment_criteria_rows(section: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, check) rows of the alignment criteria (a)-(e) of an alignment section."""
    rows: list[tuple[str, str, str]] = []
    for key, name, specs in CRITERIA_ROWS:
        c = section.get(key)
        if not isinstance(c, Mapping):
            continue
        if c.get("status") != "ok":
            rows.append((name, "n/a", _status_text(c)))
            continue
        for label, vkey, tkey, pkey, signed in specs:
            v = c.get(vkey)
            value = _num(v, True) if signed else _fmt(v)
            rows.append((label, value, check_text(v, c.get(tkey), c.get(pkey), signed=signed) if tkey else ""))
        if key == "adjacent_pair_error":
            rows.append(
                ("(a) section pairs scored / excluded", f"{c.get('n_pairs_scored')} / {c.get('n_pairs_excluded')}", "")
            )
    return rows


def worst_merger_rows(section: Mapping[str, Any], top: int = 3) -> list[tuple[str, str, str]]:
    """The worst mergers of a skeletons section: segment id, skeletons joined, where (z,y,x voxels)."""
    rows = []
    for m in (section.get("worst_mergers") or [])[:top]:
        where = ",".join(str(v) for v in m.get("position_zyx", []))
        rows.append(
            (
                f"worst merger: segment {m['segment_id']}",
                f"{m['n_skeletons']} skeletons, {m['skeleton_length_nm'] / 1e3:.1f} um, at z,y,x {where}",
                "",
            )
        )
    return rows


#: extra (label, value, check) rows appended to a scored section
EXTRA_ROWS = {"alignment": alignment_criteria_rows, "skeletons": worst_merger_rows}


def format_table(results: Mapping[str, Any]) -> str:
    """The results of :func:`connectome.evaluate.evaluate_workspace` as an aligned table."""
    rows: list[tuple[str, str, str, str]] = []
    for key, title, metrics in LAYOUT:
        section = results.get(key)
        if not isinstance(section, Mapping):
            continue
        status = section.get("status", "ok")
        if status not in ("ok",):
            reason = section.get("reason")
            rows.append((title, status + (f" ({reason})" if reason else ""), "", ""))
            continue
        first = True
        for dotted, label in metrics(section) if callable(metrics) else metrics:
            value = _get(section, dotted)
            if value is _MISSING:
                continue
            rows.append((title if first else "", label, _fmt(value), ""))
            first = False
        for label, value, check in EXTRA_ROWS[key](section) if key in EXTRA_ROWS else []:
            rows.append((title if first else "", label, value, check))
            first = False
    header = ("section", "metric", "value", "target")
    w0 = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    w1 = max(len(header[1]), *(len(r[1]) for r in rows)) if rows else len(header[1])
    w2 = max(len(header[2]), *(len(r[2]) for r in rows)) if rows else len(header[2])
    checks = any(r[3] for r in rows)
    lines = [
        f"evaluation of {results.get('workspace', '?')} against {results.get('truth', '?')}",
        f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>{w2}}" + (f"  {header[3]}" if checks else ""),
        f"{'-' * w0}  {'-' * w1}  {'-' * w2}" + (f"  {'-' * max(len(r[3]) for r in rows)}" if checks else ""),
    ]
    for a, b, c, d in rows:
        lines.append(f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}  {d}".rstrip())
    return "\n".join(lines)
