"""Stitching: error of the estimated tile positions against the true ones.

Both tables list ``section,row,col,x,y`` (top-left corner of each tile, px). A montage is only
defined up to a translation, so within each section the estimated positions are first shifted
by the section's *median* offset (component-wise median over its tiles of estimated - true)::

    e_i = (est_i - true_i) - median_j(est_j - true_j)        error_i = |e_i| (Euclidean, px)

The median (not the mean, not an anchor tile) makes the score independent of which tile the
stitcher anchored and robust to a few bad tiles: with >= 3 tiles in a section, one misplaced tile
shows its own displacement in full and the others none. Tiles are paired by
(section, row, col); tiles of the truth missing from the estimate are counted, not scored.
"""

from __future__ import annotations

import math

import numpy as np


def tile_position_errors(estimated: dict, truth: dict) -> dict:
    """Scores of estimated tile positions; both arguments are column dicts (see tables.TILES)."""
    true_pos = {(int(s), int(r), int(c)): (float(x), float(y)) for s, r, c, x, y in
                zip(truth["section"], truth["row"], truth["col"], truth["x"], truth["y"])}
    est_pos = {(int(s), int(r), int(c)): (float(x), float(y)) for s, r, c, x, y in
               zip(estimated["section"], estimated["row"], estimated["col"], estimated["x"], estimated["y"])}
    common = sorted(set(true_pos) & set(est_pos))
    by_section: dict[int, list] = {}
    for key in common:
        by_section.setdefault(key[0], []).append(key)
    keys, errors = [], []
    for section, tiles in sorted(by_section.items()):
        offsets = np.array([[est_pos[k][0] - true_pos[k][0], est_pos[k][1] - true_pos[k][1]] for k in tiles])
        residual = offsets - np.median(offsets, axis=0)
        keys.extend(tiles)
        errors.extend(np.hypot(residual[:, 0], residual[:, 1]).tolist())
    errors_arr = np.asarray(errors, dtype=np.float64)
    result = {
        "status": "ok" if errors else "no common tiles",
        "n_tiles": len(common),
        "n_sections": len(by_section),
        "n_missing_tiles": len(set(true_pos) - set(est_pos)),
        "n_extra_tiles": len(set(est_pos) - set(true_pos)),
        "error_median_px": float(np.median(errors_arr)) if errors else math.nan,
        "error_mean_px": float(errors_arr.mean()) if errors else math.nan,
        "error_max_px": float(errors_arr.max()) if errors else math.nan,
        "worst_tile": None,
    }
    if errors:
        s, r, c = keys[int(np.argmax(errors_arr))]
        result["worst_tile"] = {"section": s, "row": r, "col": c}
    return result
