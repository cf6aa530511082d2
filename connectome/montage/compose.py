"""Composition of the section transforms along z (driver-only setup of ``align-render``).

See :mod:`.align_stage` for the rules (reference section, bridging, bad sections, drift control).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from connectome.blockwise.markers import atomic_write_text
from connectome.montage.align_store import (
    align_dir,
    match_path,
    n_sections,
    planned_refs,
    prev_section,
    read_match,
    section_health,
    transform_path,
)
from connectome.montage.warp import DisplacementGrid, affine_apply, identity_grid
from connectome.montage.zsolve import Edge, solve

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from connectome.montage.align_config import AlignConfig


def _affine_displacement(aff: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The displacement ``aff(q) - q`` of an affine (2, 3) matrix, as a function of (n, 2) points."""
    return lambda q: affine_apply(aff, q) - q


def compose_transforms(workspace, present: list[int], frame_hw: tuple[int, int], config: "AlignConfig") -> dict:
    """Compose and store every section transform; returns the per-section records.

    Pass 1 (in z order) decides each section's status and reference exactly as described in
    :mod:`.align_stage`; pass 2 solves all transforms that rest on matches (or on a bad
    section's coarse affine) jointly with drift control (:mod:`.zsolve`); pass 3 interpolates
    the sections left without any transform."""
    n = n_sections(workspace)
    base = identity_grid((0.0, 0.0), (frame_hw[0] - 1.0, frame_hw[1] - 1.0), float(config.grid_spacing_px))
    failed, folded = section_health(workspace, present, config.max_fold_score)
    records: dict[int, dict] = {}
    edges: list[Edge] = []
    has_t: set[int] = set()
    ref0 = present[0]
    has_t.add(ref0)
    records[ref0] = {"z": ref0, "status": "reference", "ref": None}
    refs = planned_refs(workspace, present, n, config, with_bridges=True)

    def match_edges(z, chosen, usable):
        # the chosen match, plus every other good match of a good section (redundancy); a match
        # over d sections carries d sections' worth of oblique-content motion: weight 1/d
        picked = [chosen] + [
            (r, m)
            for r, m in usable
            if r != chosen[0] and records[z]["status"] != "bad" and records[r]["status"] != "bad"
        ]
        for r, (grid, _, info) in picked:
            edges.append(Edge(z, r, config.drift_prior.match_weight(info["ncc_after"], z - r), grid.displacement))
        has_t.add(z)

    for z in present[1:]:
        p = prev_section(present, z)
        assert p is not None  # present is sorted
        cands = sorted({r for r in refs[z] if match_path(workspace, z, r).is_file()}, reverse=True)
        usable = [
            (r, m) for r in cands for m in [read_match(workspace, z, r)] if m is not None and m[2]["ok"] and r in has_t
        ]  # m is not None: the file exists
        good = [(r, m) for r, m in usable if records[r]["status"] != "bad"]
        # a good reference if there is one; else, rather than giving up, the nearest bad section
        # that has a transform (its own match or its coarse affine)
        chosen = good[0] if good else (usable[0] if usable else None)
        if z in folded:
            m_prev = read_match(workspace, z, p)
            assert m_prev is not None  # section_health read it
            info = m_prev[2]
            records[z] = {
                "z": z,
                "status": "bad",
                "ref": p,
                "reason": f"fold score {info['fold_score']:.1f} > {config.max_fold_score}",
            }
            if chosen is not None:  # the fold breaks part of the section: keep its own (elastic) match
                records[z].update(ref=chosen[0], fallback=f"own match to z={chosen[0]}")
                match_edges(z, chosen, usable)
                continue
            chosen = None
        if chosen is not None:
            r = chosen[0]
            records[z] = {"z": z, "status": "aligned" if r == p else "bridged", "ref": r}
            if records[r]["status"] == "bad":
                records[z]["note"] = f"chained through bad section z={r}"
            match_edges(z, chosen, good)
            continue
        m = read_match(workspace, z, p)
        info = m[2] if m else {}
        if z not in folded:
            records[z] = {"z": z, "status": "bad", "ref": p, "reason": info.get("reason") or "no usable match"}
        if m is not None and info.get("coarse_ok") and p in has_t and records[p]["status"] != "bad":
            aff = m[1]
            w = config.drift_prior.match_weight(info["ncc_after"], z - p)
            edges.append(Edge(z, p, w, _affine_displacement(aff)))
            has_t.add(z)
            records[z]["fallback"] = "coarse affine"
    nodes = base.nodes()
    flow: dict = {}
    solved = solve(nodes, ref0, [z for z in present[1:] if z in has_t], edges, config.drift_prior, info=flow)
    if flow:
        log.info(
            "align: content flow estimated at (%.2f, %.2f) px per section (y, x), kept in the volume", *flow["flow_yx"]
        )
        atomic_write_text(
            align_dir(workspace) / "flow.json",
            json.dumps(
                {
                    "flow_px_per_section_yx": flow["flow_yx"],
                    "estimated": bool(config.drift_prior.estimate_flow),
                    "meaning": "mean motion of the content from section z to z+1 (y, x px) that the joint solve attributed "
                    "to the tissue (oblique structures), not to the sections' placement; it is not aligned away",
                },
                indent=1,
            ),
        )
    transforms = {ref0: base}
    transforms.update({z: DisplacementGrid(base.origin_yx, base.spacing, u) for z, u in solved.items()})
    # bad sections without any transform: interpolate between good neighbours
    good_z = [z for z in present if z in transforms and records[z]["status"] != "bad"]
    for z in present:
        if z in transforms:
            continue
        lo = [g for g in good_z if g < z]
        hi = [g for g in good_z if g > z]
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
        atomic_write_text(
            align_dir(self.workspace) / "sections.json", json.dumps([records[z] for z in sorted(records)], indent=1)
        )
