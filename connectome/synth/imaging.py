"""Image formation: from voxel classes to 8-bit EM-like sections.

One section is a 40 nm slice of heavy-metal-stained tissue seen by a scanning electron
microscope (backscatter contrast, inverted so that membranes are dark; ssTEM looks alike).
Per section, in this order (``render_block``):

1. *Specimen*: every pixel gets the gray value of what is there. Cytoplasm is light and
   textured (per-neuron level: dendrites 0.66, axons 0.61, sd 0.03; smooth 2 px and fine 0.7 px
   texture; sparse dark granules as ribosomes/glycogen). Membranes are dark (0.2): every pixel
   whose 4-neighbourhood holds another owner, i.e. a 2 px line over the 1 px ECS gap. A
   membrane that is oblique to the section is seen through the 40 nm thickness: where the owner
   changes to the section above or below, the pixel is half darkened (the gray smear of
   grazing membranes in anisotropic data). Mitochondria are dark (0.36) with a darker
   double membrane and a maze of lighter cristae. Vessel lumen is bright (0.9), its
   endothelial wall mid-gray with texture, the endothelial nucleus mid-gray with dark
   heterochromatin, the basal lamina dark; red blood cells are uniformly dark (0.2). Synapses:
   a dark post-synaptic density (0.14), a thin dark active zone, and vesicles (light lumen,
   dark 1.5-2 px rim) in the pre-synaptic neurite.
2. *Section staining*: contrast and brightness drift from section to section
   (``I = 0.55 + g_z (I - 0.55) + o_z``; g_z = exp(N(0, 0.05)) smoothed over sections).
3. *Point spread*: Gaussian blur, sigma ``psf_sigma_px`` (0.9 px = 17 nm FWHM at 8 nm/px,
   typical for SEM at 2-3 keV).
4. *Detector noise*: additive Gaussian with shot-noise scaling, sigma
   ``noise_sigma * sqrt(I / 0.6)`` (0.13 of full range at mid-gray). This makes single
   pixels ambiguous: a global threshold cannot separate membrane pixels from cytoplasm
   (tests/test_synth.py measures it), while the smoothed image still can, as with fast-scan
   low-dose SEM scans.
5. *Quantisation* to uint8.

The new-brain look (preset ``newbrain``) adds: membranes widened by ``membrane_extra_px``
px; dark endothelial nuclei (0.30) and pericytes (0.40) in the vessel wall, and a light glial
sheath (0.78) around it (vessels.py); a gamma ``image_gamma`` after the section staining.

Randomness comes from :mod:`.fields`, keyed by section and global position, so blocks agree.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from connectome.synth.fields import rng, smooth_noise, white_noise
from connectome.synth.neurites import AXON

MEMBRANE, MITO, MITO_RIM = 0.20, 0.36, 0.22
LUMEN, WALL, LAMINA, RBC, ENDO_MEMBRANE, NUCLEUS = 0.90, 0.52, 0.25, 0.20, 0.32, 0.47
PSD, ACTIVE_ZONE_DARKEN, VES_LUMEN, VES_RIM = 0.14, 0.12, 0.80, 0.20
NOTHING = 0.45
DARK_NUCLEUS, PERICYTE, GLIA = 0.30, 0.40, 0.78  # new-brain look (presets.py: newbrain)
MID = 0.55


def neuron_levels(neuron_kind: np.ndarray, seed: int) -> np.ndarray:
    """Gray level of each owner code, indexed by ``owner + 1`` (-1 vessel, 0 nothing, k >= 1)."""
    r = rng(seed, "levels")
    base = np.where(neuron_kind == AXON, 0.61, 0.66) + 0.03 * r.standard_normal(len(neuron_kind))
    return np.concatenate([[LUMEN, NOTHING], base[1:]]).astype(np.float32)


def section_looks(n_sections: int, cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-section staining gain and offset: an AR(1) drift (correlation ~3 sections)."""
    r = rng(seed, "section-looks")
    g, o = np.zeros(n_sections), np.zeros(n_sections)
    a = np.exp(-1 / 3)
    gs = os = 0.0
    for z in range(n_sections):
        gs = a * gs + np.sqrt(1 - a * a) * r.standard_normal()
        os = a * os + np.sqrt(1 - a * a) * r.standard_normal()
        g[z], o[z] = np.exp(cfg.section_gain_sigma * gs), cfg.section_offset_sigma * os
    return g, o


def _membranes(own: np.ndarray) -> np.ndarray:
    mem = np.zeros(own.shape, bool)
    d = own[:, :-1] != own[:, 1:]
    mem[:, :-1] |= d
    mem[:, 1:] |= d
    d = own[:-1, :] != own[1:, :]
    mem[:-1, :] |= d
    mem[1:, :] |= d
    return mem


def _vesicles(img, own, syn, z, box, voxel_nm):
    """Draw the vesicles cut by section z into img (in place), inside their own neurite only."""
    if len(syn.ves_radius) == 0:
        return
    vz, vy, vx = voxel_nm
    zc = (z + 0.5) * vz
    dzs = np.maximum(0.0, np.abs(syn.ves_centre[:, 0] - zc) - 0.5 * vz)
    y0n, x0n = box.y0 * vy, box.x0 * vx
    y1n, x1n = box.y1 * vy, box.x1 * vx
    c = syn.ves_centre
    sel = np.nonzero(
        (dzs < syn.ves_radius)
        & (c[:, 1] > y0n - 30)
        & (c[:, 1] < y1n + 30)
        & (c[:, 2] > x0n - 30)
        & (c[:, 2] < x1n + 30)
    )[0]
    if len(sel) == 0:
        return
    r_proj = np.sqrt(syn.ves_radius[sel] ** 2 - dzs[sel] ** 2)
    cy = c[sel, 1] / vy - 0.5 - box.y0
    cx = c[sel, 2] / vx - 0.5 - box.x0
    off = np.arange(-4, 5)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    py = np.rint(cy)[:, None].astype(np.int64) + oy.ravel()[None]
    px = np.rint(cx)[:, None].astype(np.int64) + ox.ravel()[None]
    rho = np.hypot((py - cy[:, None]) * vy, (px - cx[:, None]) * vx)
    val = np.where(
        rho < r_proj[:, None] - 7.0, VES_LUMEN, np.where(np.abs(rho - r_proj[:, None]) <= 7.0, VES_RIM, np.nan)
    )
    ok = (~np.isnan(val)) & (py >= 0) & (py < own.shape[0]) & (px >= 0) & (px < own.shape[1])
    pre = np.broadcast_to(syn.ves_pre[sel][:, None], py.shape)
    ok[ok] &= own[py[ok], px[ok]] == pre[ok]
    img[py[ok], px[ok]] = val[ok]


def render_block(block, core, geom, levels, looks, seed: int):
    """uint8 image of ``core`` (a sub-box of ``block.box``) and noise statistics.

    Returns (uint8 array of core shape, clean float image of core shape, dict of sums).
    """
    cfg = geom.cfg
    box = block.box
    voxel = tuple(float(v) for v in cfg.voxel_size_nm)
    gain, offset = looks
    nz_total = cfg.shape_zyx[0]
    out = np.empty(core.shape, np.uint8)
    clean_out = np.empty(core.shape, np.float32)
    ys, xs = slice(core.y0 - box.y0, core.y1 - box.y0), slice(core.x0 - box.x0, core.x1 - box.x0)
    win = (box.y0, box.y1, box.x0, box.x1)
    for z in range(core.z0, core.z1):
        iz = z - box.z0
        own = block.owner[iz]
        neuron = own > 0
        img = levels[own + 1].astype(np.float32)
        t1 = smooth_noise(seed, "texture-coarse", z, *win, sigma_px=2.0)
        t2 = smooth_noise(seed, "texture-fine", z, *win, sigma_px=0.7)
        img += neuron * (0.03 * t1 + 0.028 * t2)
        gran = t2 > 2.4  # the rare peaks of the fine texture: ribosome/glycogen-like granules
        img[gran & neuron] -= 0.13
        mito = block.mito[iz]
        if mito.any():
            cristae = np.abs(t1 - 0.4) < 0.3  # a maze of lighter lines
            img[mito] = cfg.mito_gray + 0.05 * t2[mito] + 0.14 * cristae[mito]
            rim = mito & (block.mito_sdf[iz] > -14.0)
            img[rim] = MITO_RIM + (cfg.mito_gray - MITO)
        # oblique membranes: half dark where the owner changes to the next section
        zd = np.zeros(own.shape, np.float32)
        for dz in (-1, 1):
            if 0 <= z + dz < nz_total and 0 <= iz + dz < block.owner.shape[0]:
                zd += 0.5 * (block.owner[iz + dz] != own)
        img = img * (1.0 - 0.5 * zd) + (0.5 * cfg.membrane_gray) * zd
        mem = _membranes(own)
        if cfg.membrane_extra_px > 0:  # thicker membranes (new-brain look): the dark line widened
            mem = ndi.binary_dilation(mem, iterations=int(cfg.membrane_extra_px)) & (own >= 0)
        img[mem] = cfg.membrane_gray + 0.04 * t2[mem]
        if block.vessel_sdf is not None:
            vs = block.vessel_sdf[iz]
            inv = vs < 0
            if inv.any():
                lumen, nuc = block.lumen[iz], block.endo_nucleus[iz]
                img[lumen] = LUMEN + 0.012 * t1[lumen]
                w = inv & ~lumen & ~nuc
                img[w] = WALL + 0.05 * t1[w] + 0.03 * t2[w]
                if nuc.any():
                    chrom = smooth_noise(seed, "chromatin", z, *win, sigma_px=2.5)
                    img[nuc] = NUCLEUS - 0.12 * (chrom[nuc] > 0.8) + 0.03 * t2[nuc]
                    img[nuc & _membranes(nuc.astype(np.int8))] = ENDO_MEMBRANE
                img[inv & ~lumen & _membranes(lumen.astype(np.int8))] = ENDO_MEMBRANE
                img[inv & (vs > -18.0)] = LAMINA
                r = block.rbc[iz]
                img[r] = RBC + 0.015 * t1[r]
            for cells, gray in ((block.pericytes, PERICYTE), (block.dark_nuclei, DARK_NUCLEUS)):
                if cells is not None and cells[iz].any():
                    c = cells[iz]
                    img[c] = gray + 0.04 * t1[c] + 0.03 * t2[c]
                    img[c & _membranes(c.astype(np.int8))] = ENDO_MEMBRANE - 0.08
        if block.glia is not None and block.glia[iz].any():
            g = block.glia[iz]
            img[g] = GLIA + 0.03 * t1[g] + 0.02 * t2[g]
        img[block.active_zone[iz]] -= ACTIVE_ZONE_DARKEN
        p = block.psd[iz]
        img[p] = np.minimum(img[p], PSD + 0.03 * t2[p])
        _vesicles(img, own, geom.synapses, z, box, voxel)
        img = MID + gain[z] * (img - MID) + offset[z]
        if cfg.image_gamma != 1.0:  # another stain/detector response (new-brain look)
            img = np.clip(img, 0.0, 1.0) ** cfg.image_gamma
        if cfg.psf_sigma_px > 0:
            img = ndi.gaussian_filter(img, cfg.psf_sigma_px, mode="nearest", truncate=4.0)
        clean = img[ys, xs]
        noise = white_noise(seed, "detector", z, core.y0, core.y1, core.x0, core.x1)
        noisy = clean + cfg.noise_sigma * np.sqrt(np.clip(clean, 0.03, 1.0) / 0.6) * noise
        out[z - core.z0] = np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)
        clean_out[z - core.z0] = clean
    return out, clean_out
