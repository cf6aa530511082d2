"""Acquisition: sections drift and warp, then each is imaged as a grid of overlapping tiles.

Frames (pixel index coordinates, pixel centres at integers, axis order (y, x))::

    aligned frame   the truth arrays; section 0's montage frame; origin = top-left of
                    section 0's tile (row 0, col 0)
    montage frame   one per section: stage coordinates in pixels; nominal and true tile
                    positions (manifest.csv, truth/tiles.csv) are given in it

    section s:  m = F_s(p) = A_s @ p + t_s + e_s(p)        p aligned, m montage (y, x)

* ``A_s, t_s`` (``sections.json: transform.affine = [[A00, A01, t0], [A10, A11, t1]]``): the
  accumulated drift of serial sectioning and stage placement: a small rotation (bounded by
  ``drift_rotation_deg``), anisotropic scale/shear (compression of the cut, ``drift_scale``),
  and translation (``drift_translation_px``), each a mean-reverting random walk over sections,
  so neighbouring sections differ little (Saalfeld et al. 2012, Nat Methods 9:717).
* ``e_s`` (``transform.elastic``): a smooth warp from section handling: displacements (dy, dx)
  at the nodes of a coarse grid (``origin_yx``, ``spacing_px``), sigma ``elastic_amplitude_px``,
  interpolated with a cubic B-spline exactly as
  ``scipy.ndimage.map_coordinates(grid, [(y - oy) / S, (x - ox) / S], order=3, mode="nearest")``
  (see :meth:`SectionTransform.forward`).
* Section 0: ``A = I, t = 0``, no warp. So stitching and aligning with perfect transforms
  gives back ``truth.zarr/raw``; pixels of section 0 tiles equal ``raw`` up to the tile gain.

Tiles: ``rows x cols`` tiles of ``tile_px`` with step ``step_px`` (overlap 8-15%). Nominal
positions are ``stage_origin + (row * step, col * step)``; true positions add stage jitter
(a few px, integer; row 0 / col 0 only move outwards so the grid keeps covering the frame;
section 0 tile (0, 0) is exact; a tile that would overlap its upper or left neighbour by less
than ``min_tile_overlap_px`` is "re-imaged" with its jitter towards the gap cut back, so large
jitter on small overlaps leaves no holes). Each section's stage origin is placed so that its tiles cover
the whole drifted truth frame; section 0's is (0, 0). Each tile has its own detector gain and
offset (``truth/tiles.csv``: ``v_tile = round(gain * v + offset)``).
With ``tile_vignetting`` > 0 every tile is also darkened towards its corners before the gain
and offset: ``v_tile = round(gain * v * (1 - vignetting * (r / r_corner)^2) + offset)``.

Rendering: tile pixels are sampled from the aligned world image (which extends past the truth
frame by margins computed here, so no drifted edge is ever empty) at ``F_s^-1(m)``: the inverse
is solved by fixed-point iteration on a 16 px grid and interpolated bilinearly (error < 0.02 px
for these smooth warps); the image is resampled with a cubic spline. Damaged sections carry a
fold: a dark band of ``width_px`` across the section along a line (``point_yx``, unit
``normal_yx``); beyond the band the tissue is shifted by the width (a strip is hidden in the
fold). Missing sections have no tiles at all. The truth arrays are never damaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from scipy import ndimage as ndi

from connectome.synth.fields import rng
from connectome.synth.presets import MIN_TILE_PX

INTERPOLATION = "scipy.ndimage.map_coordinates(grid, [(y - oy) / S, (x - ox) / S], order=3, mode='nearest')"
_COARSE = 16


@dataclass
class SectionTransform:
    A: np.ndarray  # (2, 2)
    t: np.ndarray  # (2,)
    elastic_origin_yx: tuple[float, float] | None = None
    elastic_spacing_px: float | None = None
    elastic_dy: np.ndarray | None = None
    elastic_dx: np.ndarray | None = None

    @classmethod
    def identity(cls) -> "SectionTransform":
        return cls(np.eye(2), np.zeros(2))

    def elastic(self, p: np.ndarray) -> np.ndarray:
        if self.elastic_dy is None:
            return np.zeros_like(p)
        # the elastic fields are set together (or not at all)
        assert self.elastic_origin_yx is not None and self.elastic_spacing_px is not None
        c = [
            (p[:, 0] - self.elastic_origin_yx[0]) / self.elastic_spacing_px,
            (p[:, 1] - self.elastic_origin_yx[1]) / self.elastic_spacing_px,
        ]
        return np.stack(
            [
                ndi.map_coordinates(self.elastic_dy, c, order=3, mode="nearest"),
                ndi.map_coordinates(self.elastic_dx, c, order=3, mode="nearest"),
            ],
            axis=1,
        )

    def forward(self, p) -> np.ndarray:
        """Aligned (n, 2) (y, x) -> montage."""
        p = np.atleast_2d(np.asarray(p, float))
        return p @ self.A.T + self.t + self.elastic(p)

    def inverse(self, m, iterations: int = 8) -> np.ndarray:
        """Montage (n, 2) -> aligned, by fixed-point iteration."""
        m = np.atleast_2d(np.asarray(m, float))
        Ainv = np.linalg.inv(self.A)
        base = (m - self.t) @ Ainv.T
        p = base
        if self.elastic_dy is not None:
            for _ in range(iterations):
                p = base - self.elastic(p) @ Ainv.T
        return p

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "affine": [
                [float(self.A[0, 0]), float(self.A[0, 1]), float(self.t[0])],
                [float(self.A[1, 0]), float(self.A[1, 1]), float(self.t[1])],
            ],
            "elastic": None,
        }
        if self.elastic_dy is not None:
            assert (
                self.elastic_origin_yx is not None
                and self.elastic_spacing_px is not None
                and self.elastic_dx is not None
            )  # set together with elastic_dy
            d["elastic"] = {
                "origin_yx": [float(v) for v in self.elastic_origin_yx],
                "spacing_px": float(self.elastic_spacing_px),
                "dy": np.round(self.elastic_dy, 4).tolist(),
                "dx": np.round(self.elastic_dx, 4).tolist(),
                "interpolation": INTERPOLATION,
            }
        return d


@dataclass(frozen=True)
class TileGrid:
    tile_px: int
    step_px: int
    rows: int
    cols: int
    jitter_px: int
    #: radial falloff of every tile (see :func:`vignetting_profile`); 0 = none
    vignetting: float = 0.0

    @property
    def overlap(self) -> float:
        return (self.tile_px - self.step_px) / self.tile_px


@dataclass
class Tile:
    row: int
    col: int
    nominal_yx: tuple[int, int]
    true_yx: tuple[int, int]
    gain: float
    offset: float


@dataclass
class Section:
    index: int
    transform: SectionTransform
    stage_origin_yx: tuple[int, int]
    tiles: list[Tile] = field(default_factory=list)
    missing: bool = False
    fold: dict | None = None

    def region(self, grid: TileGrid) -> tuple[int, int, int, int]:
        """Montage rectangle (y0, y1, x0, x1) covered by this section's true tiles."""
        ys = [t.true_yx[0] for t in self.tiles]
        xs = [t.true_yx[1] for t in self.tiles]
        return min(ys), max(ys) + grid.tile_px, min(xs), max(xs) + grid.tile_px


@dataclass
class AcquisitionPlan:
    grid: TileGrid
    sections: list[Section]
    margin_lo_yx: tuple[int, int]  # world margin before the truth frame (px)
    margin_hi_yx: tuple[int, int]  # and after it
    drift_bound_px: float


def _frame_samples(h: int, w: int) -> np.ndarray:
    ys = np.unique(np.r_[np.linspace(0, h - 1, 17), 0, h - 1])
    xs = np.unique(np.r_[np.linspace(0, w - 1, 17), 0, w - 1])
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)


def _design_grid(extent_y: int, extent_x: int, cfg) -> TileGrid:
    f, t0, jit = cfg.tile_overlap, cfg.tile_size_px, cfg.jitter_px
    sizes = []
    for e in (extent_y, extent_x):
        n = 1 if e <= t0 else int(np.ceil((e - t0) / (t0 * (1 - f)))) + 1
        sizes.append(int(np.ceil(e / (1 + (n - 1) * (1 - f)))))
    tile = max(MIN_TILE_PX, max(sizes))
    step = int(round(tile * (1 - f)))
    rows, cols = (max(1, int(np.ceil((e - tile) / step)) + 1) for e in (extent_y, extent_x))
    vig = float(getattr(cfg, "tile_vignetting", 0.0) or 0.0)
    if not 0.0 <= vig < 1.0:
        from connectome.errors import UserInputError

        raise UserInputError(f"synth: tile_vignetting must be in [0, 1), got {vig!r}")
    return TileGrid(tile, step, rows, cols, jit, vig)


def _drift(cfg, seed: int, n: int) -> list[SectionTransform]:
    r = rng(seed, "drift")
    h, w = cfg.shape_zyx[1:]
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    th_max, t_max, s_max = np.deg2rad(cfg.drift_rotation_deg), cfg.drift_translation_px, cfg.drift_scale
    th, t, s = 0.0, np.zeros(2), np.zeros(3)
    out = [SectionTransform.identity()]
    S = float(cfg.elastic_spacing_px)
    for _ in range(1, n):
        th = float(np.clip(0.9 * th + r.normal(0, 0.35 * th_max), -th_max, th_max))
        t = np.clip(0.93 * t + r.normal(0, 0.3 * t_max, 2), -t_max, t_max)
        s = np.clip(0.9 * s + r.normal(0, 0.4 * s_max, 3), -s_max, s_max)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        A = R @ np.array([[1 + s[0], s[2]], [0.0, 1 + s[1]]])
        tr = c - A @ c + t
        ny, nx = int(np.ceil((h + 2 * S) / S)) + 1, int(np.ceil((w + 2 * S) / S)) + 1
        amp = cfg.elastic_amplitude_px
        if amp > 0:
            dy, dx = r.normal(0, amp, (ny, nx)), r.normal(0, amp, (ny, nx))
            out.append(SectionTransform(A, tr, (-S, -S), S, dy, dx))
        else:
            out.append(SectionTransform(A, tr))
    return out


def _keep_overlap(j: np.ndarray, nom, row: int, col: int, placed: list, grid: TileGrid, min_px: int) -> None:
    """Cut back the jitter ``j`` (in place) of tile (row, col) so that it overlaps its upper and
    left neighbours (already in ``placed``, row-major) by at least ``min_px`` (0 = no check)."""
    if min_px <= 0:
        return
    for axis, (dr, dc) in ((0, (-1, 0)), (1, (0, -1))):
        if (row, col)[axis] == 0:
            continue
        nb = placed[(row + dr) * grid.cols + (col + dc)]
        limit = nb.true_yx[axis] + grid.tile_px - min_px - nom[axis]
        j[axis] = min(int(j[axis]), int(limit))


def plan_acquisition(cfg, seed: int) -> AcquisitionPlan:
    """Transforms, tile grid, stage origins, jitter, gains, damage: everything but pixels."""
    nz, h, w = cfg.shape_zyx
    transforms = _drift(cfg, seed, nz)
    samples = _frame_samples(h, w)
    mapped = [tr.forward(samples) for tr in transforms]
    bound = max(float(np.max(np.abs(m - samples))) for m in mapped)
    jit = cfg.jitter_px
    pad = int(np.ceil(2 * bound)) + jit + 2
    grid = _design_grid(h + pad, w + pad, cfg)

    r = rng(seed, "tiles")
    special = r.permutation(np.arange(1, nz))[: cfg.missing_sections + cfg.damaged_sections]
    missing = set(int(s) for s in special[: cfg.missing_sections])
    damaged = set(int(s) for s in special[cfg.missing_sections :])
    sections = []
    for z, (tr, m) in enumerate(zip(transforms, mapped)):
        origin = (0, 0) if z == 0 else (int(np.floor(m[:, 0].min())), int(np.floor(m[:, 1].min())))
        sec = Section(z, tr, origin, missing=z in missing)
        for row in range(grid.rows):
            for col in range(grid.cols):
                nom = (origin[0] + row * grid.step_px, origin[1] + col * grid.step_px)
                j = np.clip(np.rint(r.normal(0, jit / 2.0, 2)), -jit, jit).astype(int)
                if row == 0:
                    j[0] = -abs(j[0])
                if col == 0:
                    j[1] = -abs(j[1])
                if z == 0 and row == 0 and col == 0:
                    j[:] = 0
                _keep_overlap(j, nom, row, col, sec.tiles, grid, int(getattr(cfg, "min_tile_overlap_px", 0) or 0))
                gain = float(np.exp(r.normal(0, cfg.tile_gain_sigma)))
                off = float(r.normal(0, cfg.tile_offset_sigma))
                sec.tiles.append(Tile(row, col, nom, (nom[0] + int(j[0]), nom[1] + int(j[1])), gain, off))
        if z in damaged:
            y0, y1, x0, x1 = sec.region(grid)
            ang = r.uniform(0, np.pi)
            sec.fold = {
                "type": "fold",
                "point_yx": [
                    float(r.uniform(y0 + 0.3 * (y1 - y0), y0 + 0.7 * (y1 - y0))),
                    float(r.uniform(x0 + 0.3 * (x1 - x0), x0 + 0.7 * (x1 - x0))),
                ],
                "normal_yx": [float(np.cos(ang)), float(np.sin(ang))],
                "width_px": float(r.uniform(6, 14)),
            }
        sections.append(sec)

    lo, hi = np.zeros(2), np.zeros(2)
    for sec in sections:
        y0, y1, x0, x1 = sec.region(grid)
        edge = np.concatenate(
            [
                np.stack(
                    np.meshgrid(np.r_[np.arange(y0, y1, _COARSE), y1 - 1], [x0, x1 - 1], indexing="ij"), -1
                ).reshape(-1, 2),
                np.stack(
                    np.meshgrid([y0, y1 - 1], np.r_[np.arange(x0, x1, _COARSE), x1 - 1], indexing="ij"), -1
                ).reshape(-1, 2),
            ]
        ).astype(float)
        p = sec.transform.inverse(edge)
        extra = (
            0.0 if sec.fold is None else sec.fold["width_px"] * float(np.abs(np.linalg.inv(sec.transform.A)).max()) * 2
        )
        lo = np.maximum(lo, -p.min(axis=0) + extra)
        hi = np.maximum(hi, p.max(axis=0) - (np.array([h, w]) - 1) + extra)
    margin_lo = cast("tuple[int, int]", tuple(int(np.ceil(v)) + 4 for v in lo))
    margin_hi = cast("tuple[int, int]", tuple(int(np.ceil(v)) + 4 for v in hi))
    return AcquisitionPlan(grid, sections, margin_lo, margin_hi, bound)


def _upsample(coarse: np.ndarray, n: int, size: int, axis: int) -> np.ndarray:
    """Linear interpolation from nodes every ``n`` px to ``size`` px along ``axis``."""
    pos = np.arange(size) / n
    i = np.minimum(pos.astype(int), coarse.shape[axis] - 2)
    f = (pos - i).astype(np.float32)
    a, b = np.take(coarse, i, axis=axis), np.take(coarse, i + 1, axis=axis)
    shape = [1, 1]
    shape[axis] = size
    return a + (b - a) * f.reshape(shape)


def source_coordinates(sec: Section, y0: int, y1: int, x0: int, x1: int):
    """Aligned (y, x) coordinates of every montage pixel of [y0, y1) x [x0, x1)."""
    ys = np.arange(y0, y1 + _COARSE, _COARSE, dtype=float)
    xs = np.arange(x0, x1 + _COARSE, _COARSE, dtype=float)
    m = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    p = sec.transform.inverse(m).reshape(len(ys), len(xs), 2).astype(np.float32)
    out = []
    for k in range(2):
        c = _upsample(p[..., k], _COARSE, y1 - y0, 0)
        out.append(_upsample(c, _COARSE, x1 - x0, 1))
    return out


def render_montage(sec: Section, grid: TileGrid, world: np.ndarray, world_origin_yx) -> tuple[np.ndarray, tuple]:
    """The section's montage image (float32, 0..255) over its tile region and the region origin."""
    y0, y1, x0, x1 = sec.region(grid)
    oy, ox = world_origin_yx
    if sec.index == 0 and sec.fold is None:
        return world[y0 - oy : y1 - oy, x0 - ox : x1 - ox].astype(np.float32), (y0, x0)
    py, px = source_coordinates(sec, y0, y1, x0, x1)
    band = None
    if sec.fold is not None:
        n = np.asarray(sec.fold["normal_yx"])
        wd = sec.fold["width_px"]
        mm = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        delta = (mm[0] - sec.fold["point_yx"][0]) * n[0] + (mm[1] - sec.fold["point_yx"][1]) * n[1]
        shift = np.linalg.inv(sec.transform.A) @ (n * wd)
        beyond = delta >= wd
        py = np.where(beyond, py + shift[0], py)
        px = np.where(beyond, px + shift[1], px)
        band = (delta >= 0) & (delta < wd)
    vals = ndi.map_coordinates(world.astype(np.float32), [py - oy, px - ox], order=3, mode="nearest")
    if band is not None:
        vals = np.where(band, 0.35 * vals + 12.0, vals)
    return np.clip(vals, 0, 255).astype(np.float32), (y0, x0)


def vignetting_profile(tile_px: int, strength: float) -> np.ndarray:
    """The multiplicative falloff ``1 - strength * (r / r_corner)^2`` of a square tile, r the
    distance of a pixel centre from the tile centre, r_corner that of the corner pixels."""
    c = (tile_px - 1) / 2.0
    yy, xx = np.mgrid[:tile_px, :tile_px].astype(np.float64)
    r2 = ((yy - c) ** 2 + (xx - c) ** 2) / max(2 * c * c, 1e-9)
    return (1.0 - strength * r2).astype(np.float32)


def cut_tiles(sec: Section, grid: TileGrid, montage: np.ndarray, origin_yx):
    """Yield (tile, uint8 image) for every tile of the section (vignetted when
    ``grid.vignetting`` > 0, before the tile's gain and offset)."""
    vig = vignetting_profile(grid.tile_px, grid.vignetting) if grid.vignetting else None
    for t in sec.tiles:
        y, x = t.true_yx[0] - origin_yx[0], t.true_yx[1] - origin_yx[1]
        v = montage[y : y + grid.tile_px, x : x + grid.tile_px]
        if vig is not None:
            v = v * vig
        yield t, np.clip(np.rint(t.gain * v + t.offset), 0, 255).astype(np.uint8)


def overlap_range(plan: AcquisitionPlan) -> tuple[float, float]:
    """Smallest and largest true overlap (fraction of the tile edge) between neighbours."""
    g, vals = plan.grid, []
    for sec in plan.sections:
        pos = {(t.row, t.col): t.true_yx for t in sec.tiles}
        for (r, c), (y, x) in pos.items():
            if (r, c + 1) in pos:
                vals.append((g.tile_px - (pos[(r, c + 1)][1] - x)) / g.tile_px)
            if (r + 1, c) in pos:
                vals.append((g.tile_px - (pos[(r + 1, c)][0] - y)) / g.tile_px)
    return (min(vals), max(vals)) if vals else (0.0, 0.0)
