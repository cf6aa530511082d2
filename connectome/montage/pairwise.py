"""Registration of two images: overlap strips of neighbouring tiles (normalised cross-correlation)
and square patches of consecutive sections (windowed phase correlation), each with a subpixel
peak and the quality measures used to accept or reject the match.

Displacement convention
-----------------------
A *displacement* ``d = (dy, dx)`` of ``moving`` relative to ``fixed`` means that the content
at point ``q`` of ``fixed`` is found at ``q + d`` in ``moving``::

    moving(q + d) ~= fixed(q)

For tiles this is the offset of tile b's top-left relative to tile a's in the montage:
``pos_b = pos_a + offset`` with tile b's pixel ``[i, j]`` showing what tile a shows at
``[i + offset_y, j + offset_x]``.

Peak quality (both matchers)
----------------------------
On the correlation surface ``C`` (one value per integer displacement):

* ``peak``       the maximum of ``C`` (an NCC in [-1, 1] for strips; the normalised phase
  correlation in [0, 1] for patches);
* ``peak_ratio`` ``peak / second`` where ``second`` is the highest *local maximum* of ``C``
  farther than ``exclusion_px`` from the peak (inf when there is none or it is <= 0);
  SOFIMA and AlignEM-SWiFT accept matches with a ratio >= ~1.6 on whitened surfaces;
* ``sharpness``  ``1 - mean(C on the ring at Chebyshev distance 2) / peak``: 0 for a flat
  surface, 1 for a single spike;
* ``at_border``  the peak lies on the edge of the searched range, so the true peak may lie
  outside it (always rejected).

The subpixel position is a separable three-point fit around the integer peak (Gaussian fit on
the log of positive values, parabola otherwise), clipped to +/-0.5 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Peak:
    """Best displacement on a correlation surface and its quality."""

    dy: float
    dx: float
    peak: float
    peak_ratio: float
    sharpness: float
    at_border: bool


def _subpixel(c_minus: float, c0: float, c_plus: float) -> float:
    if c_minus > 0 and c0 > 0 and c_plus > 0:
        lm, l0, lp = np.log(c_minus), np.log(c0), np.log(c_plus)
        den = lm - 2 * l0 + lp
    else:
        lm, l0, lp = c_minus, c0, c_plus
        den = lm - 2 * l0 + lp
    if den >= 0:  # not a maximum along this axis (flat or saddle)
        return 0.0
    return float(np.clip((lm - lp) / (2 * den), -0.5, 0.5))


def analyse_surface(corr: np.ndarray, center_yx: tuple[int, int], exclusion_px: int = 2) -> Peak:
    """The peak of a correlation surface whose element ``center_yx`` is displacement (0, 0)."""
    c = np.asarray(corr, dtype=np.float64)
    h, w = c.shape
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    best = float(c[iy, ix])
    at_border = iy == 0 or ix == 0 or iy == h - 1 or ix == w - 1
    # second-highest local maximum outside the exclusion zone
    local_max = (ndimage.maximum_filter(c, size=3, mode="nearest") == c)
    yy, xx = np.ogrid[:h, :w]
    far = np.maximum(np.abs(yy - iy), np.abs(xx - ix)) > exclusion_px
    candidates = c[local_max & far]
    second = float(candidates.max()) if candidates.size else -np.inf
    ratio = best / second if second > 0 else np.inf
    ring = c[max(iy - 2, 0):iy + 3, max(ix - 2, 0):ix + 3]
    ring_mask = np.maximum(np.abs(yy[max(iy - 2, 0):iy + 3] - iy), np.abs(xx[:, max(ix - 2, 0):ix + 3] - ix)) == 2
    ring_vals = ring[ring_mask]
    sharp = 1.0 - float(ring_vals.mean()) / best if (ring_vals.size and best > 0) else 0.0
    sy = sx = 0.0
    if not at_border:
        sy = _subpixel(c[iy - 1, ix], best, c[iy + 1, ix])
        sx = _subpixel(c[iy, ix - 1], best, c[iy, ix + 1])
    return Peak(dy=iy + sy - center_yx[0], dx=ix + sx - center_yx[1], peak=best, peak_ratio=float(ratio),
                sharpness=sharp, at_border=bool(at_border))


# ---------------------------------------------------------------------------------------------
# overlap strips of neighbouring tiles

@dataclass(frozen=True)
class OverlapMatch:
    """Offset of tile b relative to tile a (``pos_b - pos_a``, (y, x) px) and its quality."""

    offset_yx: tuple[float, float]
    peak: Peak
    search_px: int          # the +/- range searched around the nominal offset
    overlap_px: int         # width of the nominal overlap (the narrow side)


def _template_range(size: int, d0: int, j: int) -> tuple[int, int]:
    """Rows (or cols) of b, ``[lo, hi)``, that stay inside a shrunk by ``j`` for offset ``d0``."""
    return max(0, j - d0), min(size, size - j - d0)


def overlap_search(shape_hw: tuple[int, int], offset0_yx: tuple[int, int], max_shift_px: int,
                   min_template_px: int) -> int:
    """The largest search range ``j <= max_shift_px`` leaving a template of at least
    ``min_template_px`` along both axes; 0 if even ``j = 1`` does not."""
    for j in range(int(max_shift_px), 0, -1):
        ok = True
        for size, d0 in zip(shape_hw, offset0_yx):
            lo, hi = _template_range(size, d0, j)
            ok &= (hi - lo) >= min_template_px
        if ok:
            return j
    return 0


def prefilter(image: np.ndarray, sigma_px: float, highpass_px: float) -> np.ndarray:
    """Float32 copy, Gaussian-smoothed (noise) and optionally high-passed (shading)."""
    img = np.asarray(image, dtype=np.float32)
    out = ndimage.gaussian_filter(img, sigma_px) if sigma_px > 0 else img
    if highpass_px > 0:
        out = out - ndimage.gaussian_filter(img, highpass_px)
    return out


def match_overlap(a: np.ndarray, b: np.ndarray, offset0_yx: tuple[float, float], max_shift_px: int = 12,
                  min_template_px: int = 8, exclusion_px: int = 2) -> OverlapMatch | None:
    """Register tile b against tile a around the nominal offset ``offset0_yx`` (b relative to a).

    ``a`` and ``b`` are prefiltered images of equal shape. The template is the part of b that
    overlaps a for every displacement within ``+/-search_px`` of the nominal offset; the NCC of
    the template against a is computed for all those displacements at once (FFT-based, via
    ``skimage.feature.match_template``). Returns None if the tiles do not overlap enough.
    """
    from skimage.feature import match_template

    h, w = a.shape
    d0 = (int(round(offset0_yx[0])), int(round(offset0_yx[1])))
    j = overlap_search((h, w), d0, max_shift_px, min_template_px)
    if j == 0:
        return None
    (r0, r1), (c0, c1) = _template_range(h, d0[0], j), _template_range(w, d0[1], j)
    template = b[r0:r1, c0:c1]
    search = a[r0 + d0[0] - j:r1 + d0[0] + j, c0 + d0[1] - j:c1 + d0[1] + j]
    if template.std() < 1e-6 or search.std() < 1e-6:
        corr = np.zeros((2 * j + 1, 2 * j + 1))
    else:
        corr = match_template(search, template)
    pk = analyse_surface(corr, (j, j), exclusion_px)
    if not pk.at_border and pk.peak > 0:
        dy, dx = refine_shift(search, template, (j + pk.dy, j + pk.dx))
        if abs(dy - j - pk.dy) < 1.0 and abs(dx - j - pk.dx) < 1.0:
            pk = Peak(dy - j, dx - j, pk.peak, pk.peak_ratio, pk.sharpness, pk.at_border)
    overlap = min(h - abs(d0[0]), w - abs(d0[1]))
    return OverlapMatch((d0[0] + pk.dy, d0[1] + pk.dx), pk, j, int(overlap))


def refine_shift(search: np.ndarray, template: np.ndarray, start_yx: tuple[float, float],
                 iterations: int = 6) -> tuple[float, float]:
    """Gauss-Newton (Lucas-Kanade) refinement of where ``template`` sits in ``search``:
    minimises ``sum (search(p + s) - g * template(p) - o)^2`` over the shift ``s`` (and a gain
    ``g`` and offset ``o``), with ``search`` resampled by cubic splines. Returns ``s``."""
    ty, tx = np.mgrid[:template.shape[0], :template.shape[1]].astype(np.float64)
    coeffs = ndimage.spline_filter(np.asarray(search, dtype=np.float64), order=3)
    gy, gx = np.gradient(np.asarray(search, dtype=np.float64))
    t = np.asarray(template, dtype=np.float64).ravel()
    s = np.array(start_yx, dtype=np.float64)
    for _ in range(iterations):
        c = [ty + s[0], tx + s[1]]
        i = ndimage.map_coordinates(coeffs, c, order=3, prefilter=False, mode="nearest").ravel()
        dy = ndimage.map_coordinates(gy, c, order=1, mode="nearest").ravel()
        dx = ndimage.map_coordinates(gx, c, order=1, mode="nearest").ravel()
        a = np.stack([dy, dx, -t, -np.ones_like(t)], axis=1)
        step = np.linalg.lstsq(a, -i, rcond=None)[0]
        s += np.clip(step[:2], -0.5, 0.5)
        if np.abs(step[:2]).max() < 1e-3:
            break
    return float(s[0]), float(s[1])


# ---------------------------------------------------------------------------------------------
# square patches (section alignment)

def hann2d(n: int) -> np.ndarray:
    w = np.hanning(n + 2)[1:-1]
    return np.outer(w, w).astype(np.float32)


def phase_correlate(fixed: np.ndarray, moving: np.ndarray, max_shift_px: float, peak_sigma_px: float = 1.0,
                    exclusion_px: int = 3) -> list[Peak]:
    """Displacements of ``moving`` relative to ``fixed`` for stacks of square patches
    ``(n, P, P)``: windowed (Hann) phase correlation whose peak is smoothed by a Gaussian of
    ``peak_sigma_px`` (so the three-point Gaussian fit is nearly unbiased), searched within
    ``+/-max_shift_px``. Patches with no contrast give ``peak = 0``.
    """
    f = np.asarray(fixed, dtype=np.float32)
    m = np.asarray(moving, dtype=np.float32)
    n, p, _ = f.shape
    win = hann2d(p)
    f = (f - f.mean(axis=(1, 2), keepdims=True)) * win
    m = (m - m.mean(axis=(1, 2), keepdims=True)) * win
    ff = np.fft.rfft2(f)
    fm = np.fft.rfft2(m)
    cross = fm * np.conj(ff)
    mag = np.abs(cross)
    cross /= np.maximum(mag, 1e-6 * np.maximum(mag.max(axis=(1, 2), keepdims=True), 1e-12))
    ky = np.fft.fftfreq(p)[:, None]
    kx = np.fft.rfftfreq(p)[None, :]
    cross *= np.exp(-2 * (np.pi * peak_sigma_px) ** 2 * (ky ** 2 + kx ** 2)).astype(np.float32)
    corr = np.fft.irfft2(cross, s=(p, p))
    corr = np.fft.fftshift(corr, axes=(1, 2))  # displacement 0 at [p//2, p//2]
    # normalise so that a perfect match peaks at 1
    gain = np.exp(-2 * (np.pi * peak_sigma_px) ** 2 * (np.fft.fftfreq(p)[:, None] ** 2 + np.fft.fftfreq(p)[None, :] ** 2)).mean()
    corr /= gain
    r = int(min(np.ceil(max_shift_px) + 1, p // 2 - 1))
    cen = p // 2
    out = []
    for i in range(n):
        if not np.any(f[i]) or not np.any(m[i]):
            out.append(Peak(0.0, 0.0, 0.0, 0.0, 0.0, True))
            continue
        sub = corr[i, cen - r:cen + r + 1, cen - r:cen + r + 1]
        out.append(analyse_surface(sub, (r, r), exclusion_px))
    return out
