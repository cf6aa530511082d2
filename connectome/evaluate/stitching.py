"""Stitching: error of the estimated tile positions against the true ones.

Both tables list ``section,row,col,x,y`` (top-left corner of each tile, px). A montage is only
defined up to a translation, so within each section the estimated positions are first shifted
by the section's *median* offset (component-wise median over its tiles of estimated - true)::

    e_i = (est_i - true_i) - median_j(est_j - true_j)        error_i = |e_i| (Euclidean, px)

The median (not the mean, not an anchor tile) makes the score independent of which tile the
stitcher anchored and robust to a few bad tiles: with >= 3 tiles in a section, one misplaced tile
shows its own displacement in full and the others none. Tiles are paired by
(section, row, col); tiles of the truth missing from the estimate are counted, not scored.

Registered tiles. ``connectome stitch`` says in the ``placed`` column of ``WS/stitch/tiles.csv``
how each tile was placed: ``solved`` (registered to the section's main group) or ``single``
(the only tile of its section) versus ``isolated`` / ``detached group`` (no trustworthy match
to the main group: left at its nominal stage position relative to it, and reported). When that
column is known (argument ``placed``, see :func:`read_placed`, or a ``placed`` column in the
estimated table), the scores are over the registered tiles only (the median offset then taken
over the registered tiles of each section), and the tiles left at nominal are counted::

    error_median_px, error_mean_px, error_max_px, worst_tile   registered tiles (all tiles
                                          when ``placed`` is unknown: the old scores)
    n_tiles_registered, n_tiles_at_nominal, at_nominal_sections
    error_median_all_px, error_max_all_px, worst_tile_all       all compared tiles, always
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

#: values of the ``placed`` column that mean "positioned by registration"
REGISTERED = ("solved", "single")


def read_placed(path: str | Path) -> dict | None:
    """``{(section, row, col): placed}`` from a stitch ``tiles.csv``, or None when the file or
    its ``placed`` column is absent (older workspaces)."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if "placed" not in (reader.fieldnames or []):
            return None
        out = {}
        for row in reader:
            try:
                out[(int(row["section"]), int(row["row"]), int(row["col"]))] = (row["placed"] or "").strip()
            except (TypeError, ValueError):
                continue
        return out


def _errors(keys: list, est_pos: dict, true_pos: dict) -> tuple[list, np.ndarray]:
    by_section: dict[int, list] = {}
    for key in keys:
        by_section.setdefault(key[0], []).append(key)
    out_keys, errors = [], []
    for _section, tiles in sorted(by_section.items()):
        offsets = np.array([[est_pos[k][0] - true_pos[k][0], est_pos[k][1] - true_pos[k][1]] for k in tiles])
        residual = offsets - np.median(offsets, axis=0)
        out_keys.extend(tiles)
        errors.extend(np.hypot(residual[:, 0], residual[:, 1]).tolist())
    return out_keys, np.asarray(errors, dtype=np.float64)


def tile_position_errors(estimated: dict, truth: dict, placed: dict | None = None) -> dict:
    """Scores of estimated tile positions; both arguments are column dicts (see tables.TILES).
    ``placed``: ``{(section, row, col): placed}`` (:func:`read_placed`), or a ``placed`` column
    in ``estimated``; without either the scores are over all tiles (see the module docstring)."""
    true_pos = {
        (int(s), int(r), int(c)): (float(x), float(y))
        for s, r, c, x, y in zip(truth["section"], truth["row"], truth["col"], truth["x"], truth["y"])
    }
    est_pos = {
        (int(s), int(r), int(c)): (float(x), float(y))
        for s, r, c, x, y in zip(
            estimated["section"], estimated["row"], estimated["col"], estimated["x"], estimated["y"]
        )
    }
    if placed is None and "placed" in estimated:
        placed = {
            (int(s), int(r), int(c)): str(p)
            for s, r, c, p in zip(estimated["section"], estimated["row"], estimated["col"], estimated["placed"])
        }
    common = sorted(set(true_pos) & set(est_pos))
    keys, errs = _errors(common, est_pos, true_pos)
    result: dict[str, Any] = {
        "status": "ok" if errs.size else "no common tiles",
        "n_tiles": len(common),
        "n_sections": len({k[0] for k in common}),
        "n_missing_tiles": len(set(true_pos) - set(est_pos)),
        "n_extra_tiles": len(set(est_pos) - set(true_pos)),
        "error_median_all_px": float(np.median(errs)) if errs.size else math.nan,
        "error_max_all_px": float(errs.max()) if errs.size else math.nan,
        "worst_tile_all": _worst(keys, errs),
    }
    if placed is not None:
        reg = [k for k in common if placed.get(k, "") in REGISTERED]
        at_nominal = [k for k in common if placed.get(k, "") not in REGISTERED]
        keys, errs = _errors(reg, est_pos, true_pos)
        result.update(
            n_tiles_registered=len(reg),
            n_tiles_at_nominal=len(at_nominal),
            at_nominal_sections=sorted({k[0] for k in at_nominal}),
        )
    result.update(
        error_median_px=float(np.median(errs)) if errs.size else math.nan,
        error_mean_px=float(errs.mean()) if errs.size else math.nan,
        error_max_px=float(errs.max()) if errs.size else math.nan,
        worst_tile=_worst(keys, errs),
    )
    return result


def _worst(keys: list, errs: np.ndarray) -> dict | None:
    if not errs.size:
        return None
    s, r, c = keys[int(np.argmax(errs))]
    return {"section": s, "row": r, "col": c}
