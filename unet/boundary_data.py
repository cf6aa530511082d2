"""Training data of the boundary 3D U-Net: targets, example crops and augmentation.

A ``connectome synth`` folder holds ``truth.zarr/{raw, neurons}``. The model sees (z, y, x)
crops with (y, x) area-downsampled by the integer ``factor`` (8 nm -> 16 nm: factor 2); z is
kept (40 nm).

Targets (4 channels, at the model's resolution)
-----------------------------------------------
* channel 0, *boundary*: a model voxel is boundary when any of its ``factor x factor`` raw
  voxels is -- a raw voxel is boundary when its neuron id is 0 (extracellular space, vessel)
  or differs from one of its four in-plane neighbours (the membrane line of the EM image);
* channels 1-3, *affinities* (z, y, x): ``aff_d(v) = 1`` when ``v`` and its predecessor along
  axis ``d`` (``v - e_d``) carry the same non-zero neuron id, at the model grid (neuron ids
  subsampled at the first raw pixel of each ``factor x factor`` block).

The affinities are computed **after** the geometric augmentation, from the augmented label
crop (which carries a one-voxel margin on every side), so flips and rotations never shift the
"predecessor" convention; the boundary channel is symmetric and is transformed as an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from unet.augment import AugmentConfig, intensity_augment
from unet.data import IntensityStats, downsample_mean, intensity_stats, model_factor, reflect_index

CHANNELS = ("boundary", "aff_z", "aff_y", "aff_x")


@dataclass
class BoundaryVolume:
    path: Path
    #: raw at the model's resolution, in [0, 1] (float32)
    image: np.ndarray
    #: boundary target at the model's resolution, uint8 {0, 1}
    boundary: np.ndarray
    #: neuron ids at the model grid (subsampled), int64
    labels: np.ndarray
    voxel_size_nm: tuple[float, float, float]
    factor: int
    stats: IntensityStats
    meta: dict = field(default_factory=dict)


def boundary_full_res(neurons: np.ndarray) -> np.ndarray:
    """(z, y, x) bool: id 0 or an in-plane 4-neighbour with another id (the membrane line)."""
    b = neurons == 0
    d = neurons[:, 1:, :] != neurons[:, :-1, :]
    b[:, 1:, :] |= d
    b[:, :-1, :] |= d
    d = neurons[:, :, 1:] != neurons[:, :, :-1]
    b[:, :, 1:] |= d
    b[:, :, :-1] |= d
    return b


def make_boundary_target(neurons: np.ndarray, factor: int) -> np.ndarray:
    """uint8 (z, y/f, x/f): max-pooled :func:`boundary_full_res`."""
    z, y, x = neurons.shape
    h, w = y // factor * factor, x // factor * factor
    b = boundary_full_res(neurons[:, :h, :w])
    return b.reshape(z, h // factor, factor, w // factor, factor).max(axis=(2, 4)).astype(np.uint8)


def affinities_from_labels(labels_m: np.ndarray, margin: int = 1) -> np.ndarray:
    """(3, z, y, x) float32 affinities of the core of ``labels_m`` (a label crop with ``margin``
    voxels on every side): same non-zero id as the predecessor along z, y, x."""
    m = margin
    core = labels_m[m:-m, m:-m, m:-m]
    prev = (
        labels_m[m - 1 : -m - 1, m:-m, m:-m],
        labels_m[m:-m, m - 1 : -m - 1, m:-m],
        labels_m[m:-m, m:-m, m - 1 : -m - 1],
    )
    nz = core != 0
    return np.stack([(core == p) & nz for p in prev]).astype(np.float32)


def load_boundary_volume(path: str | Path, model_voxel_nm: float, what: str = "--data") -> BoundaryVolume:
    from unet.data import open_synth

    path = Path(path)
    (raw_a, neu_a), vs, meta = open_synth(path, ["raw", "neurons"], what)
    factor = model_factor(model_voxel_nm, vs[1], f"{what} {path}")
    raw = np.asarray(raw_a[:])
    neurons = np.asarray(neu_a[:])
    z, y, x = raw.shape
    h, w = y // factor * factor, x // factor * factor
    image = (downsample_mean(raw[:, :h, :w], factor) / 255.0).astype(np.float32)
    boundary = make_boundary_target(neurons, factor)
    labels = neurons[:, :h:factor, :w:factor].astype(np.int64)
    meta = {**meta, "boundary_fraction": float(boundary.mean())}
    return BoundaryVolume(path, image, boundary, labels, vs, factor, intensity_stats(raw, factor), meta)


# ---------------------------------------------------------------------------------------------
# examples


def _coords(centre: int, n: int, margin: int, scale: float) -> np.ndarray:
    """Source coordinates (float) of output samples ``-margin .. n + margin - 1`` of a crop of
    ``n`` samples centred on ``centre``, each output sample covering ``scale`` source voxels."""
    j = np.arange(-margin, n + margin, dtype=np.float64)
    return centre + (j - n / 2 + 0.5) * scale - 0.5


def _linear(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    i0 = np.floor(coords).astype(np.int64)
    w = (coords - i0).astype(np.float32)
    n = a.shape[axis]
    lo = np.take(a, reflect_index(i0, n), axis=axis).astype(np.float32)
    if not np.any(w):
        return lo
    hi = np.take(a, reflect_index(i0 + 1, n), axis=axis).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return lo * (1 - w) + hi * w


def crop_example(
    vol: BoundaryVolume, centre: Sequence[int], shape_zyx: Sequence[int], scale: float = 1.0, margin: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (z, y, x), boundary target (z, y, x) float32 {0, 1} and labels with ``margin``
    voxels on every side, around ``centre``; ``scale`` != 1 resamples (y, x) (a crop pixel covers
    ``scale`` model pixels: linear for the image and the boundary, nearest for the labels).
    Outside the volume everything is mirrored."""
    tz, ty, tx = (int(v) for v in shape_zyx)
    zi = reflect_index(np.arange(centre[0] - tz // 2 - margin, centre[0] - tz // 2 + tz + margin), vol.image.shape[0])
    cy = _coords(centre[1], ty, margin, scale)
    cx = _coords(centre[2], tx, margin, scale)
    img = _linear(_linear(vol.image[zi], cy, 1), cx, 2)
    bnd = _linear(_linear(vol.boundary[zi], cy, 1), cx, 2) >= 0.5
    ny, nx = vol.labels.shape[1:]
    iy = reflect_index(np.rint(cy).astype(np.int64), ny)
    ix = reflect_index(np.rint(cx).astype(np.int64), nx)
    lab = vol.labels[zi][:, iy][:, :, ix]
    core = (slice(margin, -margin),) * 3 if margin else (slice(None),) * 3
    return img[core].astype(np.float32), bnd[core].astype(np.float32), lab


def augment(
    img: np.ndarray,
    bnd: np.ndarray,
    lab: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    section_shift_prob: float = 0.0,
    section_shift_px: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, object, float]:
    """Geometric (rot90/transpose in y, x; flip in z) on image, boundary and the (margin-padded,
    centred) labels alike; residual misalignment (per-section shifts of the image only); and
    :func:`unet.augment.intensity_augment` with the sections as channels (contrast, gamma,
    illumination, blur, noise, missing/shifted/blank sections). Returns (image, boundary,
    labels, point map g, added noise sigma)."""
    if not cfg.enabled:
        return img, bnd, lab, (lambda v: v), 0.0
    if cfg.dihedral:
        k = int(rng.integers(8))
        if k & 4:
            img, bnd, lab = (np.swapaxes(a, 1, 2) for a in (img, bnd, lab))
        img, bnd, lab = (np.rot90(a, k & 3, axes=(1, 2)) for a in (img, bnd, lab))
        if rng.random() < 0.5:
            img, bnd, lab = img[::-1], bnd[::-1], lab[::-1]
    img, bnd, lab = (np.ascontiguousarray(a) for a in (img, bnd, lab))
    if section_shift_prob and rng.random() < section_shift_prob:
        for zi in range(img.shape[0]):
            dy, dx = rng.integers(-section_shift_px, section_shift_px + 1, size=2)
            img[zi] = np.roll(img[zi], (int(dy), int(dx)), axis=(0, 1))
    out, g, noise = intensity_augment(np.moveaxis(img, 0, -1), rng, cfg)
    return np.ascontiguousarray(np.moveaxis(out, -1, 0)), bnd, lab, g, noise


def targets(bnd: np.ndarray, lab: np.ndarray, margin: int = 1) -> np.ndarray:
    """(z, y, x, 4) float32: boundary, aff_z, aff_y, aff_x."""
    aff = affinities_from_labels(lab, margin)
    return np.concatenate([bnd[None], aff]).transpose(1, 2, 3, 0).astype(np.float32)


def draw_centre(rng: np.random.Generator, vol: BoundaryVolume) -> tuple[int, int, int]:
    z, y, x = vol.image.shape
    return int(rng.integers(z)), int(rng.integers(y)), int(rng.integers(x))
