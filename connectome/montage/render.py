"""Montage rendering: per-tile gain correction and linear feathering of the overlaps.

The montage of a section is stored on a *canvas*: array element ``[i, j]`` holds the montage
frame point ``(y, x) = (i - offset_y, j - offset_x)`` (``offset_yx`` >= 0 leaves room for tiles
that land left of or above tile (0, 0)). A tile at position ``p = (py, px)`` (float) puts its
element ``[k, l]`` at ``p + (k, l)``; the canvas pixel at point ``q`` therefore samples the tile
at ``t = q - p`` (cubic spline; see :func:`_shift_tile`) and is a weighted mean over the tiles
that cover it::

    montage(q) = sum_t w_t(q) g_t tile_t(q - p_t) / sum_t w_t(q)

A tile covers the points within half a pixel of its pixel centres (``-0.5 <= t < h - 0.5``).
``w_t`` is the product of two 1-D ramps that rise linearly from the tile's edges over
``feather_px`` pixels (``min(1, (distance to the edge + 1) / feather_px)``), so a seam blends
across the overlap instead of jumping. ``g_t`` is the tile's gain (see :func:`estimate_gains`).
Canvas pixels no tile covers are 0 and marked uncovered.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)


def _ramp(n: int, frac: float, feather_px: float) -> np.ndarray:
    """Weights along one axis for the tile samples at ``k - frac``, k = 0..n-1."""
    t = np.arange(n, dtype=np.float64) - frac
    inside = (t >= -0.5) & (t < n - 0.5)  # the tile's pixels cover +/-0.5 px around their centres
    d = np.clip(np.minimum(t, n - 1 - t), 0.0, None) + 1.0
    return np.where(inside, np.clip(d / max(feather_px, 1e-6), 0.0, 1.0), 0.0).astype(np.float32)


def overlap_boxes(pos_a, pos_b, shape_hw) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Integer index boxes of the overlap of two tiles (positions rounded), in each tile."""
    h, w = shape_hw
    d = np.rint(np.asarray(pos_b, dtype=np.float64) - np.asarray(pos_a, dtype=np.float64)).astype(int)
    y0, y1 = max(0, d[0]), min(h, h + d[0])
    x0, x1 = max(0, d[1]), min(w, w + d[1])
    if y1 - y0 < 2 or x1 - x0 < 2:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - d[0], y1 - d[0]), slice(x0 - d[1], x1 - d[1]))


def estimate_gains(
    tiles: list[np.ndarray], positions_yx: np.ndarray, pairs: list[tuple[int, int]], prior_weight: float = 1e-2
) -> np.ndarray:
    """Multiplicative tile gains that equalise the mean intensity of the overlaps.

    For every pair the means ``m_a, m_b`` of the two tiles over their common area give the
    equation ``log g_a - log g_b = log m_b - log m_a``; a prior ``log g = 0`` of weight
    ``prior_weight`` fixes the overall level (geometric mean of the gains ~ 1) and keeps tiles
    without pairs at gain 1.
    """
    n = len(tiles)
    rows, rhs = [], []
    for a, b in pairs:
        boxes = overlap_boxes(positions_yx[a], positions_yx[b], tiles[a].shape)
        if boxes is None:
            continue
        ma = float(np.mean(tiles[a][boxes[0]]))
        mb = float(np.mean(tiles[b][boxes[1]]))
        if ma < 1.0 or mb < 1.0:
            continue
        r = np.zeros(n)
        r[a], r[b] = 1.0, -1.0
        rows.append(r)
        rhs.append(np.log(mb) - np.log(ma))
    mat = np.vstack(rows + [prior_weight * np.eye(n)]) if rows else prior_weight * np.eye(n)
    vec = np.concatenate([np.asarray(rhs, dtype=np.float64), np.zeros(n)])
    log_g = np.linalg.lstsq(mat, vec, rcond=None)[0]
    return np.exp(log_g - log_g.mean())


def _shift_tile(tile: np.ndarray, frac_yx, order: int) -> np.ndarray:
    """``out[k, l] = tile(k - frac_y, l - frac_x)`` (spline of ``order``; edges extended as
    "nearest"). Order 3, the default, is done separably with four taps per axis on the spline
    coefficients (:func:`.pairwise.sample_shifted`), several times faster than
    ``ndimage.shift`` and equal to it up to rounding away from the outermost 2 px."""
    if order != 3:
        return ndimage.shift(tile.astype(np.float32), frac_yx, order=order, mode="nearest", prefilter=order > 1)
    from connectome.montage.pairwise import sample_shifted

    pad = 4
    padded = np.pad(np.asarray(tile, dtype=np.float32), pad, mode="edge")
    coeffs = ndimage.spline_filter(padded, order=3, output=np.float32, mode="mirror")
    return sample_shifted(coeffs, (pad - float(frac_yx[0]), pad - float(frac_yx[1])), tile.shape)


def render_montage(
    tiles: list[np.ndarray],
    positions_yx: np.ndarray,
    gains: np.ndarray,
    canvas_hw: tuple[int, int],
    offset_yx: tuple[int, int],
    feather_px: float,
    order: int = 3,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(montage float32, coverage bool, number of tiles clipped by the canvas)."""
    num = np.zeros(canvas_hw, dtype=np.float32)
    den = np.zeros(canvas_hw, dtype=np.float32)
    clipped = 0
    for tile, pos, gain in zip(tiles, positions_yx, gains):
        h, w = tile.shape
        q = np.asarray(pos, dtype=np.float64) + np.asarray(offset_yx, dtype=np.float64)
        base = np.floor(q).astype(int)
        frac = q - base
        shifted = _shift_tile(tile, frac, order)
        weight = np.outer(_ramp(h, frac[0], feather_px), _ramp(w, frac[1], feather_px))
        y0, x0 = base
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + h, canvas_hw[0]), min(x0 + w, canvas_hw[1])
        if (cy0, cx0, cy1, cx1) != (y0, x0, y0 + h, x0 + w):
            clipped += 1
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        ts = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        wt = weight[ts]
        num[cy0:cy1, cx0:cx1] += (wt * np.float32(gain)) * shifted[ts]
        den[cy0:cy1, cx0:cx1] += wt
    covered = den > 0
    montage = np.zeros(canvas_hw, dtype=np.float32)
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    if rows.size:  # only the tiles' bounding box needs the division
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        np.divide(num[box], den[box], out=montage[box], where=covered[box])
    return montage, covered, clipped
