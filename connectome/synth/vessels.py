"""Blood vessels: a capillary with lumen, endothelial wall, basal lamina and red blood cells.

Cortical capillaries are 4-8 um wide with a 0.2-0.5 um endothelial wall and a ~50 nm basal
lamina; they take 2-5% of cortical volume (Tsai et al. 2009, J Neurosci 29:14553) and run at
all angles, so in serial sections they cross many sections as large bright lumens, sometimes
holding an electron-dense red blood cell.

The generator puts one smooth, slightly wavy vessel through the volume, tilted 10-45 degrees
from the z axis so it crosses every section. Its radius is chosen so that the vessel (lumen +
wall) takes ``vessel_fraction`` of the volume: ``r = sqrt(f * A_xy * cos(tilt) / pi)``. In a
2048^2 px (16 um) field that is a realistic 4 um capillary; in the small test volumes it is a
scaled-down one (documented, not physiological). The wall is 25% of the radius (48-500 nm).

``vessels`` truth = lumen + wall (+ red blood cells inside the lumen). Neurites are packed
around the vessel (they see it in the clearance grid) and the gaps next to it are filled by the
nearest neurite, as astrocytic end-feet would be in real tissue.

New-brain look (preset ``newbrain``; all off by default, and then the data are exactly those
made before these options existed):

* ``endothelial_nuclei`` more endothelial nuclei: dark, flat ellipsoids elongated along the
  vessel, centred in the wall ring (radial semi-axis ~0.6 wall) and clipped to the vessel;
* ``pericytes`` pericyte bodies on the outer side of the wall (abluminal, inside the basal
  lamina), clipped to the vessel;
* ``glial_sheath_nm``: a band of that width just outside the wall that belongs to no neuron
  (astrocytic end-feet), drawn lighter than neuropil;
* ``vessel_wall_fraction``: the wall as a fraction of the outer radius (default 0.25).

Truth stays that of a vessel-mask user: ``vessels`` = lumen + wall with every nucleus and
pericyte in it (they are clipped to the vessel's outer surface); the glial sheath is neither
vessel nor neuron (``neurons`` = 0 there, as on extracellular space).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connectome.synth.geometry import Capsules


@dataclass
class Vessel:
    capsules: Capsules  # centreline, constant outer radius, owner 1
    radius_nm: float  # outer radius (lumen + wall)
    wall_nm: float
    rbc_centre: np.ndarray  # (K, 3) nm
    rbc_axis: np.ndarray  # (K, 3) unit normal of the disc
    rbc_radius_nm: np.ndarray  # (K,)
    rbc_half_thickness_nm: np.ndarray  # (K,)
    tilt_deg: float
    frame: np.ndarray  # (4, 3): centre c0, axis d, e1, e2 (unit, perpendicular)
    wall_waves: np.ndarray  # (2, 3): amplitude, angular order, phase of two wall waves
    nucleus: np.ndarray  # (4, 3): centre, semi-axes along d, radial, tangential (row 1 = radii)
    extra_nuclei: tuple = ()  # more (4, 3) ellipsoids like ``nucleus``: dark endothelial nuclei
    pericytes: tuple = ()  # (4, 3) ellipsoids on the outer wall
    sheath_nm: float = 0.0  # glial sheath width outside the wall (0 = none)

    def describe(self) -> dict:
        return {
            "radius_nm": round(self.radius_nm, 1),
            "wall_nm": round(self.wall_nm, 1),
            "tilt_from_z_deg": round(self.tilt_deg, 1),
            "red_blood_cells": int(len(self.rbc_centre)),
        }


def make_vessel(cfg, truth_hi_nm, gen_lo_nm, gen_hi_nm, rng) -> Vessel | None:
    """One vessel through the truth volume (None when vessels are off)."""
    if not cfg.vessels or cfg.vessel_fraction <= 0:
        return None
    truth_hi = np.asarray(truth_hi_nm, float)
    tilt = np.deg2rad(rng.uniform(10.0, 45.0))
    az = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(tilt), np.sin(tilt) * np.sin(az), np.sin(tilt) * np.cos(az)])
    area = truth_hi[1] * truth_hi[2]
    r = float(np.sqrt(cfg.vessel_fraction * area * np.cos(tilt) / np.pi))
    r = min(r, 0.3 * min(truth_hi[1], truth_hi[2]))
    wall = float(np.clip(getattr(cfg, "vessel_wall_fraction", 0.25) * r, 48.0, 500.0))
    # centre: mid-depth, anywhere that keeps the vessel inside the frame in (y, x)
    room = np.maximum(0.0, 0.5 * truth_hi[1:] - 1.3 * r)
    c0 = np.array([0.5 * truth_hi[0], *(0.5 * truth_hi[1:] + rng.uniform(-1, 1, 2) * 0.6 * room)])
    # a slow wave perpendicular to the axis
    e1 = np.cross(d, [0.0, 0.0, 1.0] if abs(d[2]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    half = float(np.linalg.norm(np.asarray(gen_hi_nm) - np.asarray(gen_lo_nm)))
    step = max(40.0, min(0.5 * r, 400.0))
    s = np.arange(-half, half + step, step)
    wl, ph = rng.uniform(8, 14) * r, rng.uniform(0, 2 * np.pi, 2)
    wav = (
        0.12
        * r
        * (np.sin(2 * np.pi * s / wl + ph[0])[:, None] * e1 + np.sin(2 * np.pi * s / (1.3 * wl) + ph[1])[:, None] * e2)
    )
    pts = c0 + s[:, None] * d + wav
    keep = np.all((pts >= np.asarray(gen_lo_nm) - 2 * r) & (pts <= np.asarray(gen_hi_nm) + 2 * r), axis=1)
    pts = pts[keep]
    caps = Capsules.from_polylines([(pts, r, 1)])

    # red blood cells: ~1 per 6 radii of length inside the truth volume, discs across the lumen
    lumen = r - wall
    inside = pts[np.all((pts >= 0) & (pts <= truth_hi), axis=1)]
    n_rbc = rng.poisson(max(0.3, len(inside) * step / (6 * r))) if len(inside) else 0
    idx = rng.choice(len(inside), size=min(n_rbc, len(inside)), replace=False) if n_rbc else np.zeros(0, int)
    centres = inside[np.sort(idx)] if len(idx) else np.zeros((0, 3))
    axes = d + 0.35 * rng.standard_normal((len(centres), 3))
    axes /= np.maximum(1e-9, np.linalg.norm(axes, axis=1, keepdims=True))
    rad = lumen * rng.uniform(0.6, 0.85, len(centres))
    thick = lumen * rng.uniform(0.22, 0.32, len(centres))
    waves = np.array([[0.35, 2.0, rng.uniform(0, 2 * np.pi)], [0.25, 3.0, rng.uniform(0, 2 * np.pi)]])
    phi = rng.uniform(0, 2 * np.pi)
    radial = np.cos(phi) * e1 + np.sin(phi) * e2
    s_n = rng.uniform(-0.3, 0.3) * truth_hi[0] / max(0.2, d[0])
    nucleus = np.array(
        [
            c0 + s_n * d + (r - 0.6 * wall) * radial,
            [1.1 * r, max(0.28 * r, 1.6 * wall), 0.6 * r],
            radial,
            np.cross(d, radial),
        ]
    )
    extra = _wall_cells(
        rng,
        int(getattr(cfg, "endothelial_nuclei", 0)),
        c0,
        d,
        e1,
        e2,
        r,
        wall,
        truth_hi,
        depth=0.5,
        size=(0.9, 0.6, 0.35),
    )
    peri = _wall_cells(
        rng, int(getattr(cfg, "pericytes", 0)), c0, d, e1, e2, r, wall, truth_hi, depth=0.12, size=(0.7, 0.45, 0.45)
    )
    return Vessel(
        caps,
        r,
        wall,
        centres,
        axes,
        rad,
        thick,
        float(np.rad2deg(tilt)),
        np.array([c0, d, e1, e2]),
        waves,
        nucleus,
        extra,
        peri,
        float(getattr(cfg, "glial_sheath_nm", 0.0)),
    )


def _wall_cells(rng, n, c0, d, e1, e2, r, wall, truth_hi, depth, size) -> tuple:
    """``n`` ellipsoids in the wall ring: centred ``depth`` walls in from the outer surface,
    semi-axes (along the vessel, radial, tangential) = ``size`` x (r, wall, r) (radial at least
    40 nm), spread along the vessel inside the truth volume. Drawn after every other vessel
    number, so the default data are unchanged when ``n`` is 0."""
    out = []
    span = 0.45 * truth_hi[0] / max(0.2, abs(d[0]))
    for _ in range(n):
        phi = rng.uniform(0, 2 * np.pi)
        radial = np.cos(phi) * e1 + np.sin(phi) * e2
        s_n = rng.uniform(-1.0, 1.0) * span
        out.append(
            np.array(
                [
                    c0 + s_n * d + (r - depth * wall) * radial,
                    [size[0] * r * rng.uniform(0.8, 1.2), max(40.0, size[1] * wall), size[2] * r],
                    radial,
                    np.cross(d, radial),
                ]
            )
        )
    return tuple(out)


def _ellipsoids(cells, d, zc, yc, xc) -> np.ndarray:
    m = np.zeros((len(zc), len(yc), len(xc)), bool)
    for nc, radii, radial, tang in cells:
        q = [(zc - nc[0])[:, None, None], (yc - nc[1])[None, :, None], (xc - nc[2])[None, None, :]]
        e = sum(((q[0] * ax[0] + q[1] * ax[1] + q[2] * ax[2]) / rr) ** 2 for ax, rr in zip((d, radial, tang), radii))
        m |= e <= 1.0
    return m


def vessel_fields(vessel: Vessel, box, voxel_nm):
    """Signed distance to the outer wall (float32) and the lumen, red-blood-cell and
    endothelial-nucleus masks on ``box``; all None when the vessel does not come near.

    The wall thickness varies smoothly around and along the vessel (two low-order waves) and
    one endothelial nucleus bulges into the lumen, so cross-sections are not perfect rings.
    """
    from connectome.synth.geometry import raster_min

    sdf = np.full(box.shape, np.inf, np.float32)
    raster_min(vessel.capsules, box, voxel_nm, sdf, pad_nm=60.0 + vessel.sheath_nm)
    inside = sdf < 0
    if not inside.any():
        if vessel.sheath_nm > 0 and (sdf < vessel.sheath_nm).any():  # only the glial sheath reaches here
            return sdf, *(np.zeros(box.shape, bool) for _ in range(3))
        return None, None, None, None
    # work only on the bounding box of the vessel within the block
    nzs = [np.nonzero(inside.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1))]
    crop = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nzs)
    zc, yc, xc = (c[s] for c, s in zip(box.centres(voxel_nm), crop))
    full_shape = box.shape
    sdf_c, inside_c = sdf[crop], inside[crop]
    c0, d, e1, e2 = vessel.frame
    rel = [(zc - c0[0])[:, None, None], (yc - c0[1])[None, :, None], (xc - c0[2])[None, None, :]]
    along = rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]
    phi = np.arctan2(rel[0] * e2[0] + rel[1] * e2[1] + rel[2] * e2[2], rel[0] * e1[0] + rel[1] * e1[1] + rel[2] * e1[2])
    wall = np.full(sdf_c.shape, vessel.wall_nm, np.float32)
    for amp, order, ph in vessel.wall_waves:
        wall *= 1.0 + amp * np.sin(order * phi + along / (2.5 * vessel.radius_nm) + ph).astype(np.float32)
    nc, radii, radial, tang = vessel.nucleus
    q = [(zc - nc[0])[:, None, None], (yc - nc[1])[None, :, None], (xc - nc[2])[None, None, :]]
    e = sum(((q[0] * ax[0] + q[1] * ax[1] + q[2] * ax[2]) / rr) ** 2 for ax, rr in zip((d, radial, tang), radii))
    nucleus_c = (e <= 1.0) & inside_c
    lumen_c = (sdf_c < -wall) & ~nucleus_c
    rbc = np.zeros(sdf_c.shape, bool)
    for c, ax, rr, th in zip(vessel.rbc_centre, vessel.rbc_axis, vessel.rbc_radius_nm, vessel.rbc_half_thickness_nm):
        sl = tuple(
            slice(int(np.searchsorted(cc, c[k] - rr)), int(np.searchsorted(cc, c[k] + rr)))
            for k, cc in enumerate((zc, yc, xc))
        )
        if any(s.start >= s.stop for s in sl):
            continue
        dz, dy, dx = (
            (zc[sl[0]] - c[0])[:, None, None],
            (yc[sl[1]] - c[1])[None, :, None],
            (xc[sl[2]] - c[2])[None, None, :],
        )
        a = dz * ax[0] + dy * ax[1] + dx * ax[2]
        rho2 = dz * dz + dy * dy + dx * dx - a * a
        # a biconcave disc: thinner in the middle than at the rim
        th_r = th * (0.55 + 0.45 * np.clip(rho2 / (rr * rr), 0, 1))
        rbc[sl] |= (rho2 <= rr * rr) & (np.abs(a) <= th_r)
    rbc &= lumen_c
    lumen, rbc_full, nucleus = (np.zeros(full_shape, bool) for _ in range(3))
    lumen[crop], rbc_full[crop], nucleus[crop] = lumen_c, rbc, nucleus_c
    return sdf, lumen, rbc_full, nucleus


def vessel_extras(vessel: Vessel, box, voxel_nm, sdf):
    """The new-brain parts on ``box`` (see the module docstring): masks of the dark endothelial
    nuclei and of the pericytes (both inside the vessel) and of the glial sheath (outside it);
    None for each part that is off or absent here. ``sdf``: from :func:`vessel_fields`."""
    if sdf is None or not (vessel.extra_nuclei or vessel.pericytes or vessel.sheath_nm > 0):
        return None, None, None
    near = sdf < vessel.sheath_nm
    if not near.any():
        return None, None, None
    nzs = [np.nonzero(near.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1))]
    crop = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nzs)
    zc, yc, xc = (c[s] for c, s in zip(box.centres(voxel_nm), crop))
    inside_c = sdf[crop] < 0
    d = vessel.frame[1]
    out: list[np.ndarray | None] = []
    for cells in (vessel.extra_nuclei, vessel.pericytes):
        if not cells:
            out.append(None)
            continue
        m = np.zeros(box.shape, bool)
        m[crop] = _ellipsoids(cells, d, zc, yc, xc) & inside_c
        out.append(m if m.any() else None)
    sheath = None
    if vessel.sheath_nm > 0:
        sheath = (sdf >= 0) & (sdf < vessel.sheath_nm)
        sheath = sheath if sheath.any() else None
    return out[0], out[1], sheath
