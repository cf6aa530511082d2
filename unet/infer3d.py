"""Tiled 3D U-Net inference on a global tile grid (the synapse model).

The 2D scheme of :mod:`unet.infer`, with tiles in z too. (y, x) are downsampled by an integer
``factor`` f (area mean), z is not. Along each axis, tile ``j`` covers model voxels
``[j*S - P, j*S - P + T)`` (``T`` tile, ``P`` margin, ``S = T - 2P`` core) and only its core is
kept; the grid starts at the volume origin, reads outside the volume are mirrored. The core's
(y, x) planes are upsampled to raw pixels bilinearly inside the tile (raw pixel r sits at model
coordinate ``(r + 0.5)/f - 0.5``), so every raw voxel's value is a function of its one tile:
any block layout and executor give the same bits as one whole-volume run (tested).

Outputs are ``C`` channels of sigmoid probabilities, stored as uint8 (0..255 = 0..1).

No data: an aligned volume is ``no_data`` (0) where a drifted section has no tissue, usually in
bands along the volume's sides. Mirroring such a band at the volume face makes a thin dark line
between tissue and its mirror image -- which looks like a cleft. With ``no_data`` set, every
``no_data`` pixel of a tile's region is replaced by the nearest other pixel of its section
(:func:`fill_no_data`) before the model sees it; the result still depends on the tile alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from unet.data import IntensityStats, downsample_mean, take_reflected
from unet.infer import bilinear_matrix, to_uint8


@dataclass(frozen=True)
class TileGeometry3D:
    factor: int  # raw pixels per model pixel in (y, x); z is 1:1
    tile: tuple[int, int, int]  # T per axis, model voxels
    margin: tuple[int, int, int]  # P per axis, model voxels

    def __post_init__(self):
        if self.factor < 1 or min(self.margin) < 0 or min(self.core) < 1:
            raise ValueError(f"need factor >= 1, margin >= 0 and tile > 2*margin per axis, got {self}")

    @property
    def core(self) -> tuple[int, int, int]:
        return tuple(t - 2 * p for t, p in zip(self.tile, self.margin))

    @property
    def core_raw(self) -> tuple[int, int, int]:
        c = self.core
        return c[0], c[1] * self.factor, c[2] * self.factor

    def tile_range(self, axis: int, begin: int, end: int) -> range:
        """Tiles along ``axis`` whose cores meet raw ``[begin, end)``."""
        c = self.core_raw[axis]
        return range(begin // c, (end - 1) // c + 1)

    def tile_start_raw(self, axis: int, j: int) -> int:
        f = 1 if axis == 0 else self.factor
        return (j * self.core[axis] - self.margin[axis]) * f


def fit_tile(
    tile: Sequence[int], margin: Sequence[int], shape_zyx: Sequence[int], factor: int, multiple: Sequence[int]
) -> tuple[int, int, int]:
    """``tile``, or less per axis where one smaller tile covers the whole extent with its
    margins (depends on the volume's shape only, so blocks share one grid)."""
    out = []
    for axis in range(3):
        f = 1 if axis == 0 else factor
        need = -(-int(shape_zyx[axis]) // f) + 2 * int(margin[axis])
        m = int(multiple[axis])
        need = -(-need // m) * m
        out.append(min(int(tile[axis]), max(need, 2 * int(margin[axis]) + m)))
    return tuple(out)


class Predictor3D:
    """Sigmoid probabilities of a 3D model: tiles ``(N, Z, Y, X)`` -> ``(N, Z, Y, X, C)``.

    ``tta`` 1, 2 or 4: average over that many of (identity, x-flip, y-flip, both), mapped back."""

    def __init__(self, model, batch_size: int = 1, tta: int = 1):
        import tensorflow as tf

        if tta not in (1, 2, 4):
            raise ValueError(f"tta must be 1, 2 or 4, got {tta}")
        self.batch_size = max(1, int(batch_size))
        self.tta = tta
        self._fn = tf.function(lambda x: tf.sigmoid(model(x, training=False)), reduce_retracing=True)

    def _once(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._fn(tf.convert_to_tensor(x[..., None], tf.float32)).numpy()

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        out = []
        flips = [(), (3,), (2,), (2, 3)][: self.tta]
        for i in range(0, len(tiles), self.batch_size):
            chunk = tiles[i : i + self.batch_size]
            acc = None
            for axes in flips:
                t = np.flip(chunk, axis=axes) if axes else chunk
                p = self._once(np.ascontiguousarray(t))
                p = np.flip(p, axis=axes) if axes else p
                acc = p if acc is None else acc + p
            out.append(acc / len(flips))
        return np.concatenate(out)


def fill_no_data(region: np.ndarray, no_data: int) -> np.ndarray:
    """``region`` (z, y, x) with each ``no_data`` pixel replaced by the nearest (Euclidean, ties
    by scipy's rule) pixel of the same section that is not ``no_data``; sections that are all
    ``no_data`` stay as they are. Returns ``region`` itself when it holds no ``no_data`` pixel."""
    from scipy.ndimage import distance_transform_edt

    mask = region == no_data
    if not mask.any():
        return region
    out = np.array(region, copy=True)
    for z in range(out.shape[0]):
        m = mask[z]
        if m.any() and not m.all():
            iy, ix = distance_transform_edt(m, return_distances=False, return_indices=True)
            out[z] = out[z][iy, ix]
    return out


def predict_box3d(
    raw,
    predictor,
    geom: TileGeometry3D,
    stats: IntensityStats,
    begin_zyx: Sequence[int],
    end_zyx: Sequence[int],
    channels: int,
    no_data: int | None = None,
) -> np.ndarray:
    """``(channels, dz, dy, dx)`` uint8 probabilities of raw voxels ``[begin, end)``; ``no_data``:
    the raw value of missing data, filled from the nearest tissue first (None: off).

    Memory: one tile's raw region at a time plus the output box."""
    z0, y0, x0 = (int(v) for v in begin_zyx)
    z1, y1, x1 = (int(v) for v in end_zyx)
    f = geom.factor
    T, P = geom.tile, geom.margin
    cz, cy, cx = geom.core_raw
    upy = bilinear_matrix(cy, T[1], f, P[1])
    upx = bilinear_matrix(cx, T[2], f, P[2])
    out = np.zeros((channels, z1 - z0, y1 - y0, x1 - x0), np.uint8)
    jobs = [
        (jz, jy, jx)
        for jz in geom.tile_range(0, z0, z1)
        for jy in geom.tile_range(1, y0, y1)
        for jx in geom.tile_range(2, x0, x1)
    ]
    batch = max(1, getattr(predictor, "batch_size", 1))
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        tiles = []
        for jz, jy, jx in chunk:
            b = (geom.tile_start_raw(0, jz), geom.tile_start_raw(1, jy), geom.tile_start_raw(2, jx))
            e = (b[0] + T[0], b[1] + T[1] * f, b[2] + T[2] * f)
            region = take_reflected(raw, b, e)
            if no_data is not None:
                region = fill_no_data(region, no_data)
            tiles.append(stats.standardize(downsample_mean(region, f) / 255.0))
        probs = predictor(np.stack(tiles))
        for (jz, jy, jx), p in zip(chunk, probs):
            za, zb = max(z0, jz * cz), min(z1, (jz + 1) * cz)
            ya, yb = max(y0, jy * cy), min(y1, (jy + 1) * cy)
            xa, xb = max(x0, jx * cx), min(x1, (jx + 1) * cx)
            for z in range(za, zb):
                plane = p[P[0] + z - jz * cz]  # (T_y, T_x, C)
                for ch in range(channels):
                    core = upy @ plane[..., ch] @ upx.T
                    out[ch, z - z0, ya - y0 : yb - y0, xa - x0 : xb - x0] = to_uint8(
                        core[ya - jy * cy : yb - jy * cy, xa - jx * cx : xb - jx * cx]
                    )
    return out


def resolve_tiling(
    spec, path, shape_zyx, voxel_size_nm, tile_zyx, margin_zyx, where: str, command: str
) -> tuple[int, tuple[int, int, int], tuple[int, int, int]]:
    """(factor, tile, margin) of a 3D U-Net model directory ``spec`` (``unet.modeldir``) on a
    volume: square pixels, an integer (y, x) factor to the model's pixel size, the tiling from
    the stage config (``tile_zyx`` / ``margin_zyx``; empty: the model's recommendation) checked
    against the network's size multiple and fitted to the volume. Exit 2 with one line otherwise."""
    from connectome.errors import UserInputError
    from unet.data import model_factor

    vz, vy, vx = voxel_size_nm
    if abs(vy - vx) > 1e-6 * vy:
        raise UserInputError(f"{where}: {command} needs square pixels, voxel size is {[vz, vy, vx]} nm")
    factor = model_factor(spec.voxel_size_nm_yx, vy, f"--model {path} for {where}")
    inf = spec.doc.get("inference", {})
    tile = tuple(int(v) for v in (tile_zyx or inf.get("tile_zyx") or (40, 304, 304)))
    margin = tuple(int(v) for v in (margin_zyx or inf.get("margin_zyx") or (4, 24, 24)))
    mult = spec.unet.size_multiple()
    if any(t % m or t <= 2 * p for t, p, m in zip(tile, margin, mult)):
        raise UserInputError(
            f"tile_zyx {list(tile)} must be multiples of {list(mult)} and larger than 2 x margin_zyx {list(margin)}"
        )
    return factor, fit_tile(tile, margin, shape_zyx, factor, mult), margin


_PREDICTORS: dict = {}


def cached_predictor(read_spec, model_dir: str, sha256: str, batch_size: int, tta: int, threads: int) -> Predictor3D:
    """One :class:`Predictor3D` per worker process (the last model asked for), built from
    ``read_spec(Path(model_dir))`` after checking its weights are still the planned ones."""
    from pathlib import Path

    key = (read_spec, model_dir, sha256, batch_size, tta)
    if key not in _PREDICTORS:
        from connectome.errors import UserInputError
        from connectome.training.distributed import set_threads
        from unet.modeldir import build_model

        if threads:
            set_threads(threads, 1)
        spec = read_spec(Path(model_dir))
        if spec.weights_sha256 != sha256:
            raise UserInputError(f"{model_dir}: the model changed while the stage was running")
        _PREDICTORS.clear()
        _PREDICTORS[key] = Predictor3D(build_model(spec), batch_size, tta)
    return _PREDICTORS[key]
