"""Registration of one section pair: a coarse affine on downsampled images, then an elastic field
from patch matches, filtered and regularised.

Given the *fixed* montage ``F`` (the reference section) and the *moving* montage ``M`` on the
same canvas (see :mod:`.render`), :func:`register_pair` estimates the map ``P`` from fixed to
moving canvas coordinates such that ``M(P(q)) ~= F(q)``::

    P(q) = Q(q + u(q)),    Q(q) = A q + v(q)

1. *Coarse* (on ``F``, ``M`` downsampled ``coarse_downsample`` times by block means): a global
   translation by phase correlation of the whole images, then a robust affine ``A`` fitted to
   the displacements of a coarse patch grid (translation only when too few patches match),
   and the smooth field ``v`` of what the affine leaves (large warps, beyond the fine search).
2. *Elastic* (on both images downsampled ``match_downsample`` = 2 times: 16 nm pixels at 8 nm,
   closer to the 40 nm section thickness that TrakEM2 and FEABAS advise matching at, and 4x
   cheaper): ``M`` is resampled through ``Q`` onto the fixed canvas; square patches
   (``patch_px`` = 192 full-resolution px) centred on the nodes of a grid of ``stride_px`` = 64
   spacing are matched by phase correlation (:func:`.pairwise.phase_correlate`), giving residual
   displacements ``r_i`` (a second correlation with the moving patch re-centred at the integer
   shift removes the window's bias towards 0). A match is accepted if both patches are covered
   by tiles (``min_coverage``; partly covered patches at the frame's edges still match, the
   uncovered part filled with the mean), its peak and peak ratio pass the thresholds, its
   band-passed windowed NCC passes ``min_patch_ncc`` and it deviates from the median of its
   accepted 3x3 neighbours by at most ``max_deviation_px``.
3. *Smooth field*: the pair's own robust affine fit of the matches (``base``) plus a field
   ``w`` on all grid nodes minimising
   ``sum_accepted (w_i - r_i)^2 + smoothness * |D w|^2 + ridge * |w|^2`` with ``D`` the second
   differences (a thin plate: affine warps cost nothing, unlike a membrane, which flattened the
   small rotations and scale changes between sections) and the ridge letting ``w`` decay back to
   the affine where no patch matched (textureless cells, vessel lumen, the frame's edges).
   Measured on demo-preset synth pairs against the true relative warps (seed 2001, pair error
   p95 over the frame): membrane/96 px patches 3.2 px, thin plate/192 px 2.8, with
   ``min_coverage`` 0.2 instead of 0.6 2.5.

The pair is *ok* when the coarse translation has a clear peak (ratio >= ``min_coarse_peak_ratio``),
at least ``min_match_fraction`` of the candidate patches (and at least ``min_matches``) were
accepted, and at most ``max_outlier_fraction`` of the patches with a clear peak lie farther than
``max_residual_px`` from the smooth field. For sections ``d`` apart (bridging a bad or missing
section) the deviation and residual tolerances are multiplied by ``d``: oblique structures
move in proportion to the distance.

:func:`fold_score` flags folds and creases: a straight dark band across the section shows as
a narrow trough in the mean intensity along lines of some direction (a Radon projection), in
every stretch of the line (dark cells and vessel walls show in some stretches only).
Downsampling by ``f`` maps full-resolution point ``q`` to ``(q - (f - 1) / 2) / f``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from connectome.montage.pairwise import Peak, hann2d, phase_correlate
from connectome.montage.qc import ncc
from connectome.montage.warp import DisplacementGrid, affine_apply, robust_affine


@dataclass(frozen=True)
class MatchParams:
    """Parameters of one pair registration (the ``pair`` section of the align config)."""

    #: coarse step: downsampling factor, patch edge and stride of the coarse grid (downsampled px),
    #: search range of the coarse patches around the global translation (full-resolution px)
    coarse_downsample: int = 4
    coarse_patch_px: int = 64
    coarse_stride_px: int = 32
    coarse_max_shift_px: float = 48.0
    #: the coarse residual field is used only if this fraction of the covered coarse patches
    #: matched consistently; its membrane weight
    coarse_field_min_fraction: float = 0.6
    coarse_smoothness: float = 1.0
    #: largest plausible change of the linear part (scale, shear, rotation) between two sections;
    #: a coarse affine beyond it falls back to a translation
    max_linear_change: float = 0.03
    #: clear-peak ratio the coarse global translation needs, else the pair fails
    min_coarse_peak_ratio: float = 2.0
    #: elastic step: downsampling factor of the images it runs on, patch edge and node spacing
    #: (full-resolution px, multiples of 2 * match_downsample and match_downsample), search range
    #: (+/- px) after the affine
    match_downsample: int = 2
    patch_px: int = 192
    stride_px: int = 64
    max_shift_px: float = 12.0
    #: Gaussian sigma (px) of the smoothed phase-correlation peak (noise robustness)
    peak_sigma_px: float = 2.0
    #: acceptance of a patch: peak height, peak ratio, deviation from the local median (px),
    #: fraction of the patch covered by tiles in both sections, and windowed band-pass NCC of
    #: the two patches at the match (rejects structureless patches: flat cells, vessel lumen)
    min_patch_ncc: float = 0.0
    min_peak: float = 0.03
    min_peak_ratio: float = 1.3
    max_deviation_px: float = 3.0
    min_coverage: float = 0.2
    #: weight of the smooth field's regulariser (relative to one accepted match) and its kind:
    #: "bending" (thin plate, second differences: affine fields are free) or "membrane"
    smoothness: float = 0.25
    regulariser: str = "bending"
    #: pull of that field towards the pair's best-fit affine where no patch matched (per node)
    ridge: float = 0.01
    #: second phase correlation with the moving patch re-centred at the integer shift (removes
    #: the window's bias towards 0 for large shifts)
    refine: bool = True
    #: what the field decays to away from matches: the pair's robust affine fit of the matches
    #: ("affine") or their median shift ("translation")
    base: str = "affine"
    #: a pair fails with fewer accepted patches than this fraction / number
    min_match_fraction: float = 0.15
    min_matches: int = 6
    #: ... or when more than max_outlier_fraction of the clear peaks are > max_residual_px off the field
    max_residual_px: float = 3.0
    max_outlier_fraction: float = 0.5

    def __post_init__(self):
        if self.coarse_downsample < 1 or self.patch_px < 16 or self.stride_px < 1:
            raise ValueError("coarse_downsample >= 1, patch_px >= 16 and stride_px >= 1 are required")
        if (
            self.match_downsample < 1
            or self.patch_px % (2 * self.match_downsample)
            or self.stride_px % self.match_downsample
        ):
            raise ValueError(
                f"patch_px must be a multiple of 2 * match_downsample and stride_px of match_downsample, "
                f"got patch_px {self.patch_px}, stride_px {self.stride_px}, "
                f"match_downsample {self.match_downsample}"
            )
        if self.regulariser not in ("bending", "membrane") or self.base not in ("affine", "translation"):
            raise ValueError(
                f"regulariser must be 'bending' or 'membrane' and base 'affine' or 'translation', "
                f"got {self.regulariser!r}, {self.base!r}"
            )
        if self.ridge < 0 or self.smoothness < 0:
            raise ValueError("ridge and smoothness must be >= 0")
        if not 0 <= self.min_match_fraction <= 1 or not 0 < self.min_coverage <= 1:
            raise ValueError("min_match_fraction must be in [0, 1] and min_coverage in (0, 1]")


@dataclass
class PairResult:
    ok: bool
    reason: str
    grid: DisplacementGrid  # P - identity, canvas coordinates of the fixed section
    affine: np.ndarray  # A (2x3), canvas coordinates
    n_candidates: int = 0
    n_accepted: int = 0
    residual_median_px: float = float("nan")
    residual_max_px: float = float("nan")
    coarse_peak_ratio: float = float("nan")
    ncc_before: float = float("nan")
    ncc_after: float = float("nan")
    stats: dict = field(default_factory=dict)
    patch_ncc: np.ndarray | None = None  # per node of the elastic grid (0 where not a candidate)
    accepted: np.ndarray | None = None  # per node: the match was used
    offsets: np.ndarray | None = None  # per node: the measured displacement (full-res px)


def downsample(img: np.ndarray, f: int) -> np.ndarray:
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def extract_patches(img: np.ndarray, centres_yx: np.ndarray, p: int) -> np.ndarray:
    """(n, p, p) patches whose element [p//2, p//2] is at each integer centre; zero outside."""
    c = np.asarray(centres_yx, dtype=int).reshape(-1, 2)
    out = np.empty((len(c), p, p), dtype=img.dtype)
    if not len(c):
        return out
    pad = (
        int(max(p // 2 - c.min(), c[:, 0].max() + p // 2 - img.shape[0], c[:, 1].max() + p // 2 - img.shape[1], 0)) + 1
    )
    padded = np.pad(img, pad)
    for i, (cy, cx) in enumerate(c):
        y0, x0 = cy - p // 2 + pad, cx - p // 2 + pad
        out[i] = padded[y0 : y0 + p, x0 : x0 + p]
    return out


def _fill(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Uncovered pixels set to the covered mean (so they add no edges to a correlation)."""
    out = img.astype(np.float32, copy=True)
    if mask.any():
        out[~mask] = float(out[mask].mean())
    return out


def coarse_affine(
    fixed: np.ndarray, fmask: np.ndarray, moving: np.ndarray, mmask: np.ndarray, prm: MatchParams
) -> tuple[np.ndarray, AffinePlusField, float, bool]:
    """The coarse map ``Q(q) = A q + v(q)`` in canvas coordinates: ``A`` an affine, ``v`` a smooth
    field on the coarse patch grid (large warps the fine search could not reach). Returns
    (A, Q as a displacement grid, peak ratio of the global translation, ok)."""
    f = prm.coarse_downsample
    fd = downsample(_fill(fixed, fmask), f)
    md = downsample(_fill(moving, mmask), f)
    fmd = downsample(fmask.astype(np.float32), f) > 0.99
    n = int(2 ** np.ceil(np.log2(max(fd.shape))))
    fp = np.zeros((1, n, n), np.float32)
    mp = np.zeros((1, n, n), np.float32)
    fp[0, : fd.shape[0], : fd.shape[1]] = fd - fd[fmd].mean() if fmd.any() else 0
    mp[0, : md.shape[0], : md.shape[1]] = md - md.mean()
    pk = phase_correlate(fp, mp, max_shift_px=n // 2 - 2, peak_sigma_px=1.0)[0]
    t = np.array([pk.dy, pk.dx])
    ok = (not pk.at_border) and pk.peak_ratio >= prm.min_coarse_peak_ratio
    # coarse patch grid, shifted by t
    p = min(prm.coarse_patch_px, (min(fd.shape) // 2) * 2)
    s = prm.coarse_stride_px
    ys = np.arange(p // 2, fd.shape[0] - p // 2 + 1, s)
    xs = np.arange(p // 2, fd.shape[1] - p // 2 + 1, s)
    nodes = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).astype(np.float64).reshape(-1, 2)
    disp = np.zeros_like(nodes)
    good = np.zeros(len(nodes), dtype=bool)
    if len(nodes) and p >= 16:
        covered = extract_patches(fmd.astype(np.float32), nodes.astype(int), p).mean(axis=(1, 2)) > 0.9
        shift = np.rint(t).astype(int)
        idx = np.nonzero(covered)[0]
        peaks = phase_correlate(
            extract_patches(fd, nodes[idx].astype(int), p),
            extract_patches(md, (nodes[idx] + shift).astype(int), p),
            max_shift_px=max(2.0, prm.coarse_max_shift_px / f),
            peak_sigma_px=1.0,
        )
        for i, q in zip(idx, peaks):
            if not q.at_border and q.peak_ratio >= prm.min_peak_ratio and q.peak >= prm.min_peak:
                good[i] = True
                disp[i] = shift + (q.dy, q.dx)
    # false matches out: each must agree with the median of its good neighbours (the warp is smooth)
    if len(nodes) and good.sum() >= 3:
        good = _local_median_filter(
            disp.reshape(len(ys), len(xs), 2), good.reshape(len(ys), len(xs)), 2.0 * prm.max_deviation_px / f
        ).ravel()
    if good.sum() >= 6:
        a_ds, _ = robust_affine(nodes[good], nodes[good] + disp[good], max_residual_px=1.0)
    if good.sum() >= 6 and np.abs(a_ds[:, :2] - np.eye(2)).max() <= prm.max_linear_change:
        pass
    elif good.any():  # too few matches, or an implausible scale/shear/rotation: translation only
        med = np.median(disp[good], axis=0)
        a_ds = np.array([[1.0, 0, med[0]], [0, 1.0, med[1]]])
    else:
        a_ds = np.array([[1.0, 0, t[0]], [0, 1.0, t[1]]])
    # residual field v (downsampled px) on the coarse nodes: what the affine leaves, smoothed hard;
    # only when most covered nodes matched consistently (a field from few, noisy matches is worse
    # than none: the fine step still corrects up to max_shift_px)
    v = np.zeros((len(ys), len(xs), 2))
    n_covered = int(covered.sum()) if len(nodes) and p >= 16 else 0
    if good.sum() >= max(6, prm.coarse_field_min_fraction * n_covered):
        r = (nodes + disp - affine_apply(a_ds, nodes)).reshape(len(ys), len(xs), 2)
        v = smooth_field(r, good.reshape(len(ys), len(xs)), prm.coarse_smoothness, bending=False)
    # to full resolution: A(q) = f * A_ds((q - c) / f) + c; node (i, j) at f * (ys_i, xs_j) + c
    c = (f - 1) / 2.0
    lin = a_ds[:, :2]
    a = np.hstack([lin, (f * a_ds[:, 2] + c - lin @ np.array([c, c]))[:, None]])
    field = None
    if v.any():
        field = DisplacementGrid((float(f * ys[0] + c), float(f * xs[0] + c)), float(f * s), f * v)
    return a, AffinePlusField(a, field), float(pk.peak_ratio), bool(ok)


@dataclass(frozen=True)
class AffinePlusField:
    """``Q(q) = A q + v(q)``: an affine plus a residual displacement grid (constant beyond its
    outer nodes, so the affine part stays exact everywhere)."""

    matrix: np.ndarray
    field: DisplacementGrid | None = None

    def apply(self, points_yx: np.ndarray) -> np.ndarray:
        out = affine_apply(self.matrix, points_yx)
        return out if self.field is None else out + self.field.displacement(points_yx)

    def dense(self, begin_yx, shape_hw) -> np.ndarray:
        yy, xx = np.meshgrid(
            begin_yx[0] + np.arange(shape_hw[0], dtype=np.float64),
            begin_yx[1] + np.arange(shape_hw[1], dtype=np.float64),
            indexing="ij",
        )
        return self.apply(np.stack([yy, xx], axis=-1))


def warp_image(
    img: np.ndarray, coords_of_rows, shape_hw: tuple[int, int], order: int = 1, cval: float = 0.0, strip: int = 128
) -> np.ndarray:
    """``out[i, j] = img(coords[i, j])`` where ``coords_of_rows(y0, y1)`` gives the (y1 - y0, w, 2)
    sample points of rows ``y0..y1``; done in strips of rows so memory stays ~ one image."""
    h, w = shape_hw
    out = np.empty((h, w), dtype=np.float32)
    for y0 in range(0, h, strip):
        y1 = min(h, y0 + strip)
        c = coords_of_rows(y0, y1)
        out[y0:y1] = ndimage.map_coordinates(img, [c[..., 0], c[..., 1]], order=order, mode="constant", cval=cval)
    return out


def _local_median_filter(r: np.ndarray, acc: np.ndarray, max_dev: float) -> np.ndarray:
    """Reject accepted nodes deviating from the median of their accepted 3x3 neighbours."""
    gy, gx = acc.shape
    keep = acc.copy()
    for i, j in zip(*np.nonzero(acc)):
        sl = (slice(max(i - 1, 0), i + 2), slice(max(j - 1, 0), j + 2))
        nb = acc[sl].copy()
        nb[i - sl[0].start, j - sl[1].start] = False
        if nb.sum() < 2:
            continue
        med = np.median(r[sl][nb], axis=0)
        if np.hypot(*(r[i, j] - med)) > max_dev:
            keep[i, j] = False
    return keep


def _difference_ops(gy: int, gx: int, bending: bool):
    """Sparse finite-difference operators on a (gy, gx) node grid: first differences along y and
    x (membrane), or second differences along y, x and the mixed one (thin plate, which leaves
    affine fields unpenalised)."""
    from scipy.sparse import coo_matrix

    idx = np.arange(gy * gx).reshape(gy, gx)
    ops = []
    if bending:
        stencils = [
            ([idx[:-2, :], idx[1:-1, :], idx[2:, :]], [1.0, -2.0, 1.0]),
            ([idx[:, :-2], idx[:, 1:-1], idx[:, 2:]], [1.0, -2.0, 1.0]),
            (
                [idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]],
                [np.sqrt(2), -np.sqrt(2), -np.sqrt(2), np.sqrt(2)],
            ),
        ]
    else:
        stencils = [([idx[:-1, :], idx[1:, :]], [-1.0, 1.0]), ([idx[:, :-1], idx[:, 1:]], [-1.0, 1.0])]
    for cols, coef in stencils:
        k = cols[0].size
        if k == 0:
            continue
        rows = np.tile(np.arange(k), len(cols))
        c = np.concatenate([cc.ravel() for cc in cols])
        v = np.repeat(coef, k)
        ops.append(coo_matrix((v, (rows, c)), shape=(k, gy * gx)).tocsr())
    return ops


def smooth_field(
    r: np.ndarray, acc: np.ndarray, smoothness: float, bending: bool = True, ridge: float = 1e-6
) -> np.ndarray:
    """Regularised field on the node grid: ``sum_accepted (u_i - r_i)^2 + smoothness * |D u|^2``
    with ``D`` the second differences (thin plate; affine fields cost nothing) or, with
    ``bending=False``, the first differences (membrane), plus ``ridge * |u|^2`` (far from any
    match the field decays to 0). Nodes without matches are filled in by the regulariser; with
    fewer than 3 matches (thin plate) the mean match is used."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import spsolve

    gy, gx = acc.shape
    w = acc.ravel().astype(np.float64)
    if bending and acc.sum() < 3:
        return np.broadcast_to(r[acc].mean(axis=0) if acc.any() else np.zeros(2), (gy, gx, 2)).copy()
    mat = diags(w + ridge)
    for op in _difference_ops(gy, gx, bending):
        mat = mat + smoothness * (op.T @ op)
    mat = mat.tocsc()
    out = np.zeros((gy, gx, 2))
    for k in (0, 1):
        rhs = w * np.where(acc, r[..., k], 0.0).ravel()
        out[..., k] = spsolve(mat, rhs).reshape(gy, gx)
    return out


def fold_score(
    img: np.ndarray,
    mask: np.ndarray,
    n_angles: int = 48,
    widths=(5, 9, 13),
    background_px: int = 61,
    parts: int = 4,
    downsample_by: int = 2,
    pixel_step: int = 1,
    confirm_above: float | None = 3.0,
) -> float:
    """How strongly the section shows a straight dark band *across its whole width* (a fold or
    crease). For each of ``n_angles`` directions the covered pixels are cut into ``parts``
    equal-count stretches along the line direction; in each stretch the mean intensity per
    1 px line across the normal gives a profile, and its trough of width ``widths`` below the
    running median (``background_px``), divided by the profile's robust noise (1.4826 MAD), a
    z-score. A fold is dark in every stretch, a dark cell or vessel wall only in some, so the
    score is the largest over directions, offsets and widths of the *smallest* z-score over the
    stretches. Ordinary sections score ~1.5-3; a fold spanning the section scores ~5-9.

    The profiles are taken on the image downsampled ``downsample_by`` times (block means; the
    widths and the background window, given in full-resolution px, scale with it): folds are
    5-15 px wide, and the score is then ~5x cheaper at about the same values (a synth set with 4
    folds: 4.4-9.8 at full resolution, 4.3-9.6 downsampled; clean sections 1.1-2.8 both ways).
    ``pixel_step`` > 1 uses every such pixel along each axis only: cheaper still, but a weak fold
    of that set then scored 3.7 instead of 4.3 (below the default threshold), so it is off.
    A downsampled score above ``confirm_above`` is replaced by the full-resolution one (a clean
    demo section scored 4.0 downsampled, 2.8 at full resolution), so only candidates pay for it."""
    f = int(downsample_by)
    if f > 1 and confirm_above is not None:
        quick = fold_score(img, mask, n_angles, widths, background_px, parts, f, pixel_step, None)
        if quick <= confirm_above:
            return quick
        return fold_score(img, mask, n_angles, widths, background_px, parts, 1, pixel_step, None)
    if f > 1:
        img = downsample(np.asarray(img, dtype=np.float32), f)
        mask = downsample(np.asarray(mask, dtype=np.float32), f) > 0.99
        widths = tuple(sorted({max(1, int(round(wd / f)) | 1) for wd in widths}))
        background_px = max(3, int(round(background_px / f)) | 1)
    sm = ndimage.gaussian_filter(np.asarray(img, dtype=np.float32), 1.0)
    yy, xx = np.nonzero(mask)
    if yy.size < 100:
        return 0.0
    if pixel_step > 1:  # every pixel_step-th pixel along each axis of the (smoothed) image
        keep = (yy % pixel_step == 0) & (xx % pixel_step == 0)
        yy, xx = yy[keep], xx[keep]
    v = sm[yy, xx].astype(np.float64)
    best = 0.0
    for ang in np.arange(n_angles) * np.pi / n_angles:
        t = yy * np.cos(ang) + xx * np.sin(ang)
        along = -yy * np.sin(ang) + xx * np.cos(ang)
        idx = np.floor(t - t.min()).astype(np.int64)
        n = int(idx.max()) + 1
        if n < 2 * background_px // 3:
            continue
        cuts = np.quantile(along[::7], np.linspace(0, 1, parts + 1))  # a sample is exact enough
        part = np.clip(np.searchsorted(cuts, along, side="right") - 1, 0, parts - 1)
        cnts = np.bincount(part * n + idx, minlength=parts * n).reshape(parts, n)
        tots = np.bincount(part * n + idx, v, minlength=parts * n).reshape(parts, n)
        lowest = None
        for k in range(parts):
            cnt, tot = cnts[k], tots[k]
            ok = cnt >= max(3.0, 0.3 * float(np.median(cnt[cnt > 0])))
            if ok.sum() < 2 * background_px // 3:
                lowest = None
                break
            prof = np.where(ok, tot / np.maximum(cnt, 1), 0.0)
            prof = np.where(ok, prof, np.median(prof[ok]))
            depth = ndimage.median_filter(prof, size=background_px, mode="nearest") - prof
            noise = 1.4826 * np.median(np.abs(depth[ok] - np.median(depth[ok]))) + 1e-6
            zk = np.stack([ndimage.uniform_filter1d(depth, w, mode="nearest") / noise for w in widths])
            zk = np.where(ok[None], zk, -np.inf)
            lowest = zk if lowest is None else np.minimum(lowest, zk)
        if lowest is not None:
            best = max(best, float(lowest.max()))
    return best


def _bandpass(img: np.ndarray) -> np.ndarray:
    """A difference of Gaussians (1 and 4 px): shading and pixel noise count little."""
    x = np.asarray(img, dtype=np.float32)
    return ndimage.gaussian_filter(x, 1.0) - ndimage.gaussian_filter(x, 4.0)


def _windowed_ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of stacks of (band-passed, see :func:`_bandpass`) patches (n, p, p)
    under a Hann window: ~0 for patches of unrelated or structureless content, 0.3-0.9 for
    matching tissue."""
    win = hann2d(a.shape[-1])
    out = []
    for x in (a, b):
        x = np.asarray(x, dtype=np.float32)
        out.append((x - x.mean(axis=(1, 2), keepdims=True)) * win)
    num = (out[0] * out[1]).sum(axis=(1, 2))
    den = np.sqrt((out[0] ** 2).sum(axis=(1, 2)) * (out[1] ** 2).sum(axis=(1, 2)))
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)


def _coords_at(transform, f: int, y0: int, y1: int, w_ds: int) -> np.ndarray:
    """Sample points, in the coordinates of an image downsampled ``f`` times, of rows
    ``y0..y1`` of such an image mapped by ``transform`` (full-resolution points -> points)."""
    c = (f - 1) / 2.0
    yy, xx = np.meshgrid(
        np.arange(y0, y1, dtype=np.float64) * f + c, np.arange(w_ds, dtype=np.float64) * f + c, indexing="ij"
    )
    return (transform.apply(np.stack([yy, xx], axis=-1)) - c) / f


def register_pair(
    fixed: np.ndarray, fmask: np.ndarray, moving: np.ndarray, mmask: np.ndarray, prm: MatchParams, distance: int = 1
) -> PairResult:
    """Register ``moving`` onto ``fixed`` (same canvas shape; masks = tile coverage).

    ``distance`` is how many sections apart the two are: structures that run obliquely through
    the sections move in proportion to it, so the deviation and residual tolerances scale with it.
    The elastic step runs on the images downsampled ``match_downsample`` times (block means);
    every length in ``prm`` is in full-resolution pixels.
    """
    f = prm.match_downsample
    tol_dev = prm.max_deviation_px * max(1, distance)
    tol_res = prm.max_residual_px * max(1, distance)
    h, w = fixed.shape
    identity = DisplacementGrid((0.0, 0.0), float(max(h, w)), np.zeros((2, 2, 2)))
    eye = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    if fmask.mean() < 0.01 or mmask.mean() < 0.01:
        return PairResult(False, "no tiles", identity, eye)
    a, coarse, coarse_ratio, coarse_ok = coarse_affine(fixed, fmask, moving, mmask, prm)
    # elastic step on the downsampled images, nodes every s (downsampled) px over the canvas
    ff = downsample(_fill(fixed, fmask), f)
    mf = downsample(_fill(moving, mmask), f)
    fm = downsample(fmask.astype(np.float32), f) > 0.99
    mm = downsample(mmask.astype(np.float32), f)
    hd, wd = ff.shape
    before = ncc(ff, mf, fm & (mm > 0.99))
    s, p = prm.stride_px // f, prm.patch_px // f
    ny, nx = int(np.ceil((hd - 1) / s)) + 1, int(np.ceil((wd - 1) / s)) + 1
    ma = warp_image(mf, lambda y0, y1: _coords_at(coarse, f, y0, y1, wd), (hd, wd), order=1, cval=float(mf.mean()))
    mam = warp_image(mm, lambda y0, y1: _coords_at(coarse, f, y0, y1, wd), (hd, wd), order=1) > 0.99
    centres = np.stack(np.meshgrid(np.arange(ny) * s, np.arange(nx) * s, indexing="ij"), -1).reshape(-1, 2)
    cov_f = extract_patches(fm.astype(np.float32), centres, p).mean(axis=(1, 2))
    cov_m = extract_patches(mam.astype(np.float32), centres, p).mean(axis=(1, 2))
    cand = (cov_f >= prm.min_coverage) & (cov_m >= prm.min_coverage)
    r = np.zeros((ny * nx, 2))
    acc = np.zeros(ny * nx, dtype=bool)
    patch_ncc = np.zeros(ny * nx)
    ci = np.nonzero(cand)[0]
    ff_bp, ma_bp = _bandpass(ff), _bandpass(ma)
    sigma = prm.peak_sigma_px / f
    for start in range(0, len(ci), 256):  # bounded memory
        sel = ci[start : start + 256]
        fp = extract_patches(ff, centres[sel], p)
        mp = extract_patches(ma, centres[sel], p)
        first = phase_correlate(fp, mp, prm.max_shift_px / f, peak_sigma_px=sigma)
        # second pass on the moving patch re-centred at the integer shift: the Hann window
        # biases large shifts towards 0, small remainders are unbiased
        shift = np.array([(round(pk.dy), round(pk.dx)) for pk in first], dtype=int).reshape(-1, 2)
        # patches at integer shift 0 would be correlated again exactly as they were: only the others
        second = [
            Peak(pk.dy - sh[0], pk.dx - sh[1], pk.peak, pk.peak_ratio, pk.sharpness, pk.at_border)
            for pk, sh in zip(first, shift)
        ]
        moved = np.nonzero(np.any(shift != 0, axis=1))[0] if prm.refine else np.zeros(0, dtype=int)
        if moved.size:
            again = phase_correlate(
                fp[moved], extract_patches(ma, centres[sel][moved] + shift[moved], p), 2.0, peak_sigma_px=sigma
            )
            for i, pk2 in zip(moved, again):
                second[i] = pk2
        pncc = _windowed_ncc(extract_patches(ff_bp, centres[sel], p), extract_patches(ma_bp, centres[sel] + shift, p))
        for k, pk, sh, pk2, q in zip(sel, first, shift, second, pncc):
            refined = not pk2.at_border and pk2.peak > 0
            r[k] = (sh[0] + pk2.dy, sh[1] + pk2.dx) if refined else (pk.dy, pk.dx)
            patch_ncc[k] = q
            acc[k] = (
                (not pk.at_border)
                and pk.peak >= prm.min_peak
                and pk.peak_ratio >= prm.min_peak_ratio
                and q >= prm.min_patch_ncc
            )
    r = r.reshape(ny, nx, 2) * f  # full-resolution px from here on
    valid = acc.reshape(ny, nx).copy()
    acc = _local_median_filter(r, valid, tol_dev)
    c = (f - 1) / 2.0
    nodes = centres.reshape(ny, nx, 2).astype(np.float64) * f + c
    # the pair's own affine (robust fit to the matches) plus a smooth field of what it leaves,
    # decaying back to that affine away from matches (textureless cells, vessel lumen, edges)
    if acc.sum() >= 6 and prm.base == "affine":
        lin_fit, _ = robust_affine(nodes[acc], nodes[acc] + r[acc], max_residual_px=tol_dev)
        base = affine_apply(lin_fit, nodes) - nodes
    else:
        base = np.broadcast_to(np.median(r[acc], axis=0) if acc.any() else np.zeros(2), r.shape).copy()
    u = base + (
        smooth_field(r - base, acc, prm.smoothness, prm.regulariser == "bending", prm.ridge) if acc.any() else 0.0
    )
    disp = coarse.apply(nodes + u) - nodes
    grid = DisplacementGrid((c, c), float(s * f), disp)
    res = np.hypot(*(u - r)[acc].T) if acc.any() else np.zeros(0)
    res_valid = np.hypot(*(u - r)[valid].T) if valid.any() else np.zeros(0)
    outliers = float((res_valid > tol_res).mean()) if res_valid.size else 1.0
    n_cand, n_valid, n_acc = int(cand.sum()), int(valid.sum()), int(acc.sum())
    warped = warp_image(mf, lambda y0, y1: _coords_at(grid, f, y0, y1, wd), (hd, wd), order=1, cval=float(mf.mean()))
    wmask = warp_image(mm, lambda y0, y1: _coords_at(grid, f, y0, y1, wd), (hd, wd), order=1) > 0.99
    after = ncc(ff, warped, fm & wmask)
    reasons = []
    if not coarse_ok:
        reasons.append(f"coarse peak ratio {coarse_ratio:.2f} < {prm.min_coarse_peak_ratio}")
    if n_acc < prm.min_matches or n_acc < prm.min_match_fraction * max(n_cand, 1):
        reasons.append(f"{n_acc}/{n_cand} patches matched")
    if outliers > prm.max_outlier_fraction:
        reasons.append(f"{outliers:.0%} of the matches off the smooth field by > {tol_res:g} px")
    return PairResult(
        ok=not reasons,
        reason="; ".join(reasons),
        grid=grid,
        affine=a,
        n_candidates=n_cand,
        n_accepted=n_acc,
        residual_median_px=float(np.median(res)) if res.size else float("nan"),
        residual_max_px=float(res.max()) if res.size else float("nan"),
        coarse_peak_ratio=coarse_ratio,
        ncc_before=before,
        ncc_after=after,
        stats={"n_valid": n_valid, "outlier_fraction": outliers, "coarse_ok": bool(coarse_ok)},
        patch_ncc=patch_ncc.reshape(ny, nx),
        accepted=acc,
        offsets=r,
    )
