"""FFN training examples from any labelled volume: object-fraction partitions, balanced
sampling of example centres, augmentation.

Partitions (as in google/ffn's ``compute_partitions``, re-implemented): for every labelled voxel
``v`` the *object fraction* is the fraction of voxels in the box of radius ``r = fov // 2 + delta``
around ``v`` that carry ``v``'s id. It says where an example sits: ~1 deep inside a big object,
small near thin processes and boundaries. Fractions are binned at ``THRESHOLDS`` into
``len(THRESHOLDS) + 1`` partitions and example centres are drawn *equally per partition*, so
thin neurites and boundaries are seen as often as the interiors of thick dendrites. Voxels are
excluded (no partition) when their object is background (0), smaller than ``min_object_voxels``,
masked (e.g. vessel), or when the example box around them would leave the volume.

The fraction is computed per object on its bounding box grown by ``r`` with a box filter
(``scipy.ndimage.uniform_filter`` of the object's mask), so the work is the sum of the objects'
box volumes, not (objects x volume). Memory is bounded by the largest object box; the sampler
keeps at most ``max_per_partition`` centres per partition (a seeded uniform subsample).

Examples: the *example box* of ``fov + 2 * delta`` voxels around a centre (one FOV plus one move
in every direction) of the standardised image and of the object mask (label == the centre's id),
flipped along z, y and x at random and, when the FOV is square in (y, x), transposed in (y, x).

:func:`model_resolution` brings a volume to the model's pixel size (training and inference alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: object-fraction bin edges (google/ffn's defaults)
THRESHOLDS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def object_fractions(
    labels: np.ndarray, radius_zyx, min_object_voxels: int = 0, mask: np.ndarray | None = None
) -> np.ndarray:
    """float32 volume: each voxel's object fraction in the box of ``radius_zyx`` (clipped at the
    volume's faces, so the fraction is of the voxels inside); -1 where excluded (background,
    small objects, ``mask`` true)."""
    labels = np.asarray(labels)
    r = np.asarray(radius_zyx, dtype=int)
    out = np.full(labels.shape, -1.0, dtype=np.float32)
    compact, _ = _compact(labels)
    objects = ndimage.find_objects(compact)
    size = np.asarray(labels.shape)
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        lo = np.maximum([s.start for s in sl] - r, 0)
        hi = np.minimum([s.stop for s in sl] + r, size)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        obj = compact[box] == k
        n = int(obj.sum())
        if n < max(1, min_object_voxels):
            continue
        # fraction of voxels inside the volume: box sum of the mask / box sum of ones (edges)
        num = ndimage.uniform_filter(obj.astype(np.float32), size=tuple(2 * r + 1), mode="constant")
        den = ndimage.uniform_filter(np.ones(obj.shape, np.float32), size=tuple(2 * r + 1), mode="constant")
        frac = num / np.maximum(den, 1e-6)
        out[box][obj] = frac[obj]
    if mask is not None:
        out[np.asarray(mask).astype(bool)] = -1.0
    return out


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if ids[0] == 0:
        return inv.astype(np.int32), ids
    return (inv + 1).astype(np.int32), np.concatenate([[0], ids])


def partition_of(fractions: np.ndarray) -> np.ndarray:
    """Partition index per voxel (0 .. len(THRESHOLDS)), -1 where excluded."""
    p = np.searchsorted(np.asarray(THRESHOLDS, np.float32), fractions, side="right").astype(np.int16)
    return np.where(fractions < 0, -1, p)


@dataclass
class CentreSampler:
    """Example centres drawn equally per partition (empty partitions skipped)."""

    centres: list[np.ndarray]  # per partition: (n, 3) int32 z, y, x

    @classmethod
    def from_labels(
        cls,
        labels: np.ndarray,
        radius_zyx,
        example_zyx,
        min_object_voxels: int = 0,
        mask: np.ndarray | None = None,
        max_per_partition: int = 20000,
        seed: int = 0,
    ) -> "CentreSampler":
        frac = object_fractions(labels, radius_zyx, min_object_voxels, mask)
        # centres whose example box lies inside the volume
        half = np.asarray(example_zyx) // 2
        inner = np.zeros(frac.shape, bool)
        inner[tuple(slice(h, s - h) for h, s in zip(half, frac.shape))] = True
        part = np.where(inner, partition_of(frac), -1)
        rng = np.random.default_rng(seed)
        centres = []
        for k in range(len(THRESHOLDS) + 1):
            idx = np.flatnonzero(part == k)
            if idx.size > max_per_partition:
                idx = np.sort(rng.choice(idx, max_per_partition, replace=False))
            centres.append(np.stack(np.unravel_index(idx, frac.shape), axis=1).astype(np.int32))
        return cls(centres)

    @property
    def counts(self) -> list[int]:
        return [len(c) for c in self.centres]

    def __len__(self) -> int:
        return sum(self.counts)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        nonempty = [c for c in self.centres if len(c)]
        if not nonempty:
            raise ValueError("no usable example centres (every object too small, masked or at the border)")
        part = nonempty[int(rng.integers(len(nonempty)))]
        return part[int(rng.integers(len(part)))]


def crop(volume: np.ndarray, centre_zyx, shape_zyx) -> np.ndarray:
    """The box of ``shape_zyx`` (odd) centred on ``centre_zyx`` (must lie inside)."""
    half = np.asarray(shape_zyx) // 2
    lo = np.asarray(centre_zyx) - half
    return np.asarray(volume[tuple(slice(a, a + s) for a, s in zip(lo, shape_zyx))])


def augment(arrays: list[np.ndarray], rng: np.random.Generator, transpose_xy: bool) -> list[np.ndarray]:
    """The same random flips (z, y, x) and (y, x) transpose applied to every array."""
    flips = rng.integers(0, 2, 3).astype(bool)
    swap = bool(transpose_xy and rng.integers(0, 2))
    out = []
    for a in arrays:
        for ax in np.flatnonzero(flips):
            a = np.flip(a, axis=int(ax))
        if swap:
            a = np.swapaxes(a, 1, 2)
        out.append(np.ascontiguousarray(a))
    return out


def model_resolution(raw: np.ndarray, labels: np.ndarray | None, mask: np.ndarray | None, factor: int):
    """(image in [0, 1], labels, mask) at ``factor`` x coarser (y, x): the image area-averaged over
    whole ``factor`` x ``factor`` cells (a remainder at the high edge is dropped), labels and mask
    taken at each cell's centre pixel."""
    from unet.data import downsample_mean

    f = int(factor)
    h, w = raw.shape[1] // f * f, raw.shape[2] // f * f
    image = downsample_mean(raw[:, :h, :w], f) / 255.0
    c = f // 2
    lab = None if labels is None else np.ascontiguousarray(labels[:, c:h:f, c:w:f])
    m = None if mask is None else np.ascontiguousarray(mask[:, c:h:f, c:w:f])
    return image.astype(np.float32), lab, m
