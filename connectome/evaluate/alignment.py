"""Alignment: residual displacement of the workspace's aligned volume against the true one,
and the neighbour-section NCC.

Residual. Each section is cut into a grid of non-overlapping square patches of ``patch_px``
(clipped to the section; a remainder narrower than a patch at the right/bottom edge is not
used). For each patch the displacement of the workspace content relative to the truth content
is found by phase correlation (integer pixels; no subpixel refinement)::

    ws(y, x) ~= truth(y - dy, x - dx)       residual = sqrt(dy^2 + dx^2)   (px)

Both patches are mean-subtracted and multiplied by a 2-D Hann window before the FFT, to damp
the wrap-around of the circular correlation; displacements are found up to +/- patch/2.
Patches whose standard deviation is below ``patch_min_std`` grey levels in either volume
(blank padding, flat regions) are skipped. Reported: median, mean and max over all patches of
all sections, the fraction above ``residual_flag_px``, and the section with the largest
median residual.

Neighbour NCC. The Pearson correlation of consecutive sections (z, z+1) over all their
pixels, averaged over the pairs (flat sections, with zero variance, are left out). Given for
the workspace volume and, as a reference, for the true volume: a well aligned volume comes
close to the truth's value.
"""

from __future__ import annotations

import math

import numpy as np

from connectome.evaluate.inputs import iter_boxes


def patch_shifts(moving: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Integer displacements (..., 2) = (dy, dx) of ``moving``'s content relative to
    ``reference``'s, for stacks of patches of shape (..., py, px)."""
    a = np.asarray(moving, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    py, px = a.shape[-2:]
    window = np.outer(np.hanning(py), np.hanning(px)) if min(py, px) > 2 else np.ones((py, px))
    fa = np.fft.rfft2((a - a.mean(axis=(-2, -1), keepdims=True)) * window)
    fb = np.fft.rfft2((b - b.mean(axis=(-2, -1), keepdims=True)) * window)
    cross = fa * np.conj(fb)
    magnitude = np.abs(cross)
    floor = 1e-12 * np.maximum(magnitude.max(axis=(-2, -1), keepdims=True), 1e-300)
    cross /= np.maximum(magnitude, floor)
    corr = np.fft.irfft2(cross, s=(py, px))
    flat = corr.reshape(corr.shape[:-2] + (-1,)).argmax(axis=-1)
    dy, dx = np.divmod(flat, px)
    dy = np.where(dy > py // 2, dy - py, dy)
    dx = np.where(dx > px // 2, dx - px, dx)
    return np.stack([dy, dx], axis=-1)


def patch_shift(moving: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """Integer displacement (dy, dx) of one patch's content relative to the reference patch."""
    dy, dx = patch_shifts(moving, reference)
    return int(dy), int(dx)


def _as_patches(block: np.ndarray, py: int, px: int) -> np.ndarray:
    """(z, gy*py, gx*px) -> (z, gy, gx, py, px)."""
    z, h, w = block.shape
    return block.reshape(z, h // py, py, w // px, px).transpose(0, 1, 3, 2, 4)


def residuals(
    ws_raw, truth_raw, patch_px: int = 128, min_std: float = 2.0, flag_px: float = 4.0, block_shape_zyx=(16, 512, 512)
) -> dict:
    """Patch-wise residual displacement of ``ws_raw`` against ``truth_raw`` (same shape)."""
    nz, ny, nx = (int(s) for s in ws_raw.shape)
    py, px = min(patch_px, ny), min(patch_px, nx)
    gy, gx = ny // py, nx // px  # patches per axis
    by = py * max(1, int(block_shape_zyx[1]) // py)
    bx = px * max(1, int(block_shape_zyx[2]) // px)
    per_section: dict[int, list[np.ndarray]] = {}
    n_patches = 0
    for zs, ys, xs in iter_boxes((nz, gy * py, gx * px), (block_shape_zyx[0], by, bx)):
        a = _as_patches(np.asarray(ws_raw[zs, ys, xs]), py, px)
        b = _as_patches(np.asarray(truth_raw[zs, ys, xs]), py, px)
        n_patches += a.shape[0] * a.shape[1] * a.shape[2]
        usable = (a.std(axis=(-2, -1)) >= min_std) & (b.std(axis=(-2, -1)) >= min_std)
        if not usable.any():
            continue
        shifts = patch_shifts(a[usable], b[usable])
        lengths = np.hypot(shifts[:, 0], shifts[:, 1])
        z_of = np.nonzero(usable)[0] + zs.start
        for z in np.unique(z_of):
            per_section.setdefault(int(z), []).append(lengths[z_of == z])
    sections = {z: np.concatenate(v) for z, v in per_section.items()}
    values = np.concatenate(list(sections.values())) if sections else np.zeros(0)
    result = {
        "patch_px": [py, px],
        "n_patches": n_patches,
        "n_patches_used": int(values.size),
        "residual_median_px": float(np.median(values)) if values.size else math.nan,
        "residual_mean_px": float(values.mean()) if values.size else math.nan,
        "residual_max_px": float(values.max()) if values.size else math.nan,
        "residual_flag_px": flag_px,
        "fraction_over_flag": float((values > flag_px).mean()) if values.size else math.nan,
        "worst_section": None,
        "worst_section_median_px": math.nan,
    }
    if sections:
        medians = {z: float(np.median(v)) for z, v in sections.items()}
        worst = max(sorted(medians), key=lambda z: medians[z])
        result["worst_section"] = worst
        result["worst_section_median_px"] = medians[worst]
    return result


def pair_ncc(raw, block_shape_zyx=(16, 512, 512), smooth_px: float = 0.0) -> np.ndarray:
    """Pearson correlation of each pair of consecutive sections (index z = pair (z, z+1)),
    streamed block by block; NaN where either section is flat (zero variance). With
    ``smooth_px`` > 0 every section is first smoothed in (y, x) by a Gaussian of that sigma
    (blocks read with a halo of 4 sigma, so the result does not depend on the block shape)."""
    from scipy import ndimage

    nz, ny, nx = (int(s) for s in raw.shape)
    pairs = max(nz - 1, 0)
    sums = np.zeros((6, pairs), dtype=np.float64)  # n, sa, sb, saa, sbb, sab (exact as int64 per block)
    halo = int(np.ceil(4 * smooth_px)) if smooth_px > 0 else 0
    for zs, ys, xs in iter_boxes((pairs, ny, nx), block_shape_zyx):
        if halo:
            y0, y1 = max(0, ys.start - halo), min(ny, ys.stop + halo)
            x0, x1 = max(0, xs.start - halo), min(nx, xs.stop + halo)
            big = np.asarray(raw[zs.start : zs.stop + 1, y0:y1, x0:x1]).astype(np.float64)
            big = ndimage.gaussian_filter(big, (0, smooth_px, smooth_px), mode="nearest")
            blk = big[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        else:
            blk = np.asarray(raw[zs.start : zs.stop + 1, ys, xs]).astype(np.int64)
        a, b = blk[:-1], blk[1:]
        sums[:, zs] += np.stack(
            [
                np.full(a.shape[0], a[0].size, dtype=np.int64),
                a.sum(axis=(1, 2)),
                b.sum(axis=(1, 2)),
                (a * a).sum(axis=(1, 2)),
                (b * b).sum(axis=(1, 2)),
                (a * b).sum(axis=(1, 2)),
            ],
            dtype=np.float64,
        )
    n, sa, sb, saa, sbb, sab = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        var_a = saa - sa * sa / n
        var_b = sbb - sb * sb / n
        ncc = (sab - sa * sb / n) / np.sqrt(var_a * var_b)
    return np.where(np.isfinite(ncc) & (var_a > 0) & (var_b > 0), ncc, np.nan)


def ncc_summary(per_pair: np.ndarray) -> dict:
    """``n_pairs``, ``mean``, ``min`` of per-pair NCCs (NaN pairs left out)."""
    ncc = np.asarray(per_pair, dtype=np.float64)
    ncc = ncc[np.isfinite(ncc)]
    return {
        "n_pairs": int(ncc.size),
        "mean": float(ncc.mean()) if ncc.size else math.nan,
        "min": float(ncc.min()) if ncc.size else math.nan,
    }


def neighbour_ncc(raw, block_shape_zyx=(16, 512, 512)) -> dict:
    """Pearson correlation of each pair of consecutive sections, streamed block by block."""
    return ncc_summary(pair_ncc(raw, block_shape_zyx))
