"""Labelled volumes and training examples for 2D U-Nets on serial sections.

Conventions
-----------
* Volumes are ``(z, y, x)`` uint8 ``raw`` with a label volume of the same shape; voxel sizes
  in nm ``(z, y, x)``.
* The model sees sections downsampled in (y, x) by an integer ``factor`` (raw pixels per
  model pixel, e.g. 4 for 8 nm data and a 32 nm model) by *area averaging*: model pixel ``i``
  is the mean of raw pixels ``[i*f, (i+1)*f)``. Labels are downsampled the same way, so the
  target is the vessel *fraction* of each model pixel (soft labels keep sub-pixel boundary
  information).
* ``z_context`` adjacent sections (odd, centred) are the input channels; sections beyond the
  volume are mirrored (``reflect_index``: ``-1 -> 0``, ``-2 -> 1``, ``n -> n-1``, as numpy's
  "symmetric" padding).
* Intensities are standardised per *volume* (not per tile, so that blockwise and whole-volume
  inference see identical inputs): ``x = (v - p50) / ((p95 - p5) / 3.29)`` with ``v`` in
  [0, 1] and the percentiles of the downsampled volume (:func:`intensity_stats`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from connectome.errors import UserInputError
from connectome.training.provenance import portable_path

#: (p95 - p5) of a unit normal distribution
SPREAD_TO_SIGMA = 3.29


# ---------------------------------------------------------------------------------------------
# geometry helpers shared with inference


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map any integer index to ``[0, n)`` by mirroring with edge repetition (numpy "symmetric")."""
    idx = np.asarray(idx)
    period = 2 * n
    m = np.mod(idx, period)
    return np.where(m < n, m, period - 1 - m)


def take_reflected(array, begin_zyx: Sequence[int], end_zyx: Sequence[int]) -> np.ndarray:
    """``array[begin:end]`` for a box that may reach outside the volume, mirrored at its faces.

    Reads only the bounding box of the source indices once (zarr or numpy)."""
    idx = [reflect_index(np.arange(b, e), n) for b, e, n in zip(begin_zyx, end_zyx, array.shape)]
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    out = np.asarray(array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    for axis, (i, low, high) in enumerate(zip(idx, lo, hi)):
        if len(i) != high - low or np.any(np.diff(i) != 1):
            out = out.take(i - low, axis=axis)
    return out


def downsample_mean(a: np.ndarray, factor: int) -> np.ndarray:
    """Area-average the last two axes by ``factor`` (their sizes must be multiples of it).

    Integer input is summed exactly in integers, so the result does not depend on how a volume
    is cut into pieces."""
    a = np.asarray(a)
    if factor == 1:
        return a.astype(np.float32)
    *lead, h, w = a.shape
    if h % factor or w % factor:
        raise ValueError(f"shape {a.shape[-2:]} is not a multiple of {factor}")
    acc = np.int32 if a.dtype.kind in "ui" and a.dtype.itemsize <= 2 else np.float64
    x = a[..., 0::factor].astype(acc)
    for k in range(1, factor):  # strided adds: much faster than a reduction over a short axis
        x += a[..., k::factor]
    y = x[..., 0::factor, :].copy()
    for k in range(1, factor):
        y += x[..., k::factor, :]
    return (y / float(factor * factor)).astype(np.float32)


@dataclass(frozen=True)
class IntensityStats:
    """Percentiles (5, 50, 95) of a volume in [0, 1] at the model's resolution."""

    p5: float
    p50: float
    p95: float

    @property
    def scale(self) -> float:
        return max(1e-3, (self.p95 - self.p5) / SPREAD_TO_SIGMA)

    def standardize(self, v: np.ndarray) -> np.ndarray:
        return ((v - self.p50) / self.scale).astype(np.float32)

    def to_json(self) -> dict:
        return {"p5": round(self.p5, 6), "p50": round(self.p50, 6), "p95": round(self.p95, 6)}


def intensity_stats(raw, factor: int, max_sections: int = 16, max_side: int = 2048) -> IntensityStats:
    """Percentiles of up to ``max_sections`` evenly spaced sections (central crops of at most
    ``max_side`` raw pixels), area-downsampled by ``factor``; deterministic."""
    z, y, x = raw.shape
    zs = np.unique(np.linspace(0, z - 1, min(z, max_sections)).round().astype(int))
    hy, hx = min(y, max_side) // factor * factor, min(x, max_side) // factor * factor
    if hy == 0 or hx == 0:
        raise UserInputError(f"volume of shape {list(raw.shape)} is smaller than one model pixel ({factor} px)")
    y0, x0 = (y - hy) // 2, (x - hx) // 2
    vals = [downsample_mean(np.asarray(raw[int(k), y0 : y0 + hy, x0 : x0 + hx]), factor).ravel() for k in zs]
    p5, p50, p95 = np.percentile(np.concatenate(vals) / 255.0, [5, 50, 95])
    return IntensityStats(float(p5), float(p50), float(p95))


def model_factor(model_voxel_nm: float, data_voxel_nm: float, where: str, tolerance: float = 0.34) -> int:
    """Integer downsampling factor from data pixels to model pixels; an error if the nearest
    integer leaves the effective scale more than ``tolerance`` away from the model's."""
    ratio = float(model_voxel_nm) / float(data_voxel_nm)
    factor = max(1, int(round(ratio)))
    if abs(factor / ratio - 1.0) > tolerance:
        raise UserInputError(
            f"{where}: voxel size {data_voxel_nm:g} nm (y, x) is incompatible with the model's "
            f"{model_voxel_nm:g} nm input pixels (needs an integer downsampling factor; "
            f"the nearest, {factor}, gives {factor * data_voxel_nm:g} nm)"
        )
    return factor


# ---------------------------------------------------------------------------------------------
# labelled volumes


@dataclass
class LabelledVolume:
    path: Path
    raw: np.ndarray
    label: np.ndarray
    voxel_size_nm: tuple[float, float, float]
    meta: dict = field(default_factory=dict)
    #: up to a few thousand (z, y, x) label voxels, for label-centred sampling
    positives: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))

    def describe(self) -> dict:
        return {
            "path": portable_path(self.path),
            "seed": self.meta.get("seed"),
            "preset": self.meta.get("preset"),
            "generator": self.meta.get("generator"),
            "shape_zyx": list(self.raw.shape),
            "voxel_size_nm": list(self.voxel_size_nm),
            "label_fraction": round(float(self.meta.get("label_fraction", float("nan"))), 5),
        }


def open_synth(
    path: str | Path, names: Sequence[str], what: str = "--data"
) -> tuple[list, tuple[float, float, float], dict]:
    """The arrays ``names`` of a ``connectome synth`` folder's ``truth.zarr`` (zarr arrays, checked:
    3D, one shape, ``raw`` uint8 when asked for), its voxel size (z, y, x) nm and ``synth.json``."""
    import zarr

    path = Path(path)
    truth = path / "truth.zarr"
    if not path.is_dir():
        raise UserInputError(f"{what} {path}: not found")
    if not (truth / "zarr.json").is_file():
        raise UserInputError(f"{what} {path}: no truth.zarr inside (expected a `connectome synth` output folder)")
    try:
        g = zarr.open_group(str(truth), mode="r")
        arrays = [g[n] for n in names]
    except KeyError as exc:
        raise UserInputError(f"{what} {path}: truth.zarr lacks the array {exc}") from None
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds for broken metadata
        raise UserInputError(f"{what} {path}: truth.zarr is not readable ({exc})") from None
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 3:
        raise UserInputError(
            f"{what} {path}: "
            + " and ".join(f"{n} {list(a.shape)}" for n, a in zip(names, arrays))
            + " must be 3D arrays of one shape"
        )
    if "raw" in names and np.dtype(arrays[list(names).index("raw")].dtype) != np.uint8:
        raise UserInputError(f"{what} {path}: raw must be uint8, got {arrays[list(names).index('raw')].dtype}")
    vs = arrays[0].attrs.get("voxel_size_nm") or g.attrs.get("voxel_size_nm")
    meta: dict = {}
    if (path / "synth.json").is_file():
        try:
            meta = json.loads((path / "synth.json").read_text())
        except (OSError, ValueError):
            meta = {}
        vs = vs or meta.get("voxel_size_nm")
    if not vs or len(vs) != 3:
        raise UserInputError(f"{what} {path}: truth.zarr/{names[0]} has no voxel_size_nm attribute [z, y, x]")
    return arrays, tuple(float(v) for v in vs), meta


def load_synth_volume(
    path: str | Path, label: str = "vessels", max_positives: int = 20000, seed: int = 0
) -> LabelledVolume:
    """A ``connectome synth`` output folder: ``truth.zarr/{raw, <label>}`` (+ ``synth.json``)."""
    path = Path(path)
    (raw_a, lab_a), vs, meta = open_synth(path, ["raw", label])
    raw = np.asarray(raw_a[:])
    lab = (np.asarray(lab_a[:]) != 0).astype(np.uint8)
    rng = np.random.default_rng(seed)
    pos = []
    per = max(1, max_positives // max(1, raw.shape[0]))
    for z in range(lab.shape[0]):
        ys, xs = np.nonzero(lab[z])
        if len(ys):
            pick = rng.choice(len(ys), size=min(per, len(ys)), replace=False)
            pos.append(np.stack([np.full(len(pick), z), ys[pick], xs[pick]], axis=1))
    meta = {**meta, "label_fraction": float(lab.mean())}
    return LabelledVolume(
        path, raw, lab, tuple(float(v) for v in vs), meta, np.concatenate(pos) if pos else np.zeros((0, 3), np.int64)
    )


# ---------------------------------------------------------------------------------------------
# examples


@dataclass(frozen=True)
class ExampleSpec:
    volume: int
    z: int
    centre_yx: tuple[int, int]
    scale: float  # model pixel = factor * scale raw pixels


def crop_example(
    vol: LabelledVolume, factor: int, z_context: int, tile: int, spec: ExampleSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(tile, tile, z_context)`` in [0, 1] and label fraction ``(tile, tile, 1)``.

    At ``scale == 1`` this is exactly the inference downsampling (area mean by ``factor``);
    otherwise the crop is area-averaged by the integer part and linearly resampled to ``tile``.
    """
    from scipy.ndimage import zoom

    eff = factor * spec.scale
    k = max(1, int(np.floor(eff + 1e-9)))
    m = max(2, int(round(tile * eff / k)))
    side = m * k
    cy, cx = spec.centre_yx
    y0, x0 = cy - side // 2, cx - side // 2
    c = z_context // 2
    img = take_reflected(vol.raw, (spec.z - c, y0, x0), (spec.z + c + 1, y0 + side, x0 + side))
    lab = take_reflected(vol.label, (spec.z, y0, x0), (spec.z + 1, y0 + side, x0 + side))
    img = downsample_mean(img, k) / 255.0
    lab = downsample_mean(lab, k)
    if m != tile:
        f = tile / m
        img = np.stack([zoom(s, f, order=1, mode="nearest", grid_mode=True) for s in img])
        lab = np.stack([zoom(s, f, order=1, mode="nearest", grid_mode=True) for s in lab])
        img, lab = img[:, :tile, :tile], lab[:, :tile, :tile]
    return (np.moveaxis(img, 0, -1).astype(np.float32), np.clip(np.moveaxis(lab, 0, -1), 0, 1).astype(np.float32))


def draw_spec(
    rng: np.random.Generator,
    vols: Sequence[LabelledVolume],
    candidates: Sequence[int],
    factor_of,
    tile: int,
    scale_range: tuple[float, float],
    positive_fraction: float,
) -> ExampleSpec:
    """A random example: volume (uniform over ``candidates``), scale (log-uniform), and a centre
    on a label voxel (with probability ``positive_fraction``, jittered) or anywhere."""
    v = int(candidates[int(rng.integers(len(candidates)))])
    vol = vols[v]
    lo, hi = scale_range
    scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
    zdim, ydim, xdim = vol.raw.shape
    if len(vol.positives) and rng.random() < positive_fraction:
        z, y, x = vol.positives[int(rng.integers(len(vol.positives)))]
        half = int(tile * factor_of(vol) * scale / 3)
        y, x = y + int(rng.integers(-half, half + 1)), x + int(rng.integers(-half, half + 1))
    else:
        z, y, x = int(rng.integers(zdim)), int(rng.integers(ydim)), int(rng.integers(xdim))
    return ExampleSpec(v, int(z), (int(np.clip(y, 0, ydim - 1)), int(np.clip(x, 0, xdim - 1))), scale)


def validation_specs(
    vols: Sequence[LabelledVolume], factor_of, tile: int, per_volume: int, seed: int
) -> list[ExampleSpec]:
    """A fixed validation set at scale 1: half centred on label voxels, half anywhere."""
    rng = np.random.default_rng([seed, 7919])
    specs = []
    for v in range(len(vols)):
        for i in range(per_volume):
            specs.append(draw_spec(rng, vols, [v], factor_of, tile, (1.0, 1.0), 0.5 if i % 2 == 0 else 0.0))
    return specs


def adjust_stats(stats: IntensityStats, g, noise_sigma: float) -> IntensityStats:
    """Stats of the volume after the monotone point map ``g`` and added noise (approximation:
    percentiles map through ``g``; the spread grows like sqrt(s^2 + sigma^2))."""
    p5, p50, p95 = (float(v) for v in g(np.array([stats.p5, stats.p50, stats.p95], np.float32)))
    if noise_sigma:
        half = (p95 - p5) / 2
        grown = float(np.sqrt(half**2 + (noise_sigma * SPREAD_TO_SIGMA / 2) ** 2))
        p5, p95 = p50 - (p50 - p5) * grown / max(half, 1e-6), p50 + (p95 - p50) * grown / max(half, 1e-6)
    return IntensityStats(p5, p50, p95)


def volume_factor(vol: LabelledVolume, model_voxel_nm: float) -> int:
    return model_factor(model_voxel_nm, vol.voxel_size_nm[1], f"--data {vol.path}")


def check_disjoint(train: Sequence[LabelledVolume], val: Sequence[LabelledVolume]) -> None:
    """Validation volumes must not be training volumes (same folder, or same generator seed)."""

    def key(v):
        m = v.meta
        return (
            (m.get("generator"), m.get("seed"), m.get("preset"), tuple(v.raw.shape))
            if m.get("seed") is not None
            else None
        )

    train_paths = {v.path.resolve() for v in train}
    train_keys = {key(v) for v in train if key(v) is not None}
    for v in val:
        if v.path.resolve() in train_paths:
            raise UserInputError(f"--val {v.path}: is also a training volume (--data)")
        if key(v) is not None and key(v) in train_keys:
            raise UserInputError(
                f"--val {v.path}: has the same generator seed ({v.meta.get('seed')}) as a "
                "training volume; validate on a held-out seed"
            )
