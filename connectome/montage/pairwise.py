"""Registration of two images: overlap strips of neighbouring tiles (masked normalised
cross-correlation over the variable overlap, then Lucas-Kanade) and square patches of
consecutive sections (windowed phase correlation), each with a subpixel peak and the quality
measures used to accept or reject the match.

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
  SOFIMA and AlignEM-SWiFT accept matches with a ratio >= ~1.6 on whitened surfaces. For
  strips "farther" means outside the peak's main lobe (the connected offsets above halfway
  from the surface's median to the peak, grown by ``exclusion_px``), so the shoulder of a
  broad peak does not count as a second peak;
* ``sharpness``  ``1 - mean(C on the ring at Chebyshev distance 2) / peak``: 0 for a flat
  surface, 1 for a single spike;
* ``at_border``  the peak lies on the edge of the searched range (for strips also: next to an
  offset whose overlap is too small to score), so the true peak may lie outside it.

Strips (:func:`match_overlap`) add the evidence the stitcher decides with: ``ncc`` after
subpixel registration, the significance ``z`` (Fisher z of the NCC times the square root of the
number of independent samples in the overlap, counted from the texture and from the peak's own
width, so a match resting on one large smooth structure counts as little evidence), the
1-sigma ``std_yx`` of the offset, and alternative peaks for repetitive textures.

The subpixel position of patches is a separable three-point fit around the integer peak
(Gaussian fit on the log of positive values, parabola otherwise), clipped to +/-0.5 px; strips
start Lucas-Kanade from it.
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
    local_max = ndimage.maximum_filter(c, size=3, mode="nearest") == c
    yy, xx = np.ogrid[:h, :w]
    far = np.maximum(np.abs(yy - iy), np.abs(xx - ix)) > exclusion_px
    candidates = c[local_max & far]
    second = float(candidates.max()) if candidates.size else -np.inf
    ratio = best / second if second > 0 else np.inf
    ring = c[max(iy - 2, 0) : iy + 3, max(ix - 2, 0) : ix + 3]
    ring_mask = np.maximum(np.abs(yy[max(iy - 2, 0) : iy + 3] - iy), np.abs(xx[:, max(ix - 2, 0) : ix + 3] - ix)) == 2
    ring_vals = ring[ring_mask]
    sharp = 1.0 - float(ring_vals.mean()) / best if (ring_vals.size and best > 0) else 0.0
    sy = sx = 0.0
    if not at_border:
        sy = _subpixel(c[iy - 1, ix], best, c[iy + 1, ix])
        sx = _subpixel(c[iy, ix - 1], best, c[iy, ix + 1])
    return Peak(
        dy=float(iy + sy - center_yx[0]),
        dx=float(ix + sx - center_yx[1]),
        peak=best,
        peak_ratio=float(ratio),
        sharpness=sharp,
        at_border=bool(at_border),
    )


# ---------------------------------------------------------------------------------------------
# overlap strips of neighbouring tiles: masked NCC over the variable overlap


@dataclass(frozen=True)
class Candidate:
    """One possible offset of tile b relative to tile a and the evidence for it."""

    offset_yx: tuple[float, float]  # pos_b - pos_a, (y, x) px, subpixel
    ncc: float  # NCC of the two tiles over their overlap at this offset
    z: float  # significance: atanh(ncc) * sqrt(independent samples - 3)
    std_yx: tuple[float, float]  # 1-sigma uncertainty of the offset along y and x, px
    overlap_hw: tuple[int, int]  # size of the overlap at this offset, px


@dataclass(frozen=True)
class OverlapMatch:
    """Offset of tile b relative to tile a (``pos_b - pos_a``, (y, x) px) and its quality.

    ``peak`` describes the masked-NCC surface: ``dy, dx`` the peak relative to the nominal
    offset, ``peak`` the NCC at the integer peak, ``peak_ratio`` and ``sharpness`` as in the
    module docstring (second peak outside the main lobe), ``at_border`` set when the peak lies
    on the edge of the search or next to an offset whose overlap is below the minimum.
    ``ncc``, ``z``, ``std_yx`` describe the registered (subpixel) offset; ``alternatives``
    are other local maxima of the surface that are nearly as good (periodic or repetitive
    texture), best first, for the solve's loop checks. ``note`` is "" or why there is no
    measurement at all ("no contrast").
    """

    offset_yx: tuple[float, float]
    peak: Peak
    search_px: int  # the +/- range searched around the nominal offset
    overlap_px: int  # width of the nominal overlap (the narrow side)
    ncc: float = 0.0
    z: float = 0.0
    std_yx: tuple[float, float] = (np.inf, np.inf)
    overlap_hw: tuple[int, int] = (0, 0)
    alternatives: tuple[Candidate, ...] = ()
    note: str = ""


def prefilter(image: np.ndarray, sigma_px: float, highpass_px: float) -> np.ndarray:
    """Float32 copy, Gaussian-smoothed (noise) and optionally high-passed (shading)."""
    img = np.asarray(image, dtype=np.float32)
    out = ndimage.gaussian_filter(img, sigma_px) if sigma_px > 0 else img
    if highpass_px > 0:
        out = out - ndimage.gaussian_filter(img, highpass_px)
    return out


def _overlap_1d(size: int, d: np.ndarray):
    """For displacements ``d`` (b relative to a) along one axis of length ``size``: the
    overlap ``[a0, a1)`` in a and ``[b0, b1)`` in b (``b0 = a0 - d``)."""
    a0 = np.maximum(0, d)
    a1 = np.minimum(size, size + d)
    return a0, a1, a0 - d, a1 - d


def _box_sums(img: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Sums of ``img[k, r0[i]:r1[i], c0[j]:c1[j]]`` for all (k, i, j) of a stack of images
    (separable running sums: rows, then columns). Ranges must lie inside the images."""
    k, h, w = img.shape
    p = np.zeros((k, h + 1, w))
    np.cumsum(img, axis=1, out=p[:, 1:])
    rows = p[:, r1] - p[:, r0]
    q = np.zeros((k, len(r0), w + 1))
    np.cumsum(rows, axis=2, out=q[:, :, 1:])
    return q[:, :, c1] - q[:, :, c0]


def _cell_px(*imgs: np.ndarray) -> float:
    """Area (px) of one statistically independent sample of the images' texture:
    ``4 pi var / (var d/dy + var d/dx)`` (= ``4 pi sigma^2`` for white noise smoothed by a
    Gaussian of sigma), clipped to [1, 400]."""
    v = g = 0.0
    for im in imgs:
        if im.shape[0] < 2 or im.shape[1] < 2:
            continue
        v += float(im.var())
        g += float(np.diff(im, axis=0).var()) + float(np.diff(im, axis=1).var())
    return float(np.clip(4 * np.pi * v / g, 1.0, 400.0)) if g > 0 else 400.0


def masked_ncc(a: np.ndarray, b: np.ndarray, d0_yx: tuple[int, int], search_px: int, min_overlap_px: int):
    """NCC of tile b against tile a over their overlap, for every integer offset ``d`` of b
    relative to a within ``d0 +/- search_px`` (Padfield's masked NCC: the statistics of each
    offset are taken over that offset's own overlap, so the overlap area may vary from
    nothing to the whole strip; the cross term by FFT, the means and variances from integral
    images).

    Returns ``(ncc, n_px, valid, dys, dxs, ov_h, ov_w)``: ``ncc[i, j]`` for offset
    ``(dys[i], dxs[j])``; ``valid`` where the overlap is at least ``min_overlap_px`` along both
    axes and both sides have contrast; ``n_px`` the overlap area.
    """
    from scipy import fft

    h, w = a.shape
    dys = np.arange(d0_yx[0] - search_px, d0_yx[0] + search_px + 1)
    dxs = np.arange(d0_yx[1] - search_px, d0_yx[1] + search_px + 1)
    ya0, ya1, yb0, yb1 = _overlap_1d(h, dys)
    xa0, xa1, xb0, xb1 = _overlap_1d(w, dxs)
    ov_h, ov_w = ya1 - ya0, xa1 - xa0
    shape = (len(dys), len(dxs))
    if ov_h.max() < min_overlap_px or ov_w.max() < min_overlap_px:
        return None
    # crops holding every pixel that overlaps for some searched offset
    ok_y, ok_x = ov_h > 0, ov_w > 0
    cay = (int(ya0[ok_y].min()), int(ya1[ok_y].max()))
    cax = (int(xa0[ok_x].min()), int(xa1[ok_x].max()))
    cby = (int(yb0[ok_y].min()), int(yb1[ok_y].max()))
    cbx = (int(xb0[ok_x].min()), int(xb1[ok_x].max()))
    x = np.asarray(a[cay[0] : cay[1], cax[0] : cax[1]], dtype=np.float64)
    y = np.asarray(b[cby[0] : cby[1], cbx[0] : cbx[1]], dtype=np.float64)
    x = x - x.mean()
    y = y - y.mean()
    n = ov_h[:, None].astype(np.float64) * ov_w[None, :]
    # offsets without overlap get empty boxes
    yb0, yb1 = np.where(ok_y, yb0, cby[0]), np.where(ok_y, yb1, cby[0])
    xb0, xb1 = np.where(ok_x, xb0, cbx[0]), np.where(ok_x, xb1, cbx[0])
    ya0, ya1 = np.where(ok_y, ya0, cay[0]), np.where(ok_y, ya1, cay[0])
    xa0, xa1 = np.where(ok_x, xa0, cax[0]), np.where(ok_x, xa1, cax[0])
    s_a, s_aa = _box_sums(np.stack([x, x * x]), ya0 - cay[0], ya1 - cay[0], xa0 - cax[0], xa1 - cax[0])
    s_b, s_bb = _box_sums(np.stack([y, y * y]), yb0 - cby[0], yb1 - cby[0], xb0 - cbx[0], xb1 - cbx[0])
    # circular correlation of length L is exact for lags k in [k_lo, k_hi] if
    # L >= max(len(y) + k_hi, len(x) - k_lo) (only the lags of usable offsets are needed)
    use_y, use_x = ov_h >= min_overlap_px, ov_w >= min_overlap_px
    ky_all, kx_all = dys[use_y] + cby[0] - cay[0], dxs[use_x] + cbx[0] - cax[0]
    fy = fft.next_fast_len(int(max(y.shape[0] + ky_all.max(), x.shape[0] - ky_all.min(), 1)), real=True)
    fx = fft.next_fast_len(int(max(y.shape[1] + kx_all.max(), x.shape[1] - kx_all.min(), 1)), real=True)
    # single precision is plenty for the cross term (relative error ~1e-6 of the overlap's energy)
    fa = fft.rfft2(x.astype(np.float32), (fy, fx))
    fa *= np.conj(fft.rfft2(y.astype(np.float32), (fy, fx)))
    cross = fft.irfft2(fa, (fy, fx))
    # cross[k] = sum_q x[q + k] y[q]; offset d <-> k = d + (b crop start) - (a crop start)
    ky = (dys + cby[0] - cay[0]) % fy
    kx = (dxs + cbx[0] - cax[0]) % fx
    s_ab = cross[np.ix_(ky, kx)]
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.maximum(n, 1.0)
        var_a = s_aa - s_a * s_a / nn
        var_b = s_bb - s_b * s_b / nn
        ncc = (s_ab - s_a * s_b / nn) / np.sqrt(var_a * var_b)
    tiny = 1e-6 * n * max(float(x.var()), float(y.var()), 1e-12)
    valid = (
        (ov_h[:, None] >= min_overlap_px)
        & (ov_w[None, :] >= min_overlap_px)
        & (var_a > tiny)
        & (var_b > tiny)
        & np.isfinite(ncc)
    )
    ncc = np.where(valid, np.clip(ncc, -1.0, 1.0), np.nan)
    assert ncc.shape == shape
    return ncc, n, valid, dys, dxs, ov_h, ov_w


def _bspline3_weights(t: float) -> tuple[float, float, float, float]:
    """Cubic B-spline weights of the nodes at -1, 0, 1, 2 for a point at fraction ``t``."""
    return ((1 - t) ** 3 / 6.0, (3 * t**3 - 6 * t**2 + 4) / 6.0, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6.0, t**3 / 6.0)


def sample_shifted(coeffs: np.ndarray, shift_yx, out_hw) -> np.ndarray:
    """Values of the cubic spline with coefficients ``coeffs`` at the points
    ``(i + shift_y, j + shift_x)``, ``0 <= i < out_h``, ``0 <= j < out_w`` (a translation:
    separable, four taps per axis). The points must keep one node of support inside
    ``coeffs`` (``1 <= shift`` and ``shift + out + 2 <= size``)."""
    out = coeffs
    for axis, (s, n) in enumerate(zip(shift_yx, out_hw)):
        i0 = int(np.floor(s))
        t = float(s - i0)
        ws = _bspline3_weights(t)
        acc = None
        for k, wk in zip((-1, 0, 1, 2), ws):
            sl = [slice(None)] * 2
            sl[axis] = slice(i0 + k, i0 + k + n)
            term = out[tuple(sl)] * wk
            acc = term if acc is None else acc + term
        assert acc is not None
        out = acc
    return out


def refine_offset(
    a: np.ndarray,
    b: np.ndarray,
    d_int: tuple[int, int],
    iterations: int = 8,
    cell_px: float = 1.0,
    shading: bool = True,
    start_yx: tuple[float, float] = (0.0, 0.0),
    tol_px: float = 2e-3,
):
    """Gauss-Newton (Lucas-Kanade) subpixel offset of b relative to a from the integer offset
    ``d_int``: minimises ``sum_q (a(q + d) - g(q) b(q) - o(q))^2`` over the overlap (less a
    few px along the tile edges: the cubic spline needs 2 px of a, and the smoothing before
    matching is unreliable within 3 px of an edge) in ``d`` and a gain ``g`` and offset ``o``
    that are constants, or with ``shading`` linear functions of the position in the overlap
    (so that a difference of shading between the two tiles -- vignetting, which differs most
    across the overlap -- does not pull the offset), with ``a`` resampled by cubic splines. Returns ``(d_yx, ncc, std_yx)`` or None if
    it leaves ``d_int`` by a pixel or more or the overlap is too small. It starts from
    ``d_int + start_yx`` and stops when a step is below ``tol_px``. ``std_yx`` is the
    1-sigma of ``d`` from the fit's residual, inflated by ``cell_px`` (pixels per independent
    sample)."""
    margin = 2
    h, w = a.shape
    dy, dx = int(d_int[0]), int(d_int[1])

    def span(n: int, d: int) -> tuple[int, int]:
        # rows q of b with q and q + d at least `edge` px inside their tiles (smoothing reflects
        # at tile edges); a keeps >= `margin` px for the spline; narrow overlaps keep >= 4 rows
        for edge in (3, 2, 1, 0):
            lo = max(edge, margin - d, edge - d)
            hi = min(n - edge, n - d - margin, n - d - edge)
            if hi - lo >= 4:
                break
        return lo, hi

    (by0, by1), (bx0, bx1) = span(h, dy), span(w, dx)
    if by1 - by0 < 3 or bx1 - bx0 < 3:
        return None
    bt = np.asarray(b[by0:by1, bx0:bx1], dtype=np.float64)
    reg = np.asarray(a[by0 + dy - margin : by1 + dy + margin, bx0 + dx - margin : bx1 + dx + margin], dtype=np.float64)
    coeffs = ndimage.spline_filter(reg, order=3, mode="mirror")
    t = bt.ravel()
    n = float(t.size)
    # photometric model: gain and offset, and (shading) their linear trends across the overlap
    yn = np.repeat(np.linspace(-1.0, 1.0, bt.shape[0]), bt.shape[1])
    xn = np.tile(np.linspace(-1.0, 1.0, bt.shape[1]), bt.shape[0])
    cols = [t, np.ones_like(t)] + ([t * yn, t * xn, yn, xn] if shading else [])
    photo = np.stack(cols, axis=1)
    k = 2 + photo.shape[1]
    ptp = photo.T @ photo
    s = np.clip(np.asarray(start_yx, dtype=np.float64), -0.5, 0.5)
    sol = np.zeros(k)
    normal = np.eye(k)
    for it in range(iterations + 1):
        smp = sample_shifted(coeffs, (margin + s[0], margin + s[1]), bt.shape)
        gy, gx = np.gradient(smp)
        g = np.stack([gy.ravel(), gx.ravel()], axis=1)
        v = smp.ravel()
        # normal equations of [gy, gx, -photo] @ (step_y, step_x, p...) = -v
        gp = g.T @ photo
        normal = np.block([[g.T @ g, -gp], [-gp.T, ptp]])
        rhs = -np.concatenate([g.T @ v, -(photo.T @ v)])
        try:
            sol = np.linalg.solve(normal, rhs)
        except np.linalg.LinAlgError:
            return None
        if it == iterations or np.abs(sol[:2]).max() < tol_px:
            break
        s += np.clip(sol[:2], -0.5, 0.5)
        if np.abs(s).max() >= 0.999:
            return None
    resid = v + g @ sol[:2] - photo @ sol[2:]
    sigma2 = float(resid @ resid) / max(n - k, 1.0) * max(cell_px, 1.0)
    try:
        cov = sigma2 * np.linalg.solve(normal, np.eye(k)[:, :2])[:2]
        std = (float(np.sqrt(max(cov[0, 0], 0.0))), float(np.sqrt(max(cov[1, 1], 0.0))))
    except np.linalg.LinAlgError:
        std = (np.inf, np.inf)
    ts = float(t.sum())
    vc, tc = v - v.mean(), t - ts / n
    den = float(np.sqrt((vc @ vc) * (tc @ tc)))
    ncc = float((vc @ tc) / den) if den > 0 else 0.0
    return (dy + float(s[0]), dx + float(s[1])), ncc, std


def _z(ncc, n_px, cell_px: float):
    r = np.clip(ncc, -0.999, 0.999)
    return np.arctanh(r) * np.sqrt(np.maximum(n_px / cell_px - 3.0, 1.0))


def _peak_cell_px(ncc: np.ndarray, iy: int, ix: int) -> float:
    """Area (px) of one independent sample *as seen by this match*: from the width of the NCC
    peak along y and x (the values 2 px either side, read as a Gaussian autocorrelation
    ``exp(-d^2 / (2 l^2))``): ``2 pi l_y l_x``. A broad peak -- the match rests on large,
    smooth structures -- counts few independent samples, however high its NCC."""
    r0 = ncc[iy, ix]
    if not r0 > 0:
        return 400.0
    ls = []
    for axis in (0, 1):
        vals = []
        for k in (-2, 2):
            j = [iy, ix]
            j[axis] += k
            if 0 <= j[0] < ncc.shape[0] and 0 <= j[1] < ncc.shape[1] and np.isfinite(ncc[j[0], j[1]]):
                vals.append(ncc[j[0], j[1]])
        rho = float(np.clip(np.mean(vals) / r0, 1e-3, 0.999)) if vals else 0.999
        ls.append(-2.0 / np.log(rho))  # l^2
    return float(np.clip(2 * np.pi * np.sqrt(ls[0] * ls[1]), 1.0, 400.0 * 4))


def match_overlap(
    a: np.ndarray,
    b: np.ndarray,
    offset0_yx: tuple[float, float],
    max_shift_px: int = 32,
    min_overlap_px: int = 6,
    prior_sigma_px: float = 15.0,
    exclusion_px: int = 2,
    n_alternatives: int = 2,
    min_template_px: int | None = None,
    quick_search_px: int = 8,
    quick_accept_z: float = 8.0,
) -> OverlapMatch | None:
    """Register tile b against tile a around the nominal offset ``offset0_yx`` (b relative to a).

    ``a`` and ``b`` are prefiltered images of equal shape. Every integer offset within
    ``+/-max_shift_px`` of the nominal one is scored by the masked NCC over its own overlap
    (:func:`masked_ncc`). The peak is the offset of highest posterior score
    ``z|z| / 2 - |d - d0|^2 / (2 prior_sigma_px^2)``: the significance ``z`` of the NCC
    (Fisher z times the square root of the number of independent samples in the overlap,
    counted up to the nominal overlap's area, so a high NCC on a sliver of overlap does not
    beat a slightly lower one over the whole strip, while more overlap than planned earns
    nothing) plus a Gaussian prior on the stage jitter, which only decides between near-equal
    peaks.
    A peak whose overlap is narrower than ``min_overlap_px`` (offsets down to 2 px narrower are
    scored as a guard band) or that touches the edge of what was scored is flagged
    ``at_border``: the true offset may lie beyond. The peak is refined to subpixel precision
    by :func:`refine_offset`. The reported ``z`` counts independent samples by the smaller of
    two estimates, the texture's (:func:`_cell_px`) and the peak's own width
    (:func:`_peak_cell_px`). Returns None if no searched offset overlaps enough.
    (``min_template_px`` is the old name of ``min_overlap_px``.)

    Speed: the search first covers only ``+/-quick_search_px``; its result stands if it is
    beyond doubt -- significance ``z >= quick_accept_z``, a clear peak (peak ratio >= 1.2,
    sharpness >= 0.02) at least 2 px inside that window -- else the full range is searched.
    """
    if min_template_px is not None:
        min_overlap_px = int(min_template_px)
    j = int(max_shift_px)
    if 0 < quick_search_px < j:
        m = _match(a, b, offset0_yx, int(quick_search_px), min_overlap_px, prior_sigma_px, exclusion_px, n_alternatives)
        if (
            m is not None
            and not m.note
            and not m.peak.at_border
            and m.z >= quick_accept_z
            and m.peak.peak_ratio >= 1.2
            and m.peak.sharpness >= 0.02
            and max(abs(m.peak.dy), abs(m.peak.dx)) <= quick_search_px - 2
        ):
            return m
    return _match(a, b, offset0_yx, j, min_overlap_px, prior_sigma_px, exclusion_px, n_alternatives)


def _match(
    a, b, offset0_yx, j: int, min_overlap_px: int, prior_sigma_px: float, exclusion_px: int, n_alternatives: int
) -> OverlapMatch | None:
    h, w = a.shape
    d0 = (int(round(offset0_yx[0])), int(round(offset0_yx[1])))
    nominal_overlap = int(min(h - abs(d0[0]), w - abs(d0[1])))
    guard = max(3, int(min_overlap_px) - 2)
    got = masked_ncc(a, b, d0, j, guard)
    if got is None:
        return None
    ncc, n_px, valid, dys, dxs, ov_h, ov_w = got
    wide = valid & (ov_h[:, None] >= min_overlap_px) & (ov_w[None, :] >= min_overlap_px)
    if not wide.any():
        if (ov_h.max() < min_overlap_px) or (ov_w.max() < min_overlap_px):
            return None
        return OverlapMatch(
            (float(d0[0]), float(d0[1])), Peak(0.0, 0.0, 0.0, 0.0, 0.0, True), j, nominal_overlap, note="no contrast"
        )
    crop = (slice(max(0, d0[0] - j), min(h, h + d0[0] + j)), slice(max(0, d0[1] - j), min(w, w + d0[1] + j)))
    cell = _cell_px(np.asarray(a[crop], dtype=np.float64))
    # selection counts samples up to the nominal overlap only: a larger overlap than planned
    # is no extra evidence for an offset (else on a repetitive texture the offsets a period
    # further in would win by area alone)
    nominal_area = float(max(h - abs(d0[0]), 1) * max(w - abs(d0[1]), 1))
    z = np.where(valid, _z(np.nan_to_num(ncc), np.minimum(n_px, nominal_area), cell), np.nan)
    dev2 = (dys[:, None] - d0[0]) ** 2 + (dxs[None, :] - d0[1]) ** 2
    score = np.where(valid, 0.5 * z * np.abs(z) - dev2 / (2.0 * max(prior_sigma_px, 1e-3) ** 2), -np.inf)
    iy, ix = (int(v) for v in np.unravel_index(int(np.argmax(score)), score.shape))
    # the NCC's own local maximum next to the best score (the score leans to larger overlaps)
    filled = np.where(valid, ncc, -np.inf)
    for _ in range(4):
        y0, y1, x0, x1 = max(iy - 1, 0), min(iy + 2, ncc.shape[0]), max(ix - 1, 0), min(ix + 2, ncc.shape[1])
        win = filled[y0:y1, x0:x1]
        ky, kx = (int(v) for v in np.unravel_index(int(np.argmax(win)), win.shape))
        if (y0 + ky, x0 + kx) == (iy, ix):
            break
        iy, ix = y0 + ky, x0 + kx
    best = float(ncc[iy, ix])
    hh, ww = ncc.shape
    nb = valid[max(iy - 1, 0) : iy + 2, max(ix - 1, 0) : ix + 2]
    at_border = bool(iy == 0 or ix == 0 or iy == hh - 1 or ix == ww - 1 or not nb.all() or not wide[iy, ix])
    # main lobe: connected offsets around the peak above halfway from the median to the peak
    floor = float(np.nanmedian(ncc))
    lobe_lbl, _ = ndimage.label(valid & (filled >= floor + 0.5 * (best - floor)))
    lobe = lobe_lbl == lobe_lbl[iy, ix] if lobe_lbl[iy, ix] else np.zeros_like(valid)
    lobe[iy, ix] = True
    lobe = ndimage.binary_dilation(lobe, iterations=max(int(exclusion_px), 1))
    local_max = (ndimage.maximum_filter(filled, size=3, mode="nearest") == filled) & wide & ~lobe
    second = float(filled[local_max].max()) if local_max.any() else -np.inf
    ratio = best / second if (second > 0 and best > 0) else (np.inf if best > 0 else 0.0)
    yy, xx = np.ogrid[:hh, :ww]
    ring = (np.maximum(np.abs(yy - iy), np.abs(xx - ix)) == 2) & valid
    sharp = 1.0 - float(ncc[ring].mean()) / best if (ring.any() and best > 0) else 0.0
    # subpixel: Lucas-Kanade on the overlap, else a three-point fit on the NCC surface
    d_int = (int(dys[iy]), int(dxs[ix]))
    peak_cell = max(cell, _peak_cell_px(ncc, iy, ix))
    sy = sx = 0.0
    if not at_border:
        sy = _subpixel(ncc[iy - 1, ix], best, ncc[iy + 1, ix])
        sx = _subpixel(ncc[iy, ix - 1], best, ncc[iy, ix + 1])
    sub = None if at_border else refine_offset(a, b, d_int, cell_px=peak_cell, start_yx=(sy, sx))
    if sub is not None:
        off, ncc_reg, std = sub
    else:
        off, ncc_reg, std = (d_int[0] + sy, d_int[1] + sx), best, (1.0, 1.0)
    pk = Peak(
        dy=off[0] - d0[0], dx=off[1] - d0[1], peak=best, peak_ratio=float(ratio), sharpness=sharp, at_border=at_border
    )
    area = float(ov_h[iy] * ov_w[ix])
    z_reg = float(_z(ncc_reg, area, peak_cell))
    alts: list[Candidate] = []
    if n_alternatives > 0 and local_max.any() and z_reg > 0 and not at_border:
        order = np.argsort(-np.where(local_max, score, -np.inf), axis=None)
        for flat in order[: 4 * n_alternatives]:
            ay, ax = (int(v) for v in np.unravel_index(int(flat), score.shape))
            if not local_max[ay, ax] or len(alts) >= n_alternatives:
                break
            if (
                ay in (0, hh - 1)
                or ax in (0, ww - 1)
                or not valid[max(ay - 1, 0) : ay + 2, max(ax - 1, 0) : ax + 2].all()
            ):
                continue
            if z[ay, ax] < 0.6 * z_reg:  # z with the texture's cell is an upper bound
                continue
            alt_cell = max(cell, _peak_cell_px(ncc, ay, ax))
            z_alt = float(_z(ncc[ay, ax], float(ov_h[ay] * ov_w[ax]), alt_cell))
            if z_alt < 0.6 * z_reg:
                continue
            r = refine_offset(a, b, (int(dys[ay]), int(dxs[ax])), cell_px=alt_cell)
            if r is None:
                continue
            alts.append(
                Candidate(
                    r[0],
                    r[1],
                    float(_z(r[1], float(ov_h[ay] * ov_w[ax]), alt_cell)),
                    r[2],
                    (int(ov_h[ay]), int(ov_w[ax])),
                )
            )
    return OverlapMatch(
        off, pk, j, nominal_overlap, float(ncc_reg), z_reg, std, (int(ov_h[iy]), int(ov_w[ix])), tuple(alts)
    )


# ---------------------------------------------------------------------------------------------
# square patches (section alignment)


def hann2d(n: int) -> np.ndarray:
    w = np.hanning(n + 2)[1:-1]
    return np.outer(w, w).astype(np.float32)


def phase_correlate(
    fixed: np.ndarray, moving: np.ndarray, max_shift_px: float, peak_sigma_px: float = 1.0, exclusion_px: int = 3
) -> list[Peak]:
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
    cross *= np.exp(-2 * (np.pi * peak_sigma_px) ** 2 * (ky**2 + kx**2)).astype(np.float32)
    corr = np.fft.irfft2(cross, s=(p, p))
    corr = np.fft.fftshift(corr, axes=(1, 2))  # displacement 0 at [p//2, p//2]
    # normalise so that a perfect match peaks at 1
    gain = np.exp(
        -2 * (np.pi * peak_sigma_px) ** 2 * (np.fft.fftfreq(p)[:, None] ** 2 + np.fft.fftfreq(p)[None, :] ** 2)
    ).mean()
    corr /= gain
    r = int(min(np.ceil(max_shift_px) + 1, p // 2 - 1))
    cen = p // 2
    out = []
    for i in range(n):
        if not np.any(f[i]) or not np.any(m[i]):
            out.append(Peak(0.0, 0.0, 0.0, 0.0, 0.0, True))
            continue
        sub = corr[i, cen - r : cen + r + 1, cen - r : cen + r + 1]
        out.append(analyse_surface(sub, (r, r), exclusion_px))
    return out
