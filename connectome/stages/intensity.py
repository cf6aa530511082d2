"""Intensity conversion of imported volumes to the workspace's uint8 ``raw``.

The rule (stated here once, recorded in ``raw``'s ``intensity`` attribute):

* uint8 input is copied unchanged.
* uint16 input is mapped linearly ``v -> round(255 * clip((v - lo) / (hi - lo), 0, 1))``, where
  ``lo, hi`` are, by default, the 0.1th and 99.9th percentiles of a deterministic sample: up to
  16 evenly spaced sections, each strided to at most ~1024 x 1024 pixels. ``--intensity-range
  LO,HI`` fixes them instead; ``rescale: minmax`` uses the sample's min and max.

Every block uses the same ``lo, hi`` (computed once, before any block runs), so blockwise
conversion is identical to converting the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connectome.blockwise.geometry import Box


@dataclass(frozen=True)
class IntensityMap:
    rule: str  # "copy" | "linear"
    lo: float = 0.0
    hi: float = 255.0

    def apply(self, data: np.ndarray) -> np.ndarray:
        if self.rule == "copy":
            return data.astype(np.uint8, copy=False)
        scale = 255.0 / max(self.hi - self.lo, 1e-9)
        out = (data.astype(np.float32) - np.float32(self.lo)) * np.float32(scale)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def to_json(self) -> dict:
        return {"rule": self.rule, "lo": self.lo, "hi": self.hi}


def sample_sections(source, max_sections: int = 16, max_side: int = 1024) -> np.ndarray:
    z, y, x = source.shape_zyx
    zs = np.unique(np.linspace(0, z - 1, min(z, max_sections)).round().astype(int))
    sy, sx = max(1, -(-y // max_side)), max(1, -(-x // max_side))
    parts = [source.read(Box((int(k), 0, 0), (int(k) + 1, y, x)))[0, ::sy, ::sx].ravel() for k in zs]
    return np.concatenate(parts)


def choose_map(
    source, rescale: str, percentiles: tuple[float, float], intensity_range: tuple[float, float] | None
) -> IntensityMap:
    if source.dtype == "uint8" and intensity_range is None:
        return IntensityMap("copy")
    if intensity_range is not None:
        lo, hi = intensity_range
    else:
        sample = sample_sections(source)
        if rescale == "minmax":
            lo, hi = float(sample.min()), float(sample.max())
        else:
            lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        hi = lo + 1.0
    return IntensityMap("linear", float(lo), float(hi))
