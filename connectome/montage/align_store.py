"""Where alignment keeps its intermediate results, and the planning helpers shared by its steps.

::

    WS/align/matches/z00005_r00004.npz   the pair map P (montage frame of r -> montage frame of z)
                                         (a :class:`.warp.DisplacementGrid` + ``affine_yx`` + ``info``)
    WS/align/transforms/z00005.npz       T_z on a grid over the aligned frame
    WS/align/sections.json               per section: status (reference/aligned/bridged/bad/missing), ref
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from connectome.errors import UserInputError
from connectome.montage.store import open_montages
from connectome.montage.warp import DisplacementGrid


def align_dir(workspace) -> Path:
    return Path(workspace) / "align"


def match_path(workspace, z: int, r: int) -> Path:
    return align_dir(workspace) / "matches" / f"z{z:05d}_r{r:05d}.npz"


def transform_path(workspace, z: int) -> Path:
    return align_dir(workspace) / "transforms" / f"z{z:05d}.npz"


def present_sections(workspace) -> tuple[list[int], dict]:
    """z indices with a stitched montage, and the montage attributes."""
    from connectome.workspace import Workspace

    n = Workspace.open(workspace).shape_zyx[0]
    _, _, attrs = open_montages(workspace)
    present = []
    for p in sorted((Path(workspace) / "stitch" / "sections").glob("z*.json")):
        rec = json.loads(p.read_text())
        if rec.get("status") not in ("missing", "empty"):  # "ok", or "partial" (a tile left at nominal)
            present.append(int(rec["z"]))
    present = [z for z in present if z < n]
    if not present:
        raise UserInputError(f"workspace {workspace}: no stitched section has tiles; run `connectome stitch` first")
    return present, attrs


def stitch_fingerprint(attrs: dict) -> str:
    return hashlib.sha1(json.dumps(attrs.get("fingerprint"), sort_keys=True).encode()).hexdigest()


def read_match(workspace, z: int, r: int) -> tuple[DisplacementGrid, np.ndarray, dict] | None:
    p = match_path(workspace, z, r)
    if not p.is_file():
        return None
    with np.load(str(p)) as f:
        info = json.loads(str(f["info"]))
        aff = np.array(f["affine_yx"])
    return DisplacementGrid.from_npz(p), aff, info


def prev_section(present: list[int], z: int) -> int | None:
    lower = [s for s in present if s < z]
    return lower[-1] if lower else None


def n_sections(workspace) -> int:
    from connectome.workspace import Workspace

    return Workspace.open(workspace).shape_zyx[0]


def section_health(workspace, present: list[int], max_fold_score: float) -> tuple[set[int], set[int]]:
    """(sections whose step-1 match failed, sections showing a fold) from the step-1 results."""
    failed, folded = set(), set()
    for z in present:
        p = prev_section(present, z)
        if p is None:
            continue
        m = read_match(workspace, z, p)
        if m is None:
            raise UserInputError(
                f"workspace {workspace}: match of section z={z} to z={p} is missing; rerun `connectome align`"
            )
        if not m[2]["ok"]:
            failed.add(z)
        if m[2]["fold_score"] > max_fold_score:
            folded.add(z)
    return failed, folded


def bridge_refs(present: list[int], n: int, suspect: set[int], max_skip: int) -> list[tuple[int, ...]]:
    """Per z (of ``n``): the extra references of step 2, nearest first. A section whose own match
    failed or shows a fold, and the section after such a section, are also matched to the
    earlier sections down to ``z - max_skip`` that are not suspect themselves (the block stops
    at the first good match)."""
    refs: list[tuple[int, ...]] = [tuple() for _ in range(n)]
    for z in present:
        p = prev_section(present, z)
        if p is None:
            continue
        if z in suspect or p in suspect:
            refs[z] = tuple(r for r in reversed(present) if z - max_skip <= r < p and r not in suspect)
    return refs


def step1_refs(present: list[int], n: int, neighbours: int) -> list[tuple[int, ...]]:
    """Per z (of ``n``): the ``neighbours`` nearest lower sections with a montage, nearest first."""
    refs: list[tuple[int, ...]] = [tuple() for _ in range(n)]
    for i, z in enumerate(present):
        refs[z] = tuple(reversed(present[max(0, i - neighbours) : i]))
    return refs


def planned_refs(workspace, present: list[int], n: int, config, with_bridges: bool) -> list[tuple]:
    """Per z: the references steps 1 (and 2) match it to, nearest first."""
    refs = step1_refs(present, n, config.neighbours)
    if with_bridges:
        failed, folded = section_health(workspace, present, config.max_fold_score)
        for z, extra in enumerate(bridge_refs(present, n, failed | folded, config.max_skip)):
            refs[z] = refs[z] + tuple(r for r in extra if r not in refs[z])
    return refs
