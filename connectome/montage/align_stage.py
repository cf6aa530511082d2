"""``connectome align``: stitched montages -> the aligned volume ``WS/volume.zarr/raw``.

Three blockwise tasks, each resumable, each parallel under any executor:

1. ``align`` (one block per section ``z``): register ``z`` to its predecessor, the nearest
   lower section that has a montage (:func:`.align.register_pair`).
2. ``align-bridge`` (one block per section; most do nothing): where a match of step 1 failed
   or a section shows a fold -- at ``z`` or at ``z``'s predecessor -- match ``z`` also to the
   earlier sections down to ``z - max_skip`` (z-2..z-4), nearest first, until one matches well,
   so a bad section can be skipped.
3. ``align-render`` (blocks over ``(z, y, x)`` of the workspace frame): its driver-only setup
   composes the section transforms (below); each block then warps its part of every section
   out of the montages (bounded memory: a block reads only the montage region it maps to).

Composition (driver, cheap: grids only). The first section with a montage is the reference
(``T = identity``, the aligned frame). For each later section ``z`` in order, candidate
references are its successful matches, nearest first; the first whose own transform is known
and good is chosen (``T_z = P_{z<-r} o T_r``), and every other good match of a good section is
kept as a redundant constraint. A section is *bad* when it shows a fold
(:func:`.align.fold_score` > ``max_fold_score``) or has no usable match. A folded section that
still matched keeps that (elastic) transform; otherwise a bad section gets its coarse
affine (``A_{z<-prev} o T_prev``) if the coarse step found a clear peak, else the transform
interpolated linearly in z between the nearest good sections. Later sections use a bad section
as their reference only when no good one within ``max_skip`` matches (then they are noted as
"chained through bad section").

Drift control: all transforms that rest on matches are solved *jointly* (:mod:`.zsolve`), each
match weighted by how similar its two sections are after registration, with a weak pull of
every section towards its stitched stage frame (``drift_prior``), separately for translation,
the linear part and the non-affine warp. Plain composition would sum every pairwise error --
above all the apparent motion of structures that run obliquely through the sections, which
content-based matching cannot tell from the sections' own drift -- so the stack would shear
and wander without bound along z. Matches between near-identical sections (NCC ~ 1) pin their
sections and the prior then has no visible effect.

Outputs (``WS/align/``)::

    matches/z00005_r00004.npz    the pair map P (montage frame of r -> montage frame of z)
    transforms/z00005.npz        T_z on a grid over the aligned frame (see :mod:`.warp`)
    sections.json                per section: status (reference/aligned/bridged/bad/missing), ref
    pairs.csv                    one row per attempted pair: matches, residual, NCC before/after, flags
    preview_z005.png             red (z-1) / green (z) overlays, before | after, for a few sections
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from connectome.blockwise import Block, BlockGrid, OutputSpec, Task
from connectome.config import config_to_dict
from connectome.montage.align import MatchParams, fold_score, register_pair
from connectome.montage.align_config import AlignConfig
from connectome.montage.align_report import write_report  # noqa: F401 (used by the CLI)
from connectome.montage.align_store import (
    align_dir,
    bridge_refs,
    match_path,
    n_sections,
    present_sections,
    section_health,
    step1_refs,
    stitch_fingerprint,
    transform_path,
)
from connectome.montage.compose import Compose
from connectome.montage.store import is_driver_process, open_montages  # noqa: F401 (used by the CLI)
from connectome.montage.warp import DisplacementGrid

log = logging.getLogger(__name__)

STAGES = ("align", "align-bridge", "align-render")


Config = AlignConfig


# ---------------------------------------------------------------------------------------------
# step 1 and 2: pair matches


@dataclass(frozen=True)
class MatchSection:
    """Block processor: match section z to each of ``refs[z]`` in order (in canvas coordinates,
    stored in montage coordinates); with ``first_ok`` it stops at the first good match."""

    workspace: str
    refs: tuple[tuple[int, ...], ...]
    params: MatchParams
    first_ok: bool = False

    def __call__(self, block: Block) -> None:
        z = block.index_zyx[0]
        if not self.refs[z]:
            return
        montage, coverage, attrs = open_montages(self.workspace)
        off = np.asarray(attrs["offset_yx"], dtype=np.float64)
        moving = np.asarray(montage[z])
        mmask = np.asarray(coverage[z]) > 0
        fold = fold_score(moving, mmask)
        for r in self.refs[z]:
            res = register_pair(
                np.asarray(montage[r]), np.asarray(coverage[r]) > 0, moving, mmask, self.params, distance=z - r
            )
            # canvas -> montage frame: P_m(q) = P_c(q + off) - off
            grid = DisplacementGrid(tuple(res.grid.origin_yx - off), res.grid.spacing, res.grid.disp_yx)
            lin = res.affine[:, :2]
            aff = np.hstack([lin, (res.affine[:, 2] + lin @ off - off)[:, None]])
            info = {
                "z": z,
                "ref": r,
                "ok": res.ok,
                "reason": res.reason,
                "n_candidates": res.n_candidates,
                "n_accepted": res.n_accepted,
                "residual_median_px": res.residual_median_px,
                "residual_max_px": res.residual_max_px,
                "coarse_peak_ratio": res.coarse_peak_ratio,
                "ncc_before": res.ncc_before,
                "ncc_after": res.ncc_after,
                "fold_score": fold,
                **res.stats,
            }
            grid.to_npz(match_path(self.workspace, z, r), affine_yx=aff, info=np.array(json.dumps(info)))
            if self.first_ok and res.ok:
                break


@dataclass(frozen=True)
class ResetOnRestart:
    """Driver-only setup of step 1: with ``--restart`` the old matches and transforms go too."""

    workspace: str
    restart: bool

    def __call__(self) -> None:
        if self.restart:
            import shutil

            # step 1's done-markers go first (the runner would drop them only after this setup):
            # a --restart run killed in here must not leave markers claiming deleted matches
            shutil.rmtree(Path(self.workspace) / "blockwise" / "align" / "done", ignore_errors=True)
            for sub in ("matches", "transforms"):
                shutil.rmtree(align_dir(self.workspace) / sub, ignore_errors=True)


def plan_match(workspace: str | Path, config: AlignConfig = AlignConfig(), restart: bool = False) -> Task:
    """Step 1: every section against its predecessor."""
    present, attrs = present_sections(workspace)
    n = n_sections(workspace)
    refs = step1_refs(present, n, config.neighbours)
    fp = {"stitch": stitch_fingerprint(attrs), "config": config_to_dict(config), "refs": [list(r) for r in refs]}
    return Task(
        "align",
        Path(workspace),
        BlockGrid((n, 1, 1), (1, 1, 1)),
        MatchSection(str(workspace), tuple(refs), config.pair),
        fp,
        (),
        max_retries=config.blockwise.max_retries,
        setup=ResetOnRestart(str(workspace), restart),
    )


def plan_bridge(workspace: str | Path, config: AlignConfig = AlignConfig()) -> Task:
    """Step 2: extra matches around failed matches and folded sections (reads step 1's results)."""
    present, attrs = present_sections(workspace)
    n = n_sections(workspace)
    failed, folded = section_health(workspace, present, config.max_fold_score)
    done = step1_refs(present, n, config.neighbours)
    refs = [
        tuple(r for r in extra if r not in done[z])
        for z, extra in enumerate(bridge_refs(present, n, failed | folded, config.max_skip))
    ]
    fp = {"stitch": stitch_fingerprint(attrs), "config": config_to_dict(config), "refs": [list(r) for r in refs]}
    if failed or folded:
        log.info(
            "align: failed matches at z=%s, folds at z=%s; bridging from up to z-%d",
            sorted(failed),
            sorted(folded),
            config.max_skip,
        )
    return Task(
        "align-bridge",
        Path(workspace),
        BlockGrid((n, 1, 1), (1, 1, 1)),
        MatchSection(str(workspace), tuple(refs), config.pair, first_ok=True),
        fp,
        (),
        max_retries=config.blockwise.max_retries,
    )


# ---------------------------------------------------------------------------------------------
# step 3: render


@dataclass(frozen=True)
class RenderBlock:
    workspace: str
    present: tuple[int, ...]
    order: int

    def __call__(self, block: Block) -> None:
        from scipy import ndimage

        from connectome.workspace import open_array

        montage, coverage, attrs = open_montages(self.workspace)
        off = np.asarray(attrs["offset_yx"], dtype=np.float64)
        (z0, y0, x0), (z1, y1, x1) = block.write_box.begin_zyx, block.write_box.end_zyx
        out = np.zeros(block.write_box.shape_zyx, dtype=np.uint8)
        hc, wc = montage.shape[1:]
        for z in range(z0, z1):
            if z not in self.present:
                continue
            t = DisplacementGrid.from_npz(transform_path(self.workspace, z))
            c = t.dense((y0, x0), (y1 - y0, x1 - x0)) + off
            pad = 2 + self.order
            lo = np.floor(c.reshape(-1, 2).min(axis=0)).astype(int) - pad
            hi = np.ceil(c.reshape(-1, 2).max(axis=0)).astype(int) + pad + 1
            lo_c, hi_c = np.maximum(lo, 0), np.minimum(hi, (hc, wc))
            if np.any(hi_c <= lo_c):
                continue
            img = np.asarray(montage[z, lo_c[0] : hi_c[0], lo_c[1] : hi_c[1]]).astype(np.float32)
            cov = np.asarray(coverage[z, lo_c[0] : hi_c[0], lo_c[1] : hi_c[1]]).astype(np.float32)
            cc = [c[..., 0] - lo_c[0], c[..., 1] - lo_c[1]]
            vals = ndimage.map_coordinates(img, cc, order=self.order, mode="nearest")
            inside = ndimage.map_coordinates(cov, cc, order=0, mode="constant", cval=0.0) > 0
            out[z - z0] = np.where(inside, np.clip(np.rint(vals), 0, 255), 0).astype(np.uint8)
        open_array(self.workspace, "raw", mode="r+")[block.write_box.slices] = out


def _matches_digest(workspace) -> str:
    h = hashlib.sha1()
    for p in sorted((align_dir(workspace) / "matches").glob("*.npz")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def plan_render(workspace: str | Path, config: AlignConfig = AlignConfig()) -> Task:
    """Step 3: compose (setup) and warp blockwise into ``raw``."""
    from connectome.workspace import Workspace

    ws = Workspace.open(workspace)
    present, attrs = present_sections(workspace)
    shape = ws.shape_zyx
    bs = cast("tuple[int, int, int]", tuple(config.blockwise.block_shape_zyx))
    fp = {"stitch": stitch_fingerprint(attrs), "matches": _matches_digest(workspace), "config": config_to_dict(config)}
    out = OutputSpec(
        "raw", "uint8", bs, attrs={"aligned_by": "connectome align", "interpolation_order": config.interpolation_order}
    )
    return Task(
        "align-render",
        ws.path,
        BlockGrid(shape, bs),
        RenderBlock(str(ws.path), tuple(present), config.interpolation_order),
        fp,
        (out,),
        max_retries=config.blockwise.max_retries,
        setup=Compose(str(ws.path), tuple(present), (shape[1], shape[2]), config),
    )
