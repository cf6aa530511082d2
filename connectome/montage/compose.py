"""Composition of the section transforms along z (driver-only setup of ``align-render``).

See :mod:`.align_stage` for the rules (reference section, bridging, bad sections, drift control).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from connectome.blockwise.markers import atomic_write_text
from connectome.montage.align_store import (align_dir, match_path, n_sections, planned_refs, prev_section,
                                            read_match, section_health, transform_path)
from connectome.montage.warp import DisplacementGrid, affine_apply, compose, identity_grid

if TYPE_CHECKING:  # the config lives with the stage, which imports this module
    from connectome.montage.align_stage import AlignConfig


def _affine_grid(aff: np.ndarray, like: DisplacementGrid) -> DisplacementGrid:
    nodes = like.nodes()
    return DisplacementGrid(like.origin_yx, like.spacing, nodes @ aff[:, :2].T + aff[:, 2] - nodes)


def _split_affine(t: DisplacementGrid) -> tuple[np.ndarray, DisplacementGrid]:
    """(best-fit affine of ``t`` over its nodes, ``t`` minus that affine as a displacement grid)."""
    from connectome.montage.warp import fit_affine

    nodes = t.nodes().reshape(-1, 2)
    aff = fit_affine(nodes, t.apply(nodes))
    rest = (t.apply(nodes) - affine_apply(aff, nodes)).reshape(t.disp_yx.shape)
    return aff, DisplacementGrid(t.origin_yx, t.spacing, rest)


def _damped(t: DisplacementGrid, memory: float) -> DisplacementGrid:
    """``t`` with its non-affine part scaled by ``memory`` (drift control)."""
    if memory >= 1.0:
        return t
    aff, rest = _split_affine(t)
    return DisplacementGrid(t.origin_yx, t.spacing, _affine_grid(aff, t).disp_yx + memory * rest.disp_yx)


def compose_transforms(workspace, present: list[int], frame_hw: tuple[int, int], config: "AlignConfig") -> dict:
    """Compose and store every section transform; returns the per-section records."""
    n = n_sections(workspace)
    base = identity_grid((0.0, 0.0), (frame_hw[0] - 1.0, frame_hw[1] - 1.0), float(config.grid_spacing_px))
    failed, folded = section_health(workspace, present, config.max_fold_score)
    transforms: dict[int, DisplacementGrid] = {}
    records: dict[int, dict] = {}
    ref0 = present[0]
    transforms[ref0] = base
    records[ref0] = {"z": ref0, "status": "reference", "ref": None}
    refs = planned_refs(workspace, present, n, config, with_bridges=True)
    for z in present[1:]:
        p = prev_section(present, z)
        cands = sorted({r for r in refs[z] if match_path(workspace, z, r).is_file()}, reverse=True)
        usable = [(r, m) for r in cands for m in [read_match(workspace, z, r)] if m[2]["ok"] and r in transforms]
        good = [(r, m) for r, m in usable if records[r]["status"] != "bad"]
        # a good reference if there is one; else, rather than giving up, the nearest bad section
        # that has a transform (its own match or its coarse affine)
        chosen = good[0] if good else (usable[0] if usable else None)
        if z in folded:
            info = read_match(workspace, z, p)[2]
            records[z] = {"z": z, "status": "bad", "ref": p,
                          "reason": f"fold score {info['fold_score']:.1f} > {config.max_fold_score}"}
            if chosen is not None:  # the fold breaks part of the section: keep its own (elastic) match
                r, (grid, _, _) = chosen
                transforms[z] = compose(grid, _damped(transforms[r], config.warp_memory))
                records[z].update(ref=r, fallback=f"own match to z={r}")
                continue
            chosen = None
        if chosen is not None:
            r, (grid, _, info) = chosen
            transforms[z] = compose(grid, _damped(transforms[r], config.warp_memory))
            records[z] = {"z": z, "status": "aligned" if r == p else "bridged", "ref": r}
            if records[r]["status"] == "bad":
                records[z]["note"] = f"chained through bad section z={r}"
            continue
        m = read_match(workspace, z, p)
        info = m[2] if m else {}
        if z not in folded:
            records[z] = {"z": z, "status": "bad", "ref": p, "reason": info.get("reason") or "no usable match"}
        good_p = p in transforms and records[p]["status"] != "bad"
        if m is not None and info.get("coarse_ok") and good_p:
            tp = transforms[p]
            nodes = tp.nodes()
            transforms[z] = DisplacementGrid(tp.origin_yx, tp.spacing, affine_apply(m[1], tp.apply(nodes)) - nodes)
            records[z]["fallback"] = "coarse affine"
    # bad sections without a coarse transform: interpolate between good neighbours
    good = [z for z in present if z in transforms and records[z]["status"] != "bad"]
    for z in present:
        if z in transforms:
            continue
        lo = [g for g in good if g < z]
        hi = [g for g in good if g > z]
        a = lo[-1] if lo else hi[0]
        b = hi[0] if hi else a
        w = 0.0 if a == b else (z - a) / (b - a)
        ta, tb = transforms[a], transforms[b]
        transforms[z] = DisplacementGrid(ta.origin_yx, ta.spacing, (1 - w) * ta.disp_yx + w * tb.disp_yx)
        records[z]["fallback"] = f"interpolated between z={a} and z={b}"
    for z in range(n):
        if z not in records:
            records[z] = {"z": z, "status": "missing", "ref": None}
    for z, t in transforms.items():
        t.to_npz(transform_path(workspace, z))
    return records


@dataclass(frozen=True)
class Compose:
    workspace: str
    present: tuple[int, ...]
    frame_hw: tuple[int, int]
    config: "AlignConfig"

    def __call__(self) -> None:
        records = compose_transforms(self.workspace, list(self.present), self.frame_hw, self.config)
        atomic_write_text(align_dir(self.workspace) / "sections.json",
                          json.dumps([records[z] for z in sorted(records)], indent=1))
