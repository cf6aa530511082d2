"""Tiled 2D U-Net inference on a global tile grid, and per-section post-processing.

Tiling (why blockwise output equals whole-volume output)
--------------------------------------------------------
Sections are downsampled by an integer ``factor`` f (area mean, :mod:`unet.data`). In model
pixels, tile ``j`` along an axis covers ``[j*S - P, j*S - P + T)`` where ``T`` is the tile size,
``P`` the margin and ``S = T - 2P`` the *core*; only the core ``[j*S, (j+1)*S)`` is kept (the
margins, which see the zero padding of "same" convolutions, are cropped: halo-crop, no seams
between tiles as long as ``P`` covers the effective receptive field)::

      tile j (T)                       raw pixels of core j: [j*S*f, (j+1)*S*f)
    +---+-----------------+---+
    | P |   core  S       | P |      the grid starts at the volume origin and never moves,
    +---+-----------------+---+      so a block computes exactly the tiles whose cores meet
            +---+-----------------+---+     its write box, with identical inputs
            | P |   core j+1      | P |

The core's probability is upsampled to raw pixels bilinearly *inside its tile* (raw pixel r
sits at model coordinate ``(r + 0.5) / f - 0.5``; its neighbours are within the margin), so
every raw pixel's value is a function of its one tile only: any block layout gives the same
bits. Reads beyond the volume are mirrored (``unet.data.reflect_index``), in z too (the
``z_context`` sections around each section).

Post-processing (per section, 2D; consistent across block borders)
------------------------------------------------------------------
``mask = prob >= threshold``; then, with ``L`` = ``max_extent_um`` in pixels (the halo):

* holes: background components (4-connected) not connected to the outside of the volume
  and whose bounding box is at most ``L`` in y and x are filled;
* specks: foreground components (8-connected, after filling) with area < ``min_area_um2``
  and bounding box at most ``L`` are removed. Larger components are always kept.

A component that meets a block's write box and spans at most ``L`` lies entirely inside the
write box grown by ``L``; one that spans more reaches that halo's border and is left alone in
both views. So a block with an ``L`` halo decides exactly as the whole volume does.
Optionally ``z_smooth`` (odd) averages the probability over that many sections first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from unet.data import IntensityStats, downsample_mean, reflect_index, take_reflected

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# tile geometry


@dataclass(frozen=True)
class TileGeometry:
    factor: int  # raw pixels per model pixel (y, x)
    tile: int  # T, model pixels
    margin: int  # P, model pixels cropped on each side
    z_context: int  # sections stacked as channels (odd)

    def __post_init__(self):
        if self.factor < 1 or self.margin < 1 or self.core < 1:
            raise ValueError(f"need factor >= 1, margin >= 1 and tile > 2*margin, got {self}")
        if self.z_context < 1 or self.z_context % 2 == 0:
            raise ValueError(f"z_context must be odd, got {self.z_context}")

    @property
    def core(self) -> int:
        return self.tile - 2 * self.margin

    @property
    def core_raw(self) -> int:
        return self.core * self.factor

    def tile_range(self, begin: int, end: int) -> range:
        """Indices of the tiles whose cores meet raw ``[begin, end)``."""
        return range(begin // self.core_raw, (end - 1) // self.core_raw + 1)

    def tile_start_raw(self, j: int) -> int:
        return (j * self.core - self.margin) * self.factor


def effective_tile(tile: int, margin: int, shape_yx, factor: int, multiple: int) -> int:
    """``tile``, or less when one smaller tile already covers the whole (y, x) extent with its
    margins (small volumes would otherwise pay for a mostly mirrored tile)."""
    need = int(math.ceil(max(shape_yx) / factor)) + 2 * margin
    need = int(math.ceil(need / multiple) * multiple)
    return min(tile, max(need, 2 * margin + multiple))


def bilinear_matrix(n_out: int, n_in: int, factor: int, offset: float) -> np.ndarray:
    """``(n_out, n_in)`` weights: output pixel r samples input at ``(r + 0.5)/factor - 0.5 + offset``
    (linear interpolation, clamped at the ends)."""
    u = (np.arange(n_out) + 0.5) / factor - 0.5 + offset
    i0 = np.floor(u).astype(int)
    w = (u - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, np.clip(i0, 0, n_in - 1)), 1.0 - w)
    np.add.at(m, (rows, np.clip(i0 + 1, 0, n_in - 1)), w)
    return m


# ---------------------------------------------------------------------------------------------
# the predictor (a loaded model)


class Predictor:
    """Sigmoid probabilities of a 2D model for batches ``(N, T, T, C)`` -> ``(N, T, T)``.

    ``tta`` (1, 2, 4 or 8) averages the probabilities over that many of the 8 symmetries of the
    square (test-time augmentation: identity, transpose, then the rotations), each mapped back.
    Batches are padded to ``batch_size`` so one traced graph serves every call."""

    def __init__(self, model, batch_size: int = 4, tta: int = 1):
        import tensorflow as tf

        if tta not in (1, 2, 4, 8):
            raise ValueError(f"tta must be 1, 2, 4 or 8, got {tta}")
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.tta = tta

        def prob(x):
            return tf.sigmoid(model(x, training=False))[..., 0]

        self._fn = tf.function(prob, reduce_retracing=True)

    def _once(self, chunk: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._fn(tf.convert_to_tensor(chunk, tf.float32)).numpy()

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(tiles), self.batch_size):
            chunk = tiles[i : i + self.batch_size]
            n = len(chunk)
            if n < self.batch_size and len(tiles) > n:
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:], chunk.dtype)])
            acc = np.zeros(chunk.shape[:3], np.float32)
            for k in _TTA_ORDER[: self.tta]:
                t = np.ascontiguousarray(_dihedral(chunk, k))
                acc += _dihedral_inverse(self._once(t), k)
            out.append((acc / self.tta)[:n])
        return np.concatenate(out) if out else np.zeros((0,) + tiles.shape[1:3], np.float32)


#: symmetries used by test-time augmentation, in order (k: bit 2 = transpose, bits 0-1 = rot90)
_TTA_ORDER = (0, 4, 2, 6, 1, 3, 5, 7)


def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Symmetry k of the square on axes (1, 2) of a batch."""
    if k & 4:
        a = np.swapaxes(a, 1, 2)
    return np.rot90(a, k & 3, axes=(1, 2))


def _dihedral_inverse(a: np.ndarray, k: int) -> np.ndarray:
    a = np.rot90(a, -(k & 3), axes=(1, 2))
    if k & 4:
        a = np.swapaxes(a, 1, 2)
    return a


def to_uint8(prob: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def predict_box(
    raw,
    predictor,
    geom: TileGeometry,
    stats: IntensityStats,
    begin_zyx: Sequence[int],
    end_zyx: Sequence[int],
    slab: int = 4,
) -> np.ndarray:
    """Probability (uint8, 0..255 = 0..1) of raw voxels in ``[begin, end)`` (global grid).

    Memory: one slab of ``slab`` (+ context) sections of the tile region, and one batch of tiles."""
    z0, y0, x0 = (int(v) for v in begin_zyx)
    z1, y1, x1 = (int(v) for v in end_zyx)
    f, T, S, P = geom.factor, geom.tile, geom.core, geom.margin
    c = geom.z_context // 2
    jys, jxs = geom.tile_range(y0, y1), geom.tile_range(x0, x1)
    ry0, rx0 = geom.tile_start_raw(jys[0]), geom.tile_start_raw(jxs[0])
    ry1, rx1 = geom.tile_start_raw(jys[-1]) + T * f, geom.tile_start_raw(jxs[-1]) + T * f
    up = bilinear_matrix(geom.core_raw, T, f, P)
    out = np.zeros((z1 - z0, y1 - y0, x1 - x0), np.uint8)
    batch = max(1, getattr(predictor, "batch_size", 4))

    def place(jobs, probs):
        for (z, jy, jx), p in zip(jobs, probs):
            core = up @ p @ up.T
            cy0, cx0 = jy * geom.core_raw, jx * geom.core_raw
            ya, yb = max(y0, cy0), min(y1, cy0 + geom.core_raw)
            xa, xb = max(x0, cx0), min(x1, cx0 + geom.core_raw)
            out[z - z0, ya - y0 : yb - y0, xa - x0 : xb - x0] = to_uint8(core[ya - cy0 : yb - cy0, xa - cx0 : xb - cx0])

    for zs in range(z0, z1, slab):
        ze = min(z1, zs + slab)
        region = take_reflected(raw, (zs - c, ry0, rx0), (ze + c, ry1, rx1))
        ds = stats.standardize(downsample_mean(region, f) / 255.0)
        del region
        jobs, tiles = [], []
        for z in range(zs, ze):
            k = z - zs
            for jy in jys:
                for jx in jxs:
                    ty, tx = (jy - jys[0]) * S, (jx - jxs[0]) * S
                    tiles.append(np.moveaxis(ds[k : k + 2 * c + 1, ty : ty + T, tx : tx + T], 0, -1))
                    jobs.append((z, jy, jx))
                    if len(tiles) == batch:
                        place(jobs, predictor(np.stack(tiles)))
                        jobs, tiles = [], []
        if tiles:
            place(jobs, predictor(np.stack(tiles)))
    return out


def predict_volume_whole(
    raw: np.ndarray, predictor, factor: int, margin: int, multiple: int, stats: IntensityStats, z_context: int
) -> np.ndarray:
    """Reference: one model call per *whole* section (mirrored by ``margin`` model pixels and up
    to a multiple of ``multiple``), upsampled the same way. Used to prove the tiling seamless."""
    zdim, ydim, xdim = raw.shape
    c = z_context // 2
    f, P = factor, margin
    hd = int(math.ceil((math.ceil(ydim / f) + 2 * P) / multiple) * multiple)
    wd = int(math.ceil((math.ceil(xdim / f) + 2 * P) / multiple) * multiple)
    upy, upx = bilinear_matrix(ydim, hd, f, P), bilinear_matrix(xdim, wd, f, P)
    out = np.zeros(raw.shape, np.uint8)
    for z in range(zdim):
        region = take_reflected(raw, (z - c, -P * f, -P * f), (z + c + 1, (hd - P) * f, (wd - P) * f))
        ds = stats.standardize(downsample_mean(region, f) / 255.0)
        p = predictor(np.moveaxis(ds, 0, -1)[None])[0]
        out[z] = to_uint8(upy @ p @ upx.T)
    return out


# ---------------------------------------------------------------------------------------------
# post-processing


@dataclass(frozen=True)
class PostprocessConfig:
    #: probability threshold (compared on the stored uint8: prob_u8 >= round(threshold * 255));
    #: None: the model's own (model.json output.threshold)
    threshold: Optional[float] = None
    fill_holes: bool = True
    #: remove 2D components smaller than this (um^2) that span at most max_extent_um
    min_area_um2: float = 0.1
    #: holes and specks are judged only up to this extent (um); also the (y, x) halo
    max_extent_um: float = 6.0
    #: average the probability over this many sections (odd; 1 = off) before thresholding
    z_smooth: int = 1

    def __post_init__(self):
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_area_um2 < 0 or self.max_extent_um < 0:
            raise ValueError("min_area_um2 and max_extent_um must be >= 0")
        if self.z_smooth < 1 or self.z_smooth % 2 == 0:
            raise ValueError(f"z_smooth must be a positive odd number, got {self.z_smooth}")

    def threshold_u8(self) -> int:
        return int(round((0.5 if self.threshold is None else self.threshold) * 255))

    def extent_px(self, voxel_yx_nm: float) -> int:
        return int(math.ceil(self.max_extent_um * 1000.0 / voxel_yx_nm))

    def min_area_px(self, voxel_yx_nm: float) -> int:
        return int(math.ceil(self.min_area_um2 * 1e6 / (voxel_yx_nm**2)))


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
_SQUARE = np.ones((3, 3), bool)


def _border_labels(lab: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))


def postprocess_section(mask: np.ndarray, extent_px: int, min_area_px: int, fill_holes: bool) -> np.ndarray:
    """Fill holes and remove specks in one section (see the module doc); ``mask`` includes the
    halo, with everything outside the volume already False."""
    from scipy import ndimage as ndi

    m = mask.copy()
    if not m.any():
        return m
    if fill_holes:
        lab, n = ndi.label(~m, structure=_CROSS)
        if n:
            border = set(_border_labels(lab).tolist())
            fill = np.zeros(n + 1, bool)
            for i, sl in enumerate(ndi.find_objects(lab), start=1):
                if sl is None or i in border:
                    continue
                if sl[0].stop - sl[0].start <= extent_px and sl[1].stop - sl[1].start <= extent_px:
                    fill[i] = True
            if fill.any():
                m |= fill[lab]
    if min_area_px > 0:
        lab, n = ndi.label(m, structure=_SQUARE)
        if n:
            border = set(_border_labels(lab).tolist())
            area = np.bincount(lab.ravel(), minlength=n + 1)
            drop = np.zeros(n + 1, bool)
            for i, sl in enumerate(ndi.find_objects(lab), start=1):
                if sl is None or i in border or area[i] >= min_area_px:
                    continue
                if sl[0].stop - sl[0].start <= extent_px and sl[1].stop - sl[1].start <= extent_px:
                    drop[i] = True
            if drop.any():
                m &= ~drop[lab]
    return m


def postprocess(
    prob: np.ndarray, cfg: PostprocessConfig, voxel_yx_nm: float, inner: tuple[slice, slice], z_halo: int
) -> np.ndarray:
    """Mask (uint8 {0,1}) of ``prob[z_halo:-z_halo][:, inner[0], inner[1]]``; ``prob`` (uint8) carries
    ``z_halo`` extra sections on each side and a (y, x) halo around ``inner`` (see
    :func:`read_prob_for_mask`; zeros stand for the outside of the volume)."""
    extent, min_area = cfg.extent_px(voxel_yx_nm), cfg.min_area_px(voxel_yx_nm)
    zn = prob.shape[0] - 2 * z_halo
    ys, xs = inner
    out = np.zeros((zn, ys.stop - ys.start, xs.stop - xs.start), np.uint8)
    thr = cfg.threshold_u8()
    for k in range(zn):
        if cfg.z_smooth > 1:
            r = cfg.z_smooth // 2
            p = prob[k + z_halo - r : k + z_halo + r + 1].astype(np.float32).mean(axis=0)
            m = p >= thr - 1e-3
        else:
            m = prob[k + z_halo] >= thr
        m = postprocess_section(m, extent, min_area, cfg.fill_holes)
        out[k] = m[ys, xs]
    return out


def read_prob_for_mask(
    prob_array, begin_zyx, end_zyx, z_halo: int, halo_yx: int
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The probability around a box: ``z_halo`` sections mirrored at the volume faces; in (y, x)
    the box grown by ``halo_yx`` but clipped to the volume plus a one-pixel frame of zeros (a
    wider frame of zeros would change no decision: it is all one outside component).
    Returns the data and the (y, x) slices of the box inside it."""
    z0, y0, x0 = (int(v) for v in begin_zyx)
    z1, y1, x1 = (int(v) for v in end_zyx)
    zdim, ydim, xdim = prob_array.shape
    ya, yb = max(0, y0 - halo_yx), min(ydim, y1 + halo_yx)
    xa, xb = max(0, x0 - halo_yx), min(xdim, x1 + halo_yx)
    zi = reflect_index(np.arange(z0 - z_halo, z1 + z_halo), zdim)
    za, zb = int(zi.min()), int(zi.max()) + 1
    data = np.asarray(prob_array[za:zb, ya:yb, xa:xb])[zi - za]
    pad_y = (int(y0 - halo_yx < 0), int(y1 + halo_yx > ydim))
    pad_x = (int(x0 - halo_yx < 0), int(x1 + halo_yx > xdim))
    data = np.pad(data, ((0, 0), pad_y, pad_x), mode="constant")
    oy, ox = y0 - ya + pad_y[0], x0 - xa + pad_x[0]
    return data, (slice(oy, oy + y1 - y0), slice(ox, ox + x1 - x0))


def postprocess_volume(prob: np.ndarray, cfg: PostprocessConfig, voxel_yx_nm: float) -> np.ndarray:
    """The whole-volume reference of the blockwise post-processing."""
    halo = cfg.extent_px(voxel_yx_nm) + 1
    zh = cfg.z_smooth // 2
    data, inner = read_prob_for_mask(prob, (0, 0, 0), prob.shape, zh, halo)
    return postprocess(data, cfg, voxel_yx_nm, inner, zh)
