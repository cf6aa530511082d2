"""Training data of the synapse 3D U-Net: targets at the model's resolution, example crops,
3D augmentation.

A ``connectome synth`` folder holds ``truth.zarr/{raw, neurons, synapse_clefts}`` and
``truth/synapses.csv`` (synapse id -> pre/post neuron). The model sees (z, y, x) crops with
(y, x) area-downsampled by the integer ``factor`` (8 nm -> 16 nm: factor 2); z is kept (40 nm).

Targets (3 channels, at the model's resolution)
-----------------------------------------------
Let ``C`` be the cleft voxels max-pooled to the model grid (a model voxel is cleft when any of
its ``factor x factor`` raw voxels is) and ``d(v)`` the physical distance (nm, anisotropic
voxel size) from voxel ``v`` to the nearest voxel of ``C``, with ``s(v)`` that voxel's synapse:

* channel 0, *cleft*: ``d(v) <= cleft_radius_nm`` -- the one-voxel-thin cleft sheet thickened
  to a band a network can hit (default 16 nm: one model pixel in y, x; z unchanged);
* channel 1, *post side*: ``d(v) <= post_radius_nm`` and ``neurons(v) == post(s(v))`` -- the
  part of the postsynaptic neuron next to the cleft (where the PSD is). Partner assignment
  (:mod:`connectome.synapses.partners`) votes with it: shell voxels with a high post signal
  are post-synaptic.
* channel 2, *pre side*: ``d(v) <= post_radius_nm`` and ``neurons(v) == pre(s(v))`` -- the
  part of the presynaptic neuron next to the cleft (where the vesicles and the active zone
  are). Partner assignment votes for the presynaptic segment with it, so a bystander neurite
  that touches the cleft's rim (not post-synaptic, but not pre-synaptic either) gets no votes.

``neurons`` is subsampled (not averaged) to the model grid, at the first raw pixel of each
``factor x factor`` block.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from connectome.errors import UserInputError
from unet.augment import AugmentConfig, intensity_augment
from unet.data import IntensityStats, downsample_mean, intensity_stats, model_factor


@dataclass
class SynapseVolume:
    path: Path
    #: raw at the model's resolution, in [0, 1] (float32)
    image: np.ndarray
    #: (3, z, y, x) uint8 targets {0, 1}: cleft band, post side, pre side
    target: np.ndarray
    voxel_size_nm: tuple[float, float, float]
    factor: int
    stats: IntensityStats
    meta: dict = field(default_factory=dict)
    #: model-grid voxels of the cleft band, for positive-centred sampling
    positives: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    synapses: int = 0


def _read_truth_table(path: Path) -> dict[int, tuple[int, int]]:
    """synapse id -> (pre neuron id, post neuron id) from ``truth/synapses.csv``."""
    table = path / "truth" / "synapses.csv"
    if not table.is_file():
        raise UserInputError(f"--data {path}: truth/synapses.csv missing (expected a `connectome synth` folder)")
    out = {}
    with table.open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                out[int(row["synapse_id"])] = (int(row["pre_segment_id"]), int(row["post_segment_id"]))
            except (KeyError, ValueError):
                raise UserInputError(
                    f"{table}: needs integer columns synapse_id, pre_segment_id and post_segment_id"
                ) from None
    return out


def make_targets(
    clefts: np.ndarray,
    neurons: np.ndarray,
    partners_of: dict[int, tuple[int, int]],
    factor: int,
    voxel_size_nm: Sequence[float],
    cleft_radius_nm: float,
    post_radius_nm: float,
) -> np.ndarray:
    """(3, z, y/f, x/f) uint8 targets from full-resolution clefts and neurons (see module doc);
    ``partners_of``: synapse id -> (pre neuron, post neuron)."""
    from scipy.ndimage import distance_transform_edt

    z, y, x = clefts.shape
    h, w = y // factor * factor, x // factor * factor
    c = clefts[:, :h, :w]
    pooled = c.reshape(z, h // factor, factor, w // factor, factor).max(axis=(2, 4))
    neu = neurons[:, :h:factor, :w:factor]
    out = np.zeros((3,) + pooled.shape, np.uint8)
    if not pooled.any():
        return out
    sampling = (float(voxel_size_nm[0]), float(voxel_size_nm[1]) * factor, float(voxel_size_nm[2]) * factor)
    dist, idx = distance_transform_edt(pooled == 0, sampling=sampling, return_indices=True)
    out[0] = dist <= cleft_radius_nm + 1e-6
    near = dist <= post_radius_nm + 1e-6
    sid = pooled[idx[0], idx[1], idx[2]][near]
    ids, inverse = np.unique(sid, return_inverse=True)
    for channel, side in ((1, 1), (2, 0)):
        partner = np.asarray([partners_of.get(int(i), (0, 0))[side] for i in ids], np.uint64)[inverse.ravel()]
        mask = np.zeros(pooled.shape, bool)
        mask[near] = (partner != 0) & (neu[near] == partner)
        out[channel] = mask
    return out


def load_synapse_volume(
    path: str | Path,
    model_voxel_nm: float,
    cleft_radius_nm: float,
    post_radius_nm: float,
    seed: int = 0,
    max_positives: int = 20000,
    what: str = "--data",
) -> SynapseVolume:
    from unet.data import open_synth

    path = Path(path)
    (raw_a, neu_a, cl_a), vs, meta = open_synth(path, ["raw", "neurons", "synapse_clefts"], what)
    factor = model_factor(model_voxel_nm, vs[1], f"{what} {path}")
    raw = np.asarray(raw_a[:])
    z, y, x = raw.shape
    h, w = y // factor * factor, x // factor * factor
    image = downsample_mean(raw[:, :h, :w], factor) / 255.0
    stats = intensity_stats(raw, factor)
    partners_of = _read_truth_table(path)
    target = make_targets(
        np.asarray(cl_a[:]), np.asarray(neu_a[:]), partners_of, factor, vs, cleft_radius_nm, post_radius_nm
    )
    pos = np.argwhere(target[0])
    if len(pos) > max_positives:
        pos = pos[np.random.default_rng(seed).choice(len(pos), max_positives, replace=False)]
    meta = {
        **meta,
        "cleft_fraction": float(target[0].mean()),
        "post_fraction": float(target[1].mean()),
        "pre_fraction": float(target[2].mean()),
    }
    return SynapseVolume(
        path, image.astype(np.float32), target, vs, factor, stats, meta, pos.astype(np.int64), len(partners_of)
    )


# ---------------------------------------------------------------------------------------------
# examples


def crop3d(a: np.ndarray, begin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """``a[..., begin:begin+shape]`` over the last three axes, mirrored outside the volume."""
    from unet.data import reflect_index

    idx = [reflect_index(np.arange(b, b + s), n) for b, s, n in zip(begin, shape, a.shape[-3:])]
    return a[..., idx[0], :, :][..., idx[1], :][..., idx[2]]


def draw_centre(
    rng: np.random.Generator, vol: SynapseVolume, positive_fraction: float, jitter_zyx: Sequence[int]
) -> tuple[int, int, int]:
    zdim, ydim, xdim = vol.image.shape
    if len(vol.positives) and rng.random() < positive_fraction:
        c = vol.positives[int(rng.integers(len(vol.positives)))]
        j = [int(rng.integers(-k, k + 1)) for k in jitter_zyx]
        return (
            int(np.clip(c[0] + j[0], 0, zdim - 1)),
            int(np.clip(c[1] + j[1], 0, ydim - 1)),
            int(np.clip(c[2] + j[2], 0, xdim - 1)),
        )
    return int(rng.integers(zdim)), int(rng.integers(ydim)), int(rng.integers(xdim))


def crop_example(
    vol: SynapseVolume, centre: Sequence[int], shape_zyx: Sequence[int], scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Image (z, y, x) in [0, 1] and targets (2, z, y, x) float32 around ``centre``; ``scale`` != 1
    resamples (y, x) (a model pixel covers ``scale`` of the volume's model pixels)."""
    from scipy.ndimage import zoom

    tz, ty, tx = (int(v) for v in shape_zyx)
    sy, sx = max(2, int(round(ty * scale))), max(2, int(round(tx * scale)))
    begin = (centre[0] - tz // 2, centre[1] - sy // 2, centre[2] - sx // 2)
    img = crop3d(vol.image, begin, (tz, sy, sx))
    tgt = crop3d(vol.target, begin, (tz, sy, sx)).astype(np.float32)
    if (sy, sx) != (ty, tx):
        f = (1.0, ty / sy, tx / sx)
        img = zoom(img, f, order=1, mode="nearest", grid_mode=True)[:, :ty, :tx]
        tgt = np.stack([zoom(t, f, order=1, mode="nearest", grid_mode=True)[:, :ty, :tx] for t in tgt])
        tgt = (tgt >= 0.5).astype(np.float32)
    return img.astype(np.float32), tgt


def augment(
    img: np.ndarray,
    tgt: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    section_shift_prob: float = 0.0,
    section_shift_px: int = 2,
) -> tuple[np.ndarray, np.ndarray, object, float]:
    """Geometric (rot90/transpose in y, x; flip in z) on image and targets, residual misalignment
    (per-section shifts, image only), and :func:`unet.augment.intensity_augment` with the
    sections as channels. Returns (image, targets, point map g, added noise sigma)."""
    if not cfg.enabled:
        return img, tgt, (lambda v: v), 0.0
    if cfg.dihedral:
        k = int(rng.integers(8))
        if k & 4:
            img, tgt = np.swapaxes(img, 1, 2), np.swapaxes(tgt, 2, 3)
        img, tgt = np.rot90(img, k & 3, axes=(1, 2)), np.rot90(tgt, k & 3, axes=(2, 3))
        if rng.random() < 0.5:
            img, tgt = img[::-1], tgt[:, ::-1]
    img = np.ascontiguousarray(img)
    tgt = np.ascontiguousarray(tgt)
    if section_shift_prob and rng.random() < section_shift_prob:
        for zi in range(img.shape[0]):
            dy, dx = rng.integers(-section_shift_px, section_shift_px + 1, size=2)
            img[zi] = np.roll(img[zi], (int(dy), int(dx)), axis=(0, 1))
    out, g, noise = intensity_augment(np.moveaxis(img, 0, -1), rng, cfg)
    return np.ascontiguousarray(np.moveaxis(out, -1, 0)), tgt, g, noise


def fill_bands(img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator, max_px: int) -> None:
    """Aligned-render fill, in place: on 1-4 random (y, x) sides of a (z, y, x) crop, a band of no
    data (intensity 0, no targets) whose width drifts from section to section (a random walk, as
    the sections' offsets do), 0..``max_px`` model pixels. An aligned volume is black where a
    drifted section has no tissue; the boundary of that black is a dark straight edge that looks
    like a membrane, and without this the model calls clefts on it."""
    nz, ny, nx = img.shape
    sides = rng.permutation(4)[: int(rng.integers(1, 5))]
    for side in sides:
        start = rng.uniform(0, max_px)
        width = np.clip(np.rint(start + np.cumsum(rng.normal(0.0, 1.0, nz))), 0, max_px).astype(int)
        for zi, w in enumerate(width):
            if w == 0:
                continue
            sl = {
                0: (slice(0, w), slice(None)),
                1: (slice(ny - w, ny), slice(None)),
                2: (slice(None), slice(0, w)),
                3: (slice(None), slice(nx - w, nx)),
            }[int(side)]
            img[(zi,) + sl] = 0.0
            tgt[(slice(None), zi) + sl] = 0.0
