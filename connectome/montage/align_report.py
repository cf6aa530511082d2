"""The alignment QC: ``WS/align/pairs.csv``, ``sections.csv`` and preview PNGs (driver, after a run).

``pairs.csv`` has one row per attempted section pair (z, ref): matches (candidates, accepted,
fraction), patch residual after the smooth field (median, max), coarse peak ratio, NCC before
(montages in their own frames) and after (moving warped onto the reference), whether the pair
was used, the section's status and the flags (why a match failed, why a section is bad).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from connectome.montage.align_store import align_dir, read_match
from connectome.montage.store import open_montages

if TYPE_CHECKING:
    from connectome.montage.align_config import AlignConfig

log = logging.getLogger(__name__)


PAIR_COLUMNS = (
    "z",
    "ref",
    "section",
    "ref_section",
    "used",
    "ok",
    "n_candidates",
    "n_accepted",
    "match_fraction",
    "residual_median_px",
    "residual_max_px",
    "coarse_peak_ratio",
    "ncc_before",
    "ncc_after",
    "status",
    "flags",
)


def write_report(workspace: str | Path, config: "AlignConfig") -> dict:
    """``pairs.csv``, previews and a logged summary."""
    from connectome.montage.qc import write_table

    ws = Path(workspace)
    sections = {r["z"]: r for r in json.loads((align_dir(ws) / "sections.json").read_text())}
    _, _, attrs = open_montages(ws)
    first = int(attrs.get("first_section", 0))
    rows = []
    for p in sorted((align_dir(ws) / "matches").glob("z*_r*.npz")):
        z, r = int(p.stem[1:6]), int(p.stem[8:13])
        m = read_match(ws, z, r)
        assert m is not None  # the file exists
        _, _, info = m
        rec = sections.get(z, {})
        flags = []
        if not info["ok"]:
            flags.append(info["reason"])
        if rec.get("status") == "bad":
            flags.append("section flagged bad" + (f" ({rec['fallback']})" if rec.get("fallback") else ""))
        rows.append(
            {
                "z": z,
                "ref": r,
                "section": z + first,
                "ref_section": r + first,
                "used": rec.get("ref") == r and rec.get("status") in ("aligned", "bridged"),
                "ok": info["ok"],
                "n_candidates": info["n_candidates"],
                "n_accepted": info["n_accepted"],
                "match_fraction": info["n_accepted"] / max(info["n_candidates"], 1),
                "residual_median_px": info["residual_median_px"],
                "residual_max_px": info["residual_max_px"],
                "coarse_peak_ratio": info["coarse_peak_ratio"],
                "ncc_before": info["ncc_before"],
                "ncc_after": info["ncc_after"],
                "status": rec.get("status", ""),
                "flags": "; ".join(flags),
            }
        )
    rows.sort(key=lambda r: (r["z"], -r["ref"]))
    write_table(align_dir(ws) / "pairs.csv", PAIR_COLUMNS, rows)
    write_table(
        align_dir(ws) / "sections.csv",
        ("z", "section", "status", "ref", "fallback", "reason"),
        [{**r, "section": r["z"] + first} for r in sections.values()],
    )
    _previews(ws, sections, config.preview_sections, attrs)
    used = [r for r in rows if r["used"]]
    res = np.array([r["residual_median_px"] for r in used], dtype=float)
    summary: dict[str, Any]
    summary = {
        "sections": len(sections),
        "bad": sorted(z for z, r in sections.items() if r["status"] == "bad"),
        "bridged": sorted(z for z, r in sections.items() if r["status"] == "bridged"),
        "missing": sorted(z for z, r in sections.items() if r["status"] == "missing"),
        "ncc_after_mean": float(np.nanmean([r["ncc_after"] for r in used])) if used else float("nan"),
        "residual_median_px": float(np.nanmedian(res)) if res.size else float("nan"),
    }
    log.info(
        "align: %d sections, %d pairs used, mean NCC after %.3f, median patch residual %.2f px; bad %s, "
        "bridged %s, missing %s",
        summary["sections"],
        len(used),
        summary["ncc_after_mean"],
        summary["residual_median_px"],
        summary["bad"] or "none",
        summary["bridged"] or "none",
        summary["missing"] or "none",
    )
    for z in summary["bad"]:
        log.warning(
            "align: section z=%d flagged bad (%s); %s",
            z,
            sections[z].get("reason", ""),
            sections[z].get("fallback", "no transform"),
        )
    return summary


def _previews(ws: Path, sections: dict, count: int, attrs: dict) -> None:
    from connectome.montage.qc import write_preview
    from connectome.workspace import Workspace

    wsp = Workspace.open(ws, mode="r")
    raw = wsp.array("raw")
    montage, _, _ = open_montages(ws)
    off = attrs["offset_yx"]
    nz, h, w = raw.shape
    zs = [z for z in range(1, nz) if sections.get(z, {}).get("status") in ("aligned", "bridged", "bad")]
    pick = set(zs[int(round(i))] for i in np.linspace(0, len(zs) - 1, min(count, len(zs)))) if zs else set()
    pick |= {z for z in zs if sections[z]["status"] in ("bad", "bridged")}
    for old in ws.glob("align/preview_z*.png"):
        if int(old.stem[9:]) not in pick:
            old.unlink()
    for z in sorted(pick):
        r = sections[z]["ref"] if sections[z]["ref"] is not None else z - 1
        before_r, before_z = (np.asarray(montage[k, off[0] : off[0] + h, off[1] : off[1] + w]) for k in (r, z))
        after = (np.asarray(raw[r]), np.asarray(raw[z]))
        write_preview(align_dir(ws) / f"preview_z{z:03d}.png", (before_r, before_z), after)
