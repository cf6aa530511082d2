"""Section transforms as displacement grids, and the affine helpers of the coarse step.

A :class:`DisplacementGrid` stores a smooth map ``T`` from one frame to another on a regular
grid of nodes::

    node (i, j) sits at the point  origin_yx + (i * spacing, j * spacing)
    T(p) = p + u(p)                u bilinear between nodes, constant beyond the outer nodes

    origin  o--------o--------o--  ...   (spacing px apart)
            |  u(p) bilinear  |
            o--------o--------o--

Points are ``(y, x)`` in pixels, pixel centres on the integer grid (see :mod:`connectome.montage`).
Stored as ``.npz`` (``origin_yx``, ``spacing``, ``disp_yx`` of shape (ny, nx, 2), float64);
files are written atomically.

An *affine* is a 2x3 matrix ``M`` acting on ``(y, x)``: ``M @ (y, x, 1)``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from scipy import ndimage

from connectome.atomic import atomic_write_bytes


@dataclass(frozen=True)
class DisplacementGrid:
    origin_yx: tuple[float, float]
    spacing: float
    disp_yx: np.ndarray  # (ny, nx, 2) float64

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.disp_yx.shape[:2])  # type: ignore[return-value]

    def nodes(self) -> np.ndarray:
        """(ny, nx, 2) node positions."""
        ny, nx = self.shape
        iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        return np.stack([self.origin_yx[0] + iy * self.spacing, self.origin_yx[1] + ix * self.spacing], axis=-1)

    def displacement(self, points_yx: np.ndarray) -> np.ndarray:
        """u at arbitrary points (..., 2)."""
        pts = np.asarray(points_yx, dtype=np.float64)
        gy = (pts[..., 0] - self.origin_yx[0]) / self.spacing
        gx = (pts[..., 1] - self.origin_yx[1]) / self.spacing
        ny, nx = self.shape
        gy = np.clip(gy, 0, ny - 1)
        gx = np.clip(gx, 0, nx - 1)
        out = np.empty(pts.shape, dtype=np.float64)
        for k in (0, 1):
            out[..., k] = ndimage.map_coordinates(self.disp_yx[..., k], [gy, gx], order=1, mode="nearest")
        return out

    def apply(self, points_yx: np.ndarray) -> np.ndarray:
        pts = np.asarray(points_yx, dtype=np.float64)
        return pts + self.displacement(pts)

    def dense(self, begin_yx: tuple[int, int], shape_hw: tuple[int, int]) -> np.ndarray:
        """``T`` at every integer point of the box ``begin + [0, h) x [0, w)``: (h, w, 2)."""
        ys = begin_yx[0] + np.arange(shape_hw[0], dtype=np.float64)
        xs = begin_yx[1] + np.arange(shape_hw[1], dtype=np.float64)
        gy = np.clip((ys - self.origin_yx[0]) / self.spacing, 0, self.shape[0] - 1)
        gx = np.clip((xs - self.origin_yx[1]) / self.spacing, 0, self.shape[1] - 1)
        cy, cx = np.meshgrid(gy, gx, indexing="ij")
        out = np.empty(tuple(shape_hw) + (2,), dtype=np.float64)
        for k, base in ((0, ys[:, None]), (1, xs[None, :])):
            out[..., k] = base + ndimage.map_coordinates(self.disp_yx[..., k], [cy, cx], order=1, mode="nearest")
        return out

    # ------------------------------------------------------------------ storage
    def to_npz(self, path: str | Path, **extra) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            origin_yx=np.asarray(self.origin_yx, dtype=np.float64),
            spacing=np.float64(self.spacing),
            disp_yx=np.asarray(self.disp_yx, dtype=np.float64),
            **extra,
        )
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def from_npz(cls, path: str | Path) -> "DisplacementGrid":
        with np.load(str(path)) as f:
            origin = cast("tuple[float, float]", tuple(float(v) for v in f["origin_yx"]))
            return cls(origin, float(f["spacing"]), np.array(f["disp_yx"]))


def grid_over(
    begin_yx: tuple[float, float], end_yx: tuple[float, float], spacing: float
) -> tuple[tuple[float, float], tuple[int, int]]:
    """Origin and node counts of a grid whose nodes cover the box ``[begin, end]``."""
    ny = int(np.ceil((end_yx[0] - begin_yx[0]) / spacing)) + 1
    nx = int(np.ceil((end_yx[1] - begin_yx[1]) / spacing)) + 1
    return (float(begin_yx[0]), float(begin_yx[1])), (max(ny, 1), max(nx, 1))


def identity_grid(begin_yx, end_yx, spacing: float) -> DisplacementGrid:
    origin, (ny, nx) = grid_over(begin_yx, end_yx, spacing)
    return DisplacementGrid(origin, float(spacing), np.zeros((ny, nx, 2)))


def compose(outer: DisplacementGrid, inner: DisplacementGrid) -> DisplacementGrid:
    """``outer o inner`` on ``inner``'s nodes: p -> outer(inner(p))."""
    nodes = inner.nodes()
    return DisplacementGrid(inner.origin_yx, inner.spacing, outer.apply(inner.apply(nodes)) - nodes)


# ---------------------------------------------------------------------------------------------
# affines


def affine_apply(matrix: np.ndarray, points_yx: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    pts = np.asarray(points_yx, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def fit_affine(src_yx: np.ndarray, dst_yx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares 2x3 affine with ``dst ~= M @ (src, 1)``."""
    src = np.asarray(src_yx, dtype=np.float64)
    dst = np.asarray(dst_yx, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    a = np.hstack([src, np.ones((len(src), 1))]) * np.sqrt(w)[:, None]
    sol = np.linalg.lstsq(a, dst * np.sqrt(w)[:, None], rcond=None)[0]
    return sol.T


def robust_affine(
    src_yx: np.ndarray, dst_yx: np.ndarray, max_residual_px: float, min_points: int = 6, iterations: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Affine fit with iterative rejection of points whose residual exceeds
    ``max(max_residual_px, 3 * 1.4826 * MAD)``; falls back to a translation (the median
    displacement) with fewer than ``min_points`` points. Returns (matrix, inlier mask)."""
    src = np.asarray(src_yx, dtype=np.float64)
    dst = np.asarray(dst_yx, dtype=np.float64)
    inl = np.ones(len(src), dtype=bool)
    if len(src) == 0:
        return np.array([[1.0, 0, 0], [0, 1.0, 0]]), inl
    if len(src) < min_points:
        t = np.median(dst - src, axis=0)
        return np.array([[1.0, 0, t[0]], [0, 1.0, t[1]]]), inl
    for _ in range(iterations):
        m = fit_affine(src[inl], dst[inl])
        res = np.hypot(*(affine_apply(m, src) - dst).T)
        mad = 1.4826 * np.median(np.abs(res[inl] - np.median(res[inl])))
        new = res <= max(max_residual_px, 3 * mad + np.median(res[inl]))
        if new.sum() < min_points or np.array_equal(new, inl):
            break
        inl = new
    return fit_affine(src[inl], dst[inl]), inl
