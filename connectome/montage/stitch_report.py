"""The stitching QC tables, merged from the per-section results after a run (driver only).

* ``tiles.csv``     section,row,col,x,y (+ nominal_x, nominal_y, gain, group, placed): estimated
  top-left positions in the section's montage frame (origin = top-left of its tile (0, 0))
* ``pairs.csv``     one row per neighbour pair: nominal and measured offsets, NCC after
  registration, peak ratio, sharpness, search range, accepted (usable evidence) / used by the
  solve, residual after the solve, significance ``z``, ``evidence`` class, deviation from the
  nominal offset, 1-sigma of the offset, overlap width, number of alternative peaks, loop
  (leave-one-out) residual, reason
* ``sections.csv``  one row per section: status (``ok``, ``partial``: some tiles placed at their
  nominal position, named in ``isolated``; ``missing``; ``empty``), counts, residuals
* ``bad_tiles.csv`` tiles left out with --skip-bad-tiles, and why
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from connectome.montage.qc import write_table

log = logging.getLogger(__name__)


TILE_COLUMNS = ("section", "row", "col", "x", "y", "nominal_x", "nominal_y", "gain", "group", "placed")
PAIR_COLUMNS = (
    "section",
    "row_a",
    "col_a",
    "row_b",
    "col_b",
    "nominal_dx",
    "nominal_dy",
    "dx",
    "dy",
    "ncc",
    "peak_ratio",
    "sharpness",
    "search_px",
    "accepted",
    "used",
    "residual_px",
    "z",
    "evidence",
    "deviation_px",
    "std_px",
    "overlap_px",
    "alternatives",
    "loop_residual_px",
    "reason",
)
SECTION_COLUMNS = (
    "section",
    "z",
    "status",
    "n_tiles",
    "n_bad_tiles",
    "n_pairs",
    "n_accepted",
    "n_used",
    "n_dropped",
    "n_groups",
    "n_at_nominal",
    "isolated",
    "residual_median_px",
    "residual_max_px",
    "extent_h",
    "extent_w",
    "clipped_tiles",
    "coverage",
)


def write_tables(workspace: str | Path) -> dict:
    """Merge the per-section results into ``tiles.csv``, ``pairs.csv``, ``sections.csv`` and
    ``bad_tiles.csv``; returns a summary (also logged)."""
    ws = Path(workspace)
    results = []
    for p in sorted((ws / "stitch" / "sections").glob("z*.json")):
        results.append(json.loads(p.read_text()))
    tiles, pairs, sections, bad = [], [], [], []
    for r in results:
        s = r["section"]
        tiles += [{"section": s, **t} for t in r["tiles"]]
        pairs += [{"section": s, **p} for p in r["pairs"]]
        bad += [{"section": s, **b} for b in r["bad_tiles"]]
        sections.append(
            {
                "section": s,
                "z": r["z"],
                "status": r["status"],
                "n_bad_tiles": len(r["bad_tiles"]),
                **r.get("summary", {}),
            }
        )
    planned = ws / "stitch" / "plan_bad_tiles.json"
    for b in json.loads(planned.read_text()) if planned.is_file() else []:
        bad.append(b)
        for row in sections:
            if row["section"] == b["section"]:
                row["n_bad_tiles"] += 1
    bad.sort(key=lambda b: (b["section"], b["row"], b["col"]))
    out = ws / "stitch"
    write_table(out / "tiles.csv", TILE_COLUMNS, tiles)
    write_table(out / "pairs.csv", PAIR_COLUMNS, pairs)
    write_table(out / "sections.csv", SECTION_COLUMNS, sections)
    write_table(out / "bad_tiles.csv", ("section", "row", "col", "path", "reason"), bad)
    res = np.array([p["residual_px"] for p in pairs if p.get("used")], dtype=float)
    partial = [s for s in sections if s["status"] == "partial"]
    summary = {
        "sections": len(sections),
        "missing": sum(1 for s in sections if s["status"] in ("missing", "empty")),
        "partial": len(partial),
        "partial_sections": {int(s["section"]): s.get("isolated", "") for s in partial},
        "tiles": len(tiles),
        "pairs": len(pairs),
        "accepted": sum(1 for p in pairs if p.get("accepted")),
        "used": int(res.size),
        "bad_tiles": len(bad),
        "isolated": sum(1 for t in tiles if t["placed"] in ("isolated", "detached group")),
        "residual_median_px": float(np.median(res)) if res.size else float("nan"),
        "residual_max_px": float(res.max()) if res.size else float("nan"),
    }
    log.info(
        "stitch: %d sections (%d missing, %d partial), %d tiles, %d/%d pairs accepted, %d used; residual "
        "median %.2f px, max %.2f px; %d tiles placed at nominal position; %d bad tiles",
        summary["sections"],
        summary["missing"],
        summary["partial"],
        summary["tiles"],
        summary["accepted"],
        summary["pairs"],
        summary["used"],
        summary["residual_median_px"],
        summary["residual_max_px"],
        summary["isolated"],
        summary["bad_tiles"],
    )
    for s in sections:
        if s["status"] == "partial":
            log.warning(
                "section %d: partial: tiles %s have no trustworthy match and are placed at their nominal "
                "stage positions (see pairs.csv)",
                s["section"],
                s.get("isolated", ""),
            )
        elif s["status"] != "ok":
            log.warning("section %d: %s", s["section"], s["status"])
    if partial:
        log.warning(
            "stitch: %d of %d sections partial (tiles at nominal position: %s); inspect %s, widen the "
            "search (stage_jitter_px) or leave bad tiles out (--skip-bad-tiles)",
            len(partial),
            len(sections),
            "; ".join(f"section {s['section']}: {s.get('isolated', '')}" for s in partial[:10])
            + (" ..." if len(partial) > 10 else ""),
            out / "pairs.csv",
        )
    return summary
