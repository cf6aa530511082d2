"""Seeded randomness that does not depend on how the volume is cut into blocks.

* :func:`rng` gives an independent generator per purpose: ``rng(seed, "neurites")``,
  ``rng(seed, "section", 12)``. Keys are ints or strings (hashed with CRC32, stable across runs
  and platforms), so adding a new purpose never shifts the random numbers of another.
* :func:`white_noise` returns standard-normal noise for any (y, x) window of a section. The
  noise is stored nowhere: it is assembled from fixed 128 x 128 px tiles, each drawn from its own
  generator keyed by (seed, key, section, tile row, tile column). Two blocks that overlap see
  the same numbers in the overlap, so smoothed textures and detector noise are seamless across
  block borders and identical whatever the block shape.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage as ndi

NOISE_TILE = 128
_OFFSET = 1 << 24  # keeps tile indices of the negative margins non-negative


def _key(k) -> int:
    if isinstance(k, str):
        return zlib.crc32(k.encode())
    k = int(k)
    if k < 0:
        raise ValueError(f"random key must be >= 0, got {k}")
    return k


def rng(seed: int, *keys) -> np.random.Generator:
    """An independent generator for (seed, *keys)."""
    return np.random.default_rng(np.random.SeedSequence([_key(seed), *(_key(k) for k in keys)]))


def white_noise(seed: int, key: str, section: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Standard-normal float32 noise of the window [y0, y1) x [x0, x1) of one section."""
    t = NOISE_TILE
    out = np.empty((y1 - y0, x1 - x0), np.float32)
    for ty in range(y0 // t, -(-y1 // t)):
        for tx in range(x0 // t, -(-x1 // t)):
            tile = rng(seed, key, section, ty + _OFFSET, tx + _OFFSET).standard_normal((t, t), dtype=np.float32)
            ya, yb = max(y0, ty * t), min(y1, (ty + 1) * t)
            xa, xb = max(x0, tx * t), min(x1, (tx + 1) * t)
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[ya - ty * t : yb - ty * t, xa - tx * t : xb - tx * t]
    return out


def smooth_noise(
    seed: int, key: str, section: int, y0: int, y1: int, x0: int, x1: int, sigma_px: float, halo: int | None = None
) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation, seamless across windows."""
    h = int(np.ceil(4 * sigma_px)) if halo is None else halo
    w = white_noise(seed, key, section, y0 - h, y1 + h, x0 - h, x1 + h)
    s = ndi.gaussian_filter(w, sigma_px, mode="nearest", truncate=4.0)
    s *= 2.0 * np.sqrt(np.pi) * sigma_px  # unit variance for 2-D white noise
    return s[h : h + (y1 - y0), h : h + (x1 - x0)]
