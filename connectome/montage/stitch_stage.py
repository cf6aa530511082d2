"""``connectome stitch``: tiles -> one montage per section, blockwise over sections.

One block = one section (``BlockGrid((n_sections, 1, 1), (1, 1, 1))``, block ``z{k}_y0_x0``
is the k-th section counted from the manifest's first section). A block reads the section's
tiles, registers every pair of overlapping neighbours on their overlap strips
(:func:`.pairwise.match_overlap`), places the tiles by robust least squares with loop checks
(:mod:`.solve`), equalises tile gains and renders the montage with feathered seams
(:mod:`.render`). Sections are independent, so any executor runs them in parallel; each
finished section leaves a done-marker and is skipped on resume.

Search. Every offset within ``+/-search_px`` of the nominal one (default ``2 *
stage_jitter_px + 2`` = 32 px: +/-15 px of stage jitter on both tiles) is scored by the
masked NCC over that offset's own overlap, as long as the overlap is at least
``min_overlap_px`` (6) wide; so small overlaps (5% of a tile) with large jitter are found,
and a pair whose tiles do not overlap by that much anywhere in the search (a gap) has no match.

Acceptance (the evidence of a pair, taken together; column ``evidence`` of ``pairs.csv``):

* ``none``: no offset overlaps enough, no contrast, the peak is at the edge of the search, its
  significance ``z`` is below ``min_z`` (2) or its NCC after registration below ``min_ncc``.
  ``z`` = Fisher z of the NCC times the square root of the number of independent samples in
  the overlap (see :mod:`.pairwise`): a high NCC over a wide strip is strong evidence even if a
  repetitive texture gives a second peak almost as high (low peak ratio); a high NCC that rests
  on one large smooth structure (a broad peak) is weak evidence;
* ``strong`` (``z >= strong_z``, 8): trusted on its own;
* ``weak``: used only if it lies on a loop of tiles that closes (e.g. the 4 tiles of a grid
  square) -- unconfirmed weak pairs are dropped;
* ``ambiguous`` is appended when the peak ratio is below ``min_peak_ratio`` or the sharpness
  below ``min_sharpness``: such a pair is the first suspect when a loop does not close.

The nominal offset enters as a prior of width ``stage_jitter_px`` that breaks near-ties between
peaks, and when a loop does not close, the pair with the least evidence (weak, ambiguous, low
``z``, far from nominal) switches to an alternative peak that closes it or is dropped (see
:mod:`.solve`). A tile is left at its nominal stage position (relative to the registered
ones) only when none of its pairs survives; then the section's status is ``partial`` and the
tile is named (``sections.csv`` ``isolated``, ``tiles.csv`` ``placed``, the log's summary).

Outputs (``WS/stitch/``)::

    montages.zarr/           zarr v3 group, attribute "montage" (canvas offset, frame, ...)
      montage                uint8 (z, Hc, Wc): element [z, i, j] = montage point (i - oy, j - ox)
      coverage               uint8 {0, 1}: 1 where at least one tile covers the pixel
    sections/z00000.json     one result file per section (written by its block, atomically)
    tiles.csv                section,row,col,x,y,nominal_x,nominal_y,gain,group,placed
    pairs.csv                one row per neighbour pair (columns below)
    sections.csv             one row per section (columns below)
    bad_tiles.csv            tiles left out with --skip-bad-tiles, and why

``tiles.csv`` ``placed``: ``solved`` (registered to the section's main group), ``single`` (the
only tile of its section), ``isolated`` (no usable pair: at its nominal position relative to
the main group) or ``detached group`` (registered only to tiles that are themselves not
connected to the main group: the group sits at its nominal position). ``group``: 0 = main.

``pairs.csv``: ``section,row_a,col_a,row_b,col_b,nominal_dx,nominal_dy`` (nominal offset of b
relative to a), ``dx,dy`` (measured; the alternative peak if the solve switched to one),
``ncc`` (after subpixel registration), ``peak_ratio``, ``sharpness``, ``search_px``,
``accepted`` (evidence not ``none``), ``used`` (kept by the solve), ``residual_px`` (after the
solve), and added here: ``z``, ``evidence`` (``strong``/``weak`` [``ambiguous``] / ``none``),
``deviation_px`` (``|measured - nominal|``), ``std_px`` (1-sigma of the offset),
``overlap_px`` (width of the overlap at the measured offset), ``alternatives`` (number of
alternative peaks kept), ``loop_residual_px`` (leave-one-out residual on a loop; empty when the
pair is on no loop), ``reason`` (why not accepted / not used, or that an alternative was chosen).

``sections.csv``: ``section,z,status,n_tiles,n_bad_tiles,n_pairs,n_accepted,n_used,n_dropped,
n_groups,n_at_nominal,isolated,residual_median_px,residual_max_px,extent_h,extent_w,
clipped_tiles,coverage``; ``status`` is ``ok``, ``partial`` (``n_at_nominal`` tiles, named in
``isolated``, placed at their nominal positions), ``missing`` (no tiles) or ``empty`` (no
readable tiles).

``x, y`` in ``tiles.csv`` are the estimated top-left positions in the section's montage frame,
whose origin is the top-left of the section's tile (row 0, col 0) (so that tile is at 0, 0;
see :mod:`.solve` for the rule when it is missing). The canvas is sized from the nominal
positions of all sections plus ``margin_px`` on every side.

The workspace (``WS/volume.zarr``) is created here with the frame of the first section
(section 0): shape ``(n_sections, H, W)`` where ``H, W`` is that section's montage extent
from its nominal tile positions (``frame_shape_yx`` overrides it, e.g. to match a synthetic
truth volume), voxel size from ``voxel_size_nm``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np

from connectome.blockwise import Block, BlockGrid, Task
from connectome.blockwise.markers import atomic_write_text
from connectome.config import config_to_dict
from connectome.errors import UserInputError
from connectome.montage.manifest import Manifest, TileRecord, TileSpec, check_tiles, read_manifest, read_tile
from connectome.montage.stitch_report import write_tables  # noqa: F401 (used by the CLI)
from connectome.montage.store import (  # noqa: F401
    _open_montages,
    is_driver_process,
    montages_path,
    open_montages,
    section_result_path,
)
from connectome.stages.intensity import IntensityMap

log = logging.getLogger(__name__)

STAGE = "stitch"


@dataclass(frozen=True)
class StitchConfig:
    #: voxel size (z, y, x) in nm of the workspace created here
    voxel_size_nm: tuple[float, float, float] = (40.0, 8.0, 8.0)
    #: leave out (and report) missing, unreadable or odd-sized tiles instead of stopping
    skip_bad_tiles: bool = False
    #: accept tile paths outside the manifest's folder (absolute, or leading out with "..")
    allow_absolute_paths: bool = False
    #: (y, x) size of the aligned frame; None = the first section's nominal montage extent
    frame_shape_yx: Optional[tuple[int, int]] = None
    #: plausible stage jitter of one tile (+/- px). The search covers it on both tiles
    #: (``max_shift_px``), it is the width of the prior that breaks near-ties between peaks,
    #: and a weak match on no loop must lie within it of the nominal offset
    stage_jitter_px: float = 15.0
    #: search range (+/- px) around the nominal offset of two neighbours; None = 2 * stage_jitter_px + 2
    max_shift_px: Optional[int] = None
    #: an offset is scored only if it leaves an overlap at least this wide (px) along both axes
    min_overlap_px: int = 6
    #: the old name of min_overlap_px (used when set)
    min_template_px: Optional[int] = None
    #: neighbours count only if their nominal overlap spans this fraction of the tile edge
    min_overlap_fraction: float = 0.5
    #: Gaussian smoothing (noise) and optional high-pass (shading) before matching, px
    smooth_sigma_px: float = 1.0
    highpass_sigma_px: float = 0.0
    #: evidence of a pair (see the module docstring): significance z of its NCC peak below
    #: min_z or NCC below min_ncc = no match; z >= strong_z = strong (trusted alone); between = weak
    min_z: float = 2.0
    strong_z: float = 8.0
    min_ncc: float = 0.2
    #: a peak with a ratio to the second peak below min_peak_ratio or a sharpness below
    #: min_sharpness is *ambiguous*: still used, but the first suspect when a loop does not close
    min_peak_ratio: float = 1.1
    min_sharpness: float = 0.02
    #: pairs whose residual after the solve exceeds this are dropped (worst first), px
    max_residual_px: float = 3.0
    #: equalise tile gains from the overlaps
    gain_correction: bool = True
    #: width of the linear seam ramp, px; None = the median nominal overlap
    feather_px: Optional[float] = None
    #: spline order used to place tiles at subpixel positions (0..5)
    interpolation_order: int = 3
    #: free canvas around the nominal extents of all sections, px
    margin_px: int = 64
    #: chunk (y, x) of the montage arrays
    chunk_yx: tuple[int, int] = (512, 512)
    #: a section that raises is retried this many times
    max_retries: int = 2

    def __post_init__(self):
        if any(not v > 0 for v in self.voxel_size_nm):
            raise ValueError(f"voxel_size_nm must be positive, got {list(self.voxel_size_nm)}")
        if self.frame_shape_yx is not None and any(v <= 0 for v in self.frame_shape_yx):
            raise ValueError(f"frame_shape_yx must be positive, got {list(self.frame_shape_yx)}")
        if (
            (self.max_shift_px is not None and self.max_shift_px < 1)
            or self.min_overlap_px < 3
            or (self.min_template_px is not None and self.min_template_px < 3)
        ):
            raise ValueError("max_shift_px must be >= 1 and min_overlap_px (min_template_px) >= 3")
        if not self.stage_jitter_px >= 0 or not 0 <= self.min_z <= self.strong_z:
            raise ValueError("stage_jitter_px must be >= 0 and 0 <= min_z <= strong_z")

    @property
    def search_px(self) -> int:
        """The +/- search range around the nominal offset of two neighbours."""
        if self.max_shift_px is not None:
            return int(self.max_shift_px)
        return int(math.ceil(2 * self.stage_jitter_px)) + 2

    @property
    def overlap_min_px(self) -> int:
        return int(self.min_template_px if self.min_template_px is not None else self.min_overlap_px)
        if not 0 < self.min_overlap_fraction <= 1:
            raise ValueError(f"min_overlap_fraction must be in (0, 1], got {self.min_overlap_fraction}")
        if not 0 <= self.interpolation_order <= 5:
            raise ValueError(f"interpolation_order must be 0..5, got {self.interpolation_order}")
        if self.margin_px < 0 or any(c <= 0 for c in self.chunk_yx) or self.max_retries < 0:
            raise ValueError("margin_px >= 0, chunk_yx > 0 and max_retries >= 0 are required")


Config = StitchConfig


@dataclass(frozen=True)
class Layout:
    """Geometry decided at plan time from the manifest (nominal positions only)."""

    first_section: int
    n_sections: int
    reference_section: int
    tile_hw: tuple[int, int]
    canvas_hw: tuple[int, int]
    offset_yx: tuple[int, int]
    frame_yx: tuple[int, int]
    feather_px: float

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _section_origin(tiles: tuple[TileRecord, ...]) -> tuple[float, float] | None:
    """Nominal (y, x) of tile (0, 0) if listed, else None."""
    for t in tiles:
        if t.row == 0 and t.col == 0:
            return (t.y, t.x)
    return None


def _reference(tiles: tuple[TileRecord, ...]) -> TileRecord:
    return min(tiles, key=lambda t: (t.row, t.col))


def _nominal_rel(tiles, all_tiles) -> np.ndarray:
    """Nominal (y, x) of ``tiles`` relative to the section's origin (see :mod:`.solve`)."""
    origin = _section_origin(all_tiles) or (_reference(tiles).y, _reference(tiles).x)
    return np.array([(t.y - origin[0], t.x - origin[1]) for t in tiles], dtype=np.float64).reshape(-1, 2)


def neighbour_pairs(nominal_yx: np.ndarray, tile_hw, min_overlap_fraction: float) -> list[tuple[int, int]]:
    """Index pairs (a, b), a < b, of tiles whose nominal rectangles overlap along a side."""
    h, w = tile_hw
    out = []
    for a in range(len(nominal_yx)):
        for b in range(a + 1, len(nominal_yx)):
            dy, dx = np.abs(nominal_yx[b] - nominal_yx[a])
            oy, ox = h - dy, w - dx
            if oy <= 0 or ox <= 0:
                continue
            if max(oy / h, ox / w) >= min_overlap_fraction:
                out.append((a, b))
    return out


def _layout(manifest: Manifest, full: Manifest, spec: TileSpec, cfg: StitchConfig) -> Layout:
    sections = manifest.sections()
    first, last = min(full.sections()), max(full.sections())
    h, w = spec.shape_hw
    lo = np.array([np.inf, np.inf])
    hi = np.array([-np.inf, -np.inf])
    overlaps = []
    ref_section = sections[0]
    frame: tuple[int, int] | None = None
    for s in sections:
        tiles = manifest.section_tiles(s)
        rel = _nominal_rel(tiles, full.section_tiles(s))
        lo = np.minimum(lo, rel.min(axis=0))
        hi = np.maximum(hi, rel.max(axis=0) + (h, w))
        for a, b in neighbour_pairs(rel, (h, w), cfg.min_overlap_fraction):
            d = np.abs(rel[b] - rel[a])
            overlaps.append(min(h - d[0], w - d[1]))
        if s == ref_section:
            ext = rel.max(axis=0) + (h, w)
            frame = (int(math.ceil(ext[0] - 1e-9)), int(math.ceil(ext[1] - 1e-9)))
    if cfg.frame_shape_yx is not None:
        frame = cast("tuple[int, int]", tuple(int(v) for v in cfg.frame_shape_yx))
    offset = (int(math.ceil(cfg.margin_px - min(lo[0], 0))), int(math.ceil(cfg.margin_px - min(lo[1], 0))))
    canvas = (int(math.ceil(hi[0])) + offset[0] + cfg.margin_px, int(math.ceil(hi[1])) + offset[1] + cfg.margin_px)
    feather = cfg.feather_px if cfg.feather_px is not None else (float(np.median(overlaps)) if overlaps else 1.0)
    assert frame is not None  # set by the reference section
    return Layout(first, last - first + 1, ref_section, (h, w), canvas, offset, frame, max(1.0, feather))


def _intensity(manifest: Manifest, spec: TileSpec) -> IntensityMap:
    """uint8 tiles are used as they are; uint16 tiles map the 0.1..99.9th percentiles of up to
    16 evenly spaced tiles linearly to 0..255 (the rule of ``connectome import``)."""
    if spec.dtype == "uint8":
        return IntensityMap("copy")
    idx = np.unique(np.linspace(0, len(manifest.tiles) - 1, min(16, len(manifest.tiles))).round().astype(int))
    sample = []
    for i in idx:
        try:
            sample.append(read_tile(manifest.tiles[i], spec)[::4, ::4].ravel())
        except ValueError as exc:
            raise UserInputError(str(exc)) from None
    lo, hi = (float(v) for v in np.percentile(np.concatenate(sample), (0.1, 99.9)))
    return IntensityMap("linear", lo, hi if hi > lo else lo + 1.0)


# ---------------------------------------------------------------------------------------------
# one section


@dataclass(frozen=True)
class StitchSection:
    """Block processor: stitch the section of one block."""

    workspace: str
    tiles: tuple[tuple[TileRecord, ...], ...]  # per z index (may be empty: missing section)
    origins: tuple[Optional[tuple[float, float]], ...]  # nominal (y, x) of tile (0, 0) per z, if listed
    spec: TileSpec
    intensity: IntensityMap
    layout: Layout
    config: StitchConfig

    def __call__(self, block: Block) -> None:
        z = block.index_zyx[0]
        with _one_blas_thread():
            result = stitch_section(
                z,
                self.tiles[z],
                self.origins[z],
                self.spec,
                self.intensity,
                self.layout,
                self.config,
                montages_path(self.workspace),
            )
        atomic_write_text(section_result_path(self.workspace, z), json.dumps(result, indent=1))


_BLAS: list[Any] = []  # [threadpoolctl's ThreadpoolController, or None]


def _one_blas_thread():
    """Sections run in parallel already: one BLAS thread per section (the small solves of a
    section are many times slower when BLAS threads contend for the cores)."""
    import contextlib

    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except ImportError:  # optional
            _BLAS.append(None)
    if _BLAS[0] is None:
        return contextlib.nullcontext()
    return _BLAS[0].limit(limits=1, user_api="blas")


def _as_float_tile(img: np.ndarray, intensity: IntensityMap) -> np.ndarray:
    if intensity.rule == "copy":
        return img.astype(np.float32)
    scale = np.float32(255.0 / max(intensity.hi - intensity.lo, 1e-9))
    return np.clip((img.astype(np.float32) - np.float32(intensity.lo)) * scale, 0, 255)


_ARRAYS: dict = {}


def _montage_arrays(montage_store: Path):
    """(montage, coverage) arrays of the store, opened once per process (opening costs a few ms
    per section); reopened when the store was recreated (its metadata files changed)."""
    stamp: list[tuple[int, int, int] | None] = []
    for name in ("zarr.json", "montage/zarr.json", "coverage/zarr.json"):
        try:
            st = (Path(montage_store) / name).stat()
            stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamp.append(None)
    key = (str(Path(montage_store).resolve()), tuple(stamp))
    if key not in _ARRAYS:
        group = _open_montages(montage_store, mode="r+")
        _ARRAYS.clear()
        _ARRAYS[key] = (group["montage"], group["coverage"])
    return _ARRAYS[key]


def stitch_section(
    z: int,
    tiles: tuple[TileRecord, ...],
    origin00,
    spec: TileSpec,
    intensity: IntensityMap,
    layout: Layout,
    cfg: StitchConfig,
    montage_store: Path,
) -> dict:
    """Register, solve, render and store one section; returns its result record."""
    from connectome.montage.pairwise import match_overlap, prefilter
    from connectome.montage.render import estimate_gains, render_montage
    from connectome.montage.solve import PairEq, solve_positions

    section = layout.first_section + z
    arrays = _montage_arrays(montage_store)
    canvas = np.zeros(layout.canvas_hw, dtype=np.uint8)
    covered = np.zeros(layout.canvas_hw, dtype=np.uint8)
    record: dict[str, Any] = {
        "section": section,
        "z": z,
        "status": "missing",
        "tiles": [],
        "pairs": [],
        "bad_tiles": [],
    }
    tiles = tuple(sorted(tiles, key=lambda t: (t.row, t.col)))
    images, kept = [], []
    for t in tiles:
        try:
            images.append(_as_float_tile(read_tile(t, spec), intensity))
            kept.append(t)
        except ValueError as exc:
            if not cfg.skip_bad_tiles:
                raise
            record["bad_tiles"].append({"row": t.row, "col": t.col, "path": t.path, "reason": str(exc)})
    if kept:
        ref = kept.index(_reference(tuple(kept)))
        origin = origin00 if origin00 is not None else (kept[ref].y, kept[ref].x)
        nominal = np.array([(t.y - origin[0], t.x - origin[1]) for t in kept], dtype=np.float64)
        is00 = kept[ref].row == 0 and kept[ref].col == 0
        origin_offset = None if (is00 or origin00 is None) else tuple(-nominal[ref])
        filtered = [prefilter(im, cfg.smooth_sigma_px, cfg.highpass_sigma_px) for im in images]
        pair_idx = neighbour_pairs(nominal, spec.shape_hw, cfg.min_overlap_fraction)
        search, min_ov, jitter = cfg.search_px, cfg.overlap_min_px, float(cfg.stage_jitter_px)
        rows: list[dict[str, Any]]
        eqs: list[PairEq]
        eq_rows: list[int]
        row: dict[str, Any]
        rows, eqs, eq_rows = [], [], []
        for a, b in pair_idx:
            d0 = nominal[b] - nominal[a]
            m = match_overlap(
                filtered[a], filtered[b], (float(d0[0]), float(d0[1])), search, min_ov, prior_sigma_px=max(jitter, 1.0)
            )
            row = {
                "row_a": kept[a].row,
                "col_a": kept[a].col,
                "row_b": kept[b].row,
                "col_b": kept[b].col,
                "nominal_dx": float(d0[1]),
                "nominal_dy": float(d0[0]),
                "search_px": search,
            }
            reasons = []
            if m is None:
                reasons.append(f"no overlap of >= {min_ov} px within +/-{search} px of the nominal offset")
            elif m.note:
                reasons.append(m.note)
            else:
                pk = m.peak
                dev = float(np.hypot(m.offset_yx[0] - d0[0], m.offset_yx[1] - d0[1]))
                row.update(
                    dx=m.offset_yx[1],
                    dy=m.offset_yx[0],
                    ncc=m.ncc,
                    z=m.z,
                    peak_ratio=min(pk.peak_ratio, 99.0),
                    sharpness=pk.sharpness,
                    deviation_px=dev,
                    std_px=float(np.hypot(*m.std_yx)) if np.all(np.isfinite(m.std_yx)) else float("nan"),
                    overlap_px=int(min(m.overlap_hw)),
                    alternatives=len(m.alternatives),
                )
                if pk.at_border:
                    reasons.append(
                        f"peak at the edge of the search (+/-{search} px, overlap >= {min_ov} px): "
                        "the tiles may not overlap there"
                    )
                elif m.z < cfg.min_z or m.ncc < cfg.min_ncc:
                    reasons.append(
                        f"no significant match (z {m.z:.1f}, need >= {cfg.min_z:g}; ncc {m.ncc:.2f})"
                        if m.z < cfg.min_z
                        else f"ncc {m.ncc:.2f} < {cfg.min_ncc:g}"
                    )
            if reasons:
                row["evidence"] = "none"
            else:
                assert m is not None  # else a reason above
                strong = m.z >= cfg.strong_z
                ambiguous = m.peak.peak_ratio < cfg.min_peak_ratio or m.peak.sharpness < cfg.min_sharpness
                row["evidence"] = ("strong" if strong else "weak") + (" ambiguous" if ambiguous else "")
                eq_rows.append(len(rows))
                eqs.append(
                    PairEq(
                        a,
                        b,
                        m.offset_yx,
                        m.std_yx,
                        strong,
                        ambiguous,
                        tuple((c.offset_yx, c.std_yx) for c in m.alternatives),
                        m.z,
                        row["deviation_px"],
                    )
                )
            row["accepted"] = not reasons
            row["reason"] = "; ".join(reasons)
            rows.append(row)
        sol = solve_positions(
            nominal, eqs, ref, cfg.max_residual_px, origin_offset_yx=origin_offset, jitter_px=max(jitter, 1.0)
        )
        assert sol.loop_residual_px is not None and sol.chosen is not None  # solve_positions sets them
        for row in rows:
            row["used"] = False
        for k, r_i in enumerate(eq_rows):
            row = rows[r_i]
            row["used"] = bool(sol.used[k])
            row["residual_px"] = float(sol.residual_px[k])
            row["loop_residual_px"] = float(sol.loop_residual_px[k])
            if sol.chosen[k]:
                alt = eqs[k].alternatives[sol.chosen[k] - 1][0]
                row.update(
                    dx=float(alt[1]),
                    dy=float(alt[0]),
                    deviation_px=float(np.hypot(alt[0] - row["nominal_dy"], alt[1] - row["nominal_dx"])),
                )
                row["reason"] = f"alternative peak {sol.chosen[k]} chosen: it closes the loops"
            if not sol.used[k]:
                row["reason"] = sol.reasons[k]
        used_pairs = [(e.a, e.b) for e, u in zip(eqs, sol.used) if u]
        gains = estimate_gains(images, sol.positions_yx, used_pairs) if cfg.gain_correction else np.ones(len(images))
        # nominal positions in the solved frame, for the table
        nominal_solved = nominal - (nominal[ref] + (np.asarray(origin_offset) if origin_offset else 0.0))
        img, cov, clipped = render_montage(
            images,
            sol.positions_yx,
            gains,
            layout.canvas_hw,
            layout.offset_yx,
            layout.feather_px,
            order=cfg.interpolation_order,
        )
        canvas = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        covered = cov.astype(np.uint8)
        degree = np.zeros(len(kept), dtype=int)
        for a, b in used_pairs:
            degree[a] += 1
            degree[b] += 1
        isolated = []
        for i, t in enumerate(kept):
            placed = "solved" if sol.component[i] == 0 else ("isolated" if degree[i] == 0 else "detached group")
            if placed != "solved" and len(kept) > 1:
                isolated.append(f"r{t.row}c{t.col}")
            record["tiles"].append(
                {
                    "row": t.row,
                    "col": t.col,
                    "x": float(sol.positions_yx[i, 1]),
                    "y": float(sol.positions_yx[i, 0]),
                    "nominal_x": float(nominal_solved[i, 1]),
                    "nominal_y": float(nominal_solved[i, 0]),
                    "gain": float(gains[i]),
                    "group": int(sol.component[i]),
                    "placed": placed if len(kept) > 1 else "single",
                }
            )
        res_used = sol.residual_px[sol.used] if len(eqs) else np.zeros(0)
        record.update(
            status="partial" if isolated else "ok",
            pairs=rows,
            summary={
                "n_tiles": len(kept),
                "n_pairs": len(rows),
                "n_accepted": len(eqs),
                "n_used": int(sol.used.sum()),
                "n_dropped": sol.n_dropped,
                "n_groups": int(sol.component.max()) + 1 if len(kept) else 0,
                "n_at_nominal": len(isolated),
                "isolated": " ".join(isolated),
                "residual_median_px": float(np.median(res_used)) if res_used.size else float("nan"),
                "residual_max_px": float(res_used.max()) if res_used.size else float("nan"),
                "extent_h": int(math.ceil(float((sol.positions_yx[:, 0] + spec.shape_hw[0]).max()))),
                "extent_w": int(math.ceil(float((sol.positions_yx[:, 1] + spec.shape_hw[1]).max()))),
                "clipped_tiles": clipped,
                "coverage": float(cov.mean()),
            },
        )
    if tiles and not kept:
        record["status"] = "empty"
    arrays[0][z] = canvas
    arrays[1][z] = covered
    return json.loads(json.dumps(record, allow_nan=True))


# ---------------------------------------------------------------------------------------------
# the montage store


@dataclass(frozen=True)
class PrepareOutputs:
    """Driver-only setup: the montage store and the workspace (refuses to clobber)."""

    workspace: str
    layout: Layout
    chunk_yx: tuple[int, int]
    voxel_size_nm: tuple[float, float, float]
    attrs_json: str
    bad_tiles_json: str
    restart: bool

    def __call__(self) -> None:
        from connectome.workspace import Workspace

        lay = self.layout
        shape = (lay.n_sections,) + tuple(lay.canvas_hw)
        chunks = (1, min(self.chunk_yx[0], shape[1]), min(self.chunk_yx[1], shape[2]))
        path = montages_path(self.workspace)
        attrs = json.loads(self.attrs_json)
        create = True
        if (path / "zarr.json").is_file():
            group = _open_montages(path, mode="r+")
            old = dict(group.attrs).get("montage")
            # no attribute: a run was killed while creating the store (the attribute is written
            # last, before any section is stitched into it), so it holds nothing: create it anew
            if old is not None:
                same = (
                    old.get("fingerprint") == attrs["fingerprint"]
                    and "montage" in group
                    and tuple(group["montage"].shape) == shape
                    and tuple(group["montage"].chunks) == chunks
                )
                if not same and not self.restart:
                    raise UserInputError(
                        f"{path}: was stitched from another manifest or config; rerun with --restart to replace it"
                    )
                create = not same
        Workspace.create(self.workspace, (lay.n_sections,) + tuple(lay.frame_yx), self.voxel_size_nm)
        atomic_write_text(Path(self.workspace) / "stitch" / "plan_bad_tiles.json", self.bad_tiles_json)
        if not create:
            return
        import shutil

        # a new store holds no section, so no done-marker may claim one (markers left by a run
        # whose store is being replaced, e.g. a --restart run killed after this point)
        shutil.rmtree(Path(self.workspace) / "blockwise" / STAGE / "done", ignore_errors=True)
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        group = _open_montages(path, mode="w")
        from zarr.codecs import ZstdCodec

        for name in ("montage", "coverage"):
            # zstd level 1: about as small as the default level for these images, and faster
            group.create_array(
                name, shape=shape, chunks=chunks, dtype="uint8", fill_value=0, compressors=ZstdCodec(level=1)
            )
        group.attrs["montage"] = attrs


def _digest(path: str) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def plan(
    manifest_path: str | Path, workspace: str | Path, config: StitchConfig = StitchConfig(), restart: bool = False
) -> Task:
    """Validate the manifest and every tile header; nothing is written until the task runs."""
    ws = Path(workspace)
    if ws.exists() and not ws.is_dir():
        raise UserInputError(f"workspace {ws}: exists and is not a directory")
    full = read_manifest(manifest_path, allow_outside=config.allow_absolute_paths)
    manifest, spec, bad = check_tiles(full, skip_bad_tiles=config.skip_bad_tiles)
    layout = _layout(manifest, full, spec, config)
    _check_sizes(layout, ws, config)
    intensity = _intensity(manifest, spec)
    from connectome.workspace import Frame, Workspace

    if Workspace.exists(ws):
        shape_zyx = cast("tuple[int, int, int]", (layout.n_sections,) + tuple(layout.frame_yx))
        voxel_nm = cast("tuple[float, float, float]", tuple(float(v) for v in config.voxel_size_nm))
        Workspace.open(ws).check_frame(Frame(shape_zyx, voxel_nm))
    per_z: list[tuple[TileRecord, ...]] = [tuple() for _ in range(layout.n_sections)]
    origins: list[tuple[float, float] | None] = [None] * layout.n_sections
    for s in full.sections():
        z = s - layout.first_section
        per_z[z] = manifest.section_tiles(s)
        origins[z] = _section_origin(full.section_tiles(s))
    fingerprint = {
        "manifest": {
            "path": str(Path(manifest_path).resolve()),
            "sha1": _digest(str(manifest_path)),
            "n_tiles": len(full.tiles),
            "bad_tiles": [b.message() for b in bad],
        },
        "tile_spec": {"shape_hw": list(spec.shape_hw), "dtype": spec.dtype},
        "intensity": intensity.to_json(),
        "layout": layout.to_json(),
        "config": config_to_dict(config),
    }
    attrs = {
        "fingerprint": fingerprint,
        "offset_yx": list(layout.offset_yx),
        "frame_yx": list(layout.frame_yx),
        "first_section": layout.first_section,
        "reference_section": layout.reference_section,
        "tile_shape_hw": list(spec.shape_hw),
        "sections_with_tiles": manifest.sections(),
        "convention": "montage[z, i, j] = point (y, x) = (i - offset_y, j - offset_x) of section "
        "first_section + z's montage frame (origin = top-left of its tile (0, 0))",
    }
    proc = StitchSection(str(ws), tuple(per_z), tuple(origins), spec, intensity, layout, config)
    grid = BlockGrid((layout.n_sections, 1, 1), (1, 1, 1))
    bad_json = json.dumps(
        [
            {"section": b.tile.section, "row": b.tile.row, "col": b.tile.col, "path": b.tile.path, "reason": b.reason}
            for b in bad
        ]
    )
    setup = PrepareOutputs(
        str(ws),
        layout,
        cast("tuple[int, int]", tuple(config.chunk_yx)),
        cast("tuple[float, float, float]", tuple(config.voxel_size_nm)),
        json.dumps(attrs),
        bad_json,
        restart,
    )
    return Task(
        STAGE,
        ws,
        grid,
        proc,
        fingerprint,
        (),
        max_retries=config.max_retries,
        setup=setup,
        bytes_per_voxel=0.0,
        worker_memory_bytes=_section_bytes(layout),
    )


#: bytes per canvas pixel while one section is stitched (float32 accumulators, weights, masks)
_STITCH_BYTES_PER_PX = 24
#: the aligned volume's render blocks (``AlignConfig`` default, 8 x 256 x 256) are counted up front
_RENDER_BLOCK_ZYX = (8, 256, 256)


def _section_bytes(layout: Layout) -> int:
    from connectome.resources import PLAIN_WORKER_BYTES

    return PLAIN_WORKER_BYTES + _STITCH_BYTES_PER_PX * int(layout.canvas_hw[0]) * int(layout.canvas_hw[1])


def _check_sizes(layout: Layout, ws: Path, config: StitchConfig) -> None:
    """Refuse (exit 2, with the estimate) a frame that the aligned volume could not hold: more render
    blocks than the runner accepts, or more bytes than the workspace's disk has free."""
    from connectome.resources import MAX_BLOCKS, check_disk

    option = "--frame-shape / frame_shape_yx" if config.frame_shape_yx is not None else "stitch"
    n, (fy, fx) = layout.n_sections, layout.frame_yx
    blocks = math.prod(-(-s // b) for s, b in zip((n, fy, fx), _RENDER_BLOCK_ZYX))
    if blocks > MAX_BLOCKS:
        raise UserInputError(
            f"{option}: a frame of {fy} x {fx} px over {n} sections makes an aligned volume of "
            f"{n * fy * fx:,} voxels ({blocks:,} render blocks of {list(_RENDER_BLOCK_ZYX)}, "
            f"limit {MAX_BLOCKS:,}); the tiles span {layout.canvas_hw[0]} x {layout.canvas_hw[1]} px"
        )
    check_disk(ws, n * fy * fx, f"the aligned volume ({n} x {fy} x {fx} uint8)", option)


def parse_yx(text: str, what: str) -> list[int]:
    """``"Y,X"`` -> [y, x] positive ints, with a one-line error naming ``what``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserInputError(f"{what}: expected two comma-separated integers Y,X, got {text!r}") from None
    if len(values) != 2 or any(v <= 0 for v in values):
        raise UserInputError(f"{what}: expected two positive integers Y,X, got {text!r}")
    return values
