"""Augmentation for robustness to imaging that differs from the training data.

Applied per example, in numpy, to an image ``(H, W, C)`` with values in [0, 1] (C = adjacent
sections) and its label ``(H, W, K)``; every draw comes from the ``rng`` passed in (no global
state), so an example is a pure function of its seed.

Geometric (image and label together):
  * the 8 symmetries of the square (flips, rotations by 90 degrees, transposition);
  * a smooth elastic deformation (random displacements on a coarse grid, cubic upsampling).

Intensity (image only), in this order:
  * per-section jitter of gain/offset (section-to-section staining and detector drift);
  * a monotone point map ``g``: contrast about mid-gray, brightness shift, gamma;
  * a smooth multiplicative illumination gradient;
  * Gaussian blur (focus, coarser PSF) and Gaussian noise (white or spatially correlated);
  * section defects: one context section replaced by a neighbour, a shifted copy
    (misalignment) or a blank (missing section).

:func:`intensity_augment` also returns the point map ``g`` (and the added noise) so the caller
can transform the volume's intensity statistics consistently (see :mod:`unet.data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    dihedral: bool = True
    elastic_prob: float = 0.3
    elastic_sigma_px: float = 2.0
    elastic_spacing_px: int = 32
    section_jitter: float = 0.03
    contrast_range: tuple[float, float] = (0.6, 1.5)
    brightness: float = 0.15
    gamma_range: tuple[float, float] = (0.6, 1.7)
    illumination: float = 0.15
    blur_prob: float = 0.3
    blur_sigma_range: tuple[float, float] = (0.3, 1.3)
    noise_prob: float = 0.7
    noise_sigma_range: tuple[float, float] = (0.0, 0.08)
    correlated_noise_prob: float = 0.3
    defect_prob: float = 0.08

    def __post_init__(self):
        for name in ("elastic_prob", "blur_prob", "noise_prob", "correlated_noise_prob", "defect_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("contrast_range", "gamma_range", "blur_sigma_range", "noise_sigma_range"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name} must be [low, high] with 0 <= low <= high, got {[lo, hi]}")
        if self.elastic_spacing_px < 4:
            raise ValueError("elastic_spacing_px must be >= 4")


def dihedral(arrays: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Symmetry ``k`` in 0..7 of the square applied to the first two axes of every array."""
    out = []
    for a in arrays:
        if k & 4:
            a = np.swapaxes(a, 0, 1)
        a = np.rot90(a, k & 3, axes=(0, 1))
        out.append(np.ascontiguousarray(a))
    return out


def elastic(
    arrays: list[np.ndarray], rng: np.random.Generator, sigma_px: float, spacing_px: int, orders: list[int]
) -> list[np.ndarray]:
    """Warp every array by one smooth random displacement field (reflecting at the border)."""
    from scipy.ndimage import map_coordinates, zoom

    h, w = arrays[0].shape[:2]
    gh, gw = max(2, h // spacing_px + 2), max(2, w // spacing_px + 2)
    fields = []
    for _ in range(2):
        coarse = rng.normal(0.0, sigma_px, size=(gh, gw))
        fields.append(zoom(coarse, (h / gh, w / gw), order=3, mode="nearest")[:h, :w])
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    coords = [yy + fields[0], xx + fields[1]]
    out = []
    for a, order in zip(arrays, orders):
        chans = [map_coordinates(a[..., c], coords, order=order, mode="reflect") for c in range(a.shape[-1])]
        out.append(np.stack(chans, axis=-1).astype(a.dtype))
    return out


def geometric_augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    if not cfg.enabled:
        return image, label
    if cfg.dihedral:
        image, label = dihedral([image, label], int(rng.integers(8)))
    if rng.random() < cfg.elastic_prob:
        image, label = elastic([image, label], rng, cfg.elastic_sigma_px, cfg.elastic_spacing_px, [1, 1])
    return image, label


def _uniform(rng, lo_hi):
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def intensity_augment(
    image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], float]:
    """Returns (augmented image in [0, 1], the monotone point map g applied, noise sigma added)."""
    from scipy.ndimage import gaussian_filter

    if not cfg.enabled:
        return image, (lambda v: v), 0.0
    img = image.astype(np.float32, copy=True)
    h, w, c = img.shape
    if cfg.section_jitter:
        gain = 1.0 + rng.normal(0, cfg.section_jitter, size=c).astype(np.float32)
        off = rng.normal(0, cfg.section_jitter, size=c).astype(np.float32)
        img = img * gain + off
    contrast = _uniform(rng, cfg.contrast_range)
    bright = float(rng.uniform(-cfg.brightness, cfg.brightness)) if cfg.brightness else 0.0
    lo, hi = cfg.gamma_range
    gamma = float(np.exp(rng.uniform(np.log(max(lo, 1e-3)), np.log(max(hi, 1e-3))))) if hi > lo else float(lo)

    def g(v):
        v = np.clip((np.asarray(v, np.float32) - 0.5) * contrast + 0.5 + bright, 0.0, 1.0)
        return v**gamma

    img = g(img)
    if cfg.illumination:
        ramp_y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        ramp_x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        a, b = rng.uniform(-cfg.illumination, cfg.illumination, 2)
        img = img * (1.0 + 0.5 * (a * ramp_y + b * ramp_x))[..., None]
    if rng.random() < cfg.blur_prob:
        s = _uniform(rng, cfg.blur_sigma_range)
        img = gaussian_filter(img, (s, s, 0), mode="reflect")
    noise_sigma = 0.0
    if rng.random() < cfg.noise_prob:
        noise_sigma = _uniform(rng, cfg.noise_sigma_range)
        noise = rng.normal(0.0, 1.0, size=img.shape).astype(np.float32)
        if rng.random() < cfg.correlated_noise_prob:
            noise = gaussian_filter(noise, (0.8, 0.8, 0), mode="wrap")
            noise /= max(1e-6, float(noise.std()))
        img = img + noise_sigma * noise
    if c > 1 and rng.random() < cfg.defect_prob:
        centre = c // 2
        k = int(rng.choice([i for i in range(c) if i != centre]))
        kind = int(rng.integers(3))
        if kind == 0:
            img[..., k] = img[..., centre]
        elif kind == 1:
            dy, dx = rng.integers(-4, 5, size=2)
            img[..., k] = np.roll(img[..., k], (int(dy), int(dx)), axis=(0, 1))
        else:
            img[..., k] = float(img[..., centre].mean())
    return np.clip(img, 0.0, 1.0), g, noise_sigma
