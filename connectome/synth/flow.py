"""Content flow: the mean in-plane motion of the tissue content from one section to the next.

Content-based section alignment cannot tell the drift of a section from a consistent motion of
the tissue content between sections (neurites running obliquely in a common direction): both
shift the next section's image the same way. This module measures that motion on the
undistorted, aligned truth volume (``truth.zarr/raw``), so that it can be reported
(``synth.json`` -> ``statistics.content_flow``) and compared with what an aligner recovers.

Sign convention: a flow ``(dy, dx)`` for the pair (z, z+1) means that content at ``(y, x)`` in
section z appears at ``(y + dy, x + dx)`` in section z+1 (px per section, y then x).

Method (``METHOD``): each section is cut into half-overlapping square patches (``patch_px``,
default 128; the whole section if it is smaller), each multiplied by a 2D Hann window (at half
overlap the windows add up to a nearly flat weight, so every part of the section counts alike). For
each patch and the same patch of the next section, the normalised cross-power spectrum (phase
correlation) is formed; the patches' spectra are summed (a consensus over the section, much
steadier than a median of per-patch peaks when content moves in many directions) and weighted
by a Gaussian (sigma ``sigma_px`` in the correlation plane), so the correlation peak is a
Gaussian whose centre a three-point log-parabola fit per axis gives to ~0.01 px for a pure
shift. The pair's flow is that peak: the dominant, consistent motion of the content. The
statistic is the mean over pairs, its magnitude and the standard deviation over pairs. When the
content moves in many directions (the default, isotropic neuropil) the value depends somewhat
on the patch size; when a population moves coherently (oriented fibres) it is that motion.

Memory: :class:`FlowMeter` takes the sections one at a time, in z order, and keeps only the
previous section's patch spectra, so the volume never has to be held whole.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from scipy import fft as sfft

PATCH_PX = 128
SIGMA_PX = 1.2
METHOD = (
    "phase correlation of Hann-windowed, half-overlapping {p} px patches, cross-power summed over the "
    "patches and Gaussian-weighted (sigma {s} px), log-parabola subpixel peak per consecutive pair; mean and "
    "std over pairs; flow (dy, dx) = content at (y, x) in section z appears at (y + dy, x + dx) in z+1"
)


class FlowMeter:
    """Accumulates the content flow of consecutive sections given one at a time in z order."""

    def __init__(self, patch_px: int = PATCH_PX, sigma_px: float = SIGMA_PX):
        self.patch_px = int(patch_px)
        self.sigma_px = float(sigma_px)
        self._prev: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self._gauss: np.ndarray | None = None
        self._win: np.ndarray | None = None
        #: (dy, dx) of each consecutive pair so far (NaN for a pair with no texture at all)
        self.pairs: list[tuple[float, float]] = []

    def _spectra(self, section: np.ndarray) -> np.ndarray:
        h, w = section.shape
        p = min(self.patch_px, h, w)
        step = max(1, p // 2)
        ys, xs = _starts(h, p, step), _starts(w, p, step)
        a = np.asarray(section, np.float32)
        patches = np.stack([a[y : y + p, x : x + p] for y in ys for x in xs])
        patches -= patches.mean(axis=(1, 2), keepdims=True)
        if self._gauss is None:
            win = np.hanning(p + 2)[1:-1].astype(np.float32)
            self._win = np.outer(win, win)
            fy, fx = sfft.fftfreq(p)[:, None], sfft.rfftfreq(p)[None, :]
            self._gauss = np.exp(-2.0 * np.pi**2 * self.sigma_px**2 * (fy**2 + fx**2)).astype(np.float32)
        return sfft.rfft2(patches * self._win, axes=(1, 2))

    def add(self, section: np.ndarray) -> None:
        """The next section (2D, any real dtype); sections must all have one shape."""
        section = np.asarray(section)
        if section.ndim != 2:
            raise ValueError(f"FlowMeter.add: expected a 2D section, got shape {section.shape}")
        if self._shape is not None and section.shape != self._shape:
            raise ValueError(f"FlowMeter.add: section shape {section.shape} != {self._shape}")
        self._shape = section.shape
        spec = self._spectra(section)
        if self._prev is not None:
            assert self._gauss is not None  # set by _spectra
            self.pairs.append(_pair_shift(self._prev, spec, self._gauss))
        self._prev = spec

    def result(self) -> dict:
        """``statistics.content_flow`` of synth.json (None values when there is no pair)."""
        p = min(self.patch_px, *(self._shape or (self.patch_px,)))
        out: dict[str, Any] = {
            "mean_px_per_section_yx": None,
            "magnitude_px_per_section": None,
            "std_px_yx": None,
            "pairs": 0,
            "method": METHOD.format(p=p, s=self.sigma_px),
        }
        d = np.array([p for p in self.pairs if np.all(np.isfinite(p))], float).reshape(-1, 2)
        out["pairs"] = len(d)
        if len(d):
            mean = d.mean(axis=0)
            out.update(
                mean_px_per_section_yx=[round(float(v), 4) for v in mean],
                magnitude_px_per_section=round(float(np.hypot(*mean)), 4),
                std_px_yx=[round(float(v), 4) for v in d.std(axis=0)],
            )
        return out


def _starts(n: int, p: int, step: int) -> list[int]:
    """Patch origins along one axis: every ``step`` px, the last one flush with the end."""
    starts = list(range(0, n - p + 1, step))
    if starts[-1] != n - p:
        starts.append(n - p)
    return starts


def _pair_shift(spec_a: np.ndarray, spec_b: np.ndarray, gauss: np.ndarray) -> tuple[float, float]:
    """Shift (dy, dx) of b's content relative to a's: peak of the patches' summed correlation."""
    cross = np.conj(spec_a) * spec_b
    cross /= np.maximum(np.abs(cross), 1e-12)
    corr = sfft.irfft2(cross.sum(axis=0) * gauss)
    p = corr.shape[0]
    iy, ix = np.unravel_index(int(corr.argmax()), corr.shape)
    c0 = corr[iy, ix]
    if not c0 > 0:  # a featureless pair (e.g. two constant sections): no shift to measure
        return float("nan"), float("nan")

    def sub(c_m, c_p):
        lm, l0, lp = (np.log(max(c, 1e-6 * c0)) for c in (c_m, c0, c_p))
        den = lm - 2.0 * l0 + lp
        return float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5)) if den < 0 else 0.0

    dy = (iy + p // 2) % p - p // 2 + sub(corr[(iy - 1) % p, ix], corr[(iy + 1) % p, ix])
    dx = (ix + p // 2) % p - p // 2 + sub(corr[iy, (ix - 1) % p], corr[iy, (ix + 1) % p])
    return float(dy), float(dx)


def measure_flow(sections: Iterable[np.ndarray], patch_px: int = PATCH_PX, sigma_px: float = SIGMA_PX) -> dict:
    """Content flow of a stack of sections given in z order (a 3D array or any iterable of 2D)."""
    meter = FlowMeter(patch_px, sigma_px)
    for s in sections:
        meter.add(s)
    return meter.result()
