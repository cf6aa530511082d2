"""Known-answer tile sets for tests and benchmarks of stitching and alignment.

Unlike ``connectome synth`` (a 3-D tissue model whose structures run obliquely through the
sections, so consecutive sections differ in content), every section here shows the *same*
2-D texture, distorted by a known transform and cut into tiles. Content-based alignment can
therefore recover the true transforms exactly (up to noise), which makes geometry errors --
a swapped axis, a sign, a half-pixel shift -- visible as residuals.

Layout written to ``OUT`` (the ``connectome synth`` layout and conventions)::

    tiles/manifest.csv     section,row,col,path,x,y    (nominal stage positions, px)
    tiles/sNNNN/rRR_cCC.png
    truth/tiles.csv        section,row,col,x,y          (true positions, px)
    truth/sections.json    per section: transform aligned -> montage (affine + cubic elastic grid)
    truth_raw.npy          (z, y, x) uint8: the undistorted sections in the aligned frame

Section transform (as in :mod:`connectome.synth.acquisition`)::

    m = A_z @ p + t_z + e_z(p)      p aligned (y, x), m montage/stage (y, x)

with ``A_0 = I, t_0 = 0, e_0 = 0``; tile (row, col) of section z has its top-left at
``origin_z + (row, col) * step + jitter`` (integer jitter; section 0's tile (0, 0) exact).

Options for robustness tests of stitching: ``texture`` ("em", the default; "smooth": large
soft blobs and no membranes, so correlation peaks are broad; "periodic": a lattice of blobs
with a 14 px period under a weak irregular texture, so correlation surfaces have many nearly
equal peaks), ``jitter_px`` up to the overlap and beyond, ``vignetting`` (every tile is
multiplied by ``1 - vignetting * (r / r_corner)^2`` about its centre, before its gain and
offset), ``gain_sigma``, ``tile_shifts`` (extra true displacements of single tiles, e.g. to
open a gap between a tile and its neighbours) and ``blank_tiles`` (tiles that show no tissue:
a constant gray plus noise).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi


def texture(shape_hw, seed: int, kind: str = "em") -> np.ndarray:
    """An EM-like texture in 0..255: cell-like blobs with dark membranes, plus fine grain
    (``kind="em"``); or a smooth or periodic one (see the module docstring)."""
    rng = np.random.default_rng(seed)
    h, w = shape_hw
    if kind == "smooth":
        img = 128 + 45 * ndi.gaussian_filter(rng.normal(size=(h, w)), 9) / 0.031
        return np.clip(img, 0, 255).astype(np.float32)
    if kind == "periodic":
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        lattice = np.cos(2 * np.pi * yy / 14.0) * np.cos(2 * np.pi * xx / 14.0)
        weak = ndi.gaussian_filter(rng.normal(size=(h, w)), 2.0) / 0.14
        img = 128 + 52 * lattice + 8 * weak
        return np.clip(ndi.gaussian_filter(img, 0.8), 0, 255).astype(np.float32)
    if kind != "em":
        raise ValueError(f"texture kind must be 'em', 'smooth' or 'periodic', got {kind!r}")
    n = max(8, h * w // 900)
    pts = rng.uniform(0, 1, (n, 2)) * (h, w)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    # distance to the nearest and second-nearest seed -> membranes where they are equal
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pts).query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
    edge = (d[:, 1] - d[:, 0]).reshape(h, w)
    cells = 150 + 40 * ndi.gaussian_filter(rng.normal(size=(h, w)), 12) / 0.02
    img = np.where(edge < 2.5, 60.0, np.clip(cells, 90, 220))
    img += 12 * ndi.gaussian_filter(rng.normal(size=(h, w)), 1.2) / 0.23
    return np.clip(ndi.gaussian_filter(img, 0.9), 0, 255).astype(np.float32)


def _elastic(p: np.ndarray, tr: dict) -> np.ndarray:
    e = tr.get("elastic")
    if not e:
        return np.zeros_like(p)
    c = [(p[:, 0] - e["origin_yx"][0]) / e["spacing_px"], (p[:, 1] - e["origin_yx"][1]) / e["spacing_px"]]
    return np.stack(
        [
            ndi.map_coordinates(np.asarray(e["dy"]), c, order=3, mode="nearest"),
            ndi.map_coordinates(np.asarray(e["dx"]), c, order=3, mode="nearest"),
        ],
        axis=1,
    )


def forward(tr: dict, p: np.ndarray) -> np.ndarray:
    """Aligned (n, 2) -> montage, for a ``sections.json`` transform record."""
    a = np.asarray(tr["affine"], dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return p @ a[:, :2].T + a[:, 2] + _elastic(p, tr)


def inverse(tr: dict, m: np.ndarray, iterations: int = 10) -> np.ndarray:
    a = np.asarray(tr["affine"], dtype=np.float64)
    ainv = np.linalg.inv(a[:, :2])
    base = (np.asarray(m, dtype=np.float64) - a[:, 2]) @ ainv.T
    p = base
    for _ in range(iterations):
        p = base - _elastic(p, tr) @ ainv.T
    return p


def make_dataset(
    out,
    n_sections: int = 16,
    frame_hw=(256, 256),
    tile_px: int = 150,
    overlap: float = 0.115,
    jitter_px: int = 2,
    drift_px: float = 6.0,
    rotation_deg: float = 0.25,
    scale: float = 0.002,
    elastic_px: float = 1.0,
    elastic_spacing: float = 128.0,
    noise: float = 8.0,
    noise_sections=(),
    seed: int = 0,
    texture_kind: str = "em",
    vignetting: float = 0.0,
    gain_sigma: float = 0.025,
    tile_shifts=None,
    blank_tiles=(),
) -> Path:
    """Write a known-answer dataset (see the module docstring); ``noise_sections`` are replaced
    by pure noise (damaged beyond use); ``tile_shifts`` maps ``(section, row, col)`` to an extra
    true displacement ``(dy, dx)`` (integers); ``blank_tiles`` lists ``(section, row, col)``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    h, w = frame_hw
    tile_shifts = {tuple(k): tuple(int(v) for v in d) for k, d in (tile_shifts or {}).items()}
    blank_tiles = {tuple(k) for k in blank_tiles}
    extra = max([abs(v) for d in tile_shifts.values() for v in d] + [0])
    step = int(round(tile_px * (1 - overlap)))
    pad = int(np.ceil(drift_px + 2 * elastic_px + rotation_deg * np.pi / 180 * max(h, w) + jitter_px)) + 4
    rows = max(1, int(np.ceil((h + 2 * pad - tile_px) / step)) + 1)
    cols = max(1, int(np.ceil((w + 2 * pad - tile_px) / step)) + 1)
    margin = pad + step + 2 * jitter_px + 8 + extra
    world = texture((h + 2 * margin, w + 2 * margin), seed, texture_kind)
    vig = None
    if vignetting:
        ct = (tile_px - 1) / 2.0
        yy, xx = np.mgrid[:tile_px, :tile_px].astype(np.float64)
        vig = 1.0 - vignetting * ((yy - ct) ** 2 + (xx - ct) ** 2) / (2 * ct * ct)
    (out / "tiles").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    manifest, true_rows, sections = [], [], []
    raw = np.zeros((n_sections, h, w), dtype=np.uint8)
    th, t, s = 0.0, np.zeros(2), np.zeros(3)
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    from PIL import Image

    for z in range(n_sections):
        if z == 0:
            tr: dict[str, Any] = {"affine": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "elastic": None}
            origin: tuple[int, ...] = (0, 0)
        else:
            th = float(
                np.clip(
                    0.9 * th + rng.normal(0, 0.35 * np.deg2rad(rotation_deg)),
                    -np.deg2rad(rotation_deg),
                    np.deg2rad(rotation_deg),
                )
            )
            t = np.clip(0.93 * t + rng.normal(0, 0.3 * drift_px, 2), -drift_px, drift_px)
            s = np.clip(0.9 * s + rng.normal(0, 0.4 * scale, 3), -scale, scale)
            rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
            a = rot @ np.array([[1 + s[0], s[2]], [0.0, 1 + s[1]]])
            tt = c - a @ c + t
            ny, nx = (
                int(np.ceil((h + 2 * elastic_spacing) / elastic_spacing)) + 1,
                int(np.ceil((w + 2 * elastic_spacing) / elastic_spacing)) + 1,
            )
            tr = {
                "affine": [[a[0, 0], a[0, 1], tt[0]], [a[1, 0], a[1, 1], tt[1]]],
                "elastic": {
                    "origin_yx": [-elastic_spacing, -elastic_spacing],
                    "spacing_px": elastic_spacing,
                    "dy": rng.normal(0, elastic_px, (ny, nx)).tolist(),
                    "dx": rng.normal(0, elastic_px, (ny, nx)).tolist(),
                }
                if elastic_px > 0
                else None,
            }
            # the stage places the tiles so that they cover the drifted frame (as connectome synth does)
            edge = np.concatenate(
                [
                    np.stack(np.meshgrid(np.linspace(0, h - 1, 33), [0, w - 1], indexing="ij"), -1).reshape(-1, 2),
                    np.stack(np.meshgrid([0, h - 1], np.linspace(0, w - 1, 33), indexing="ij"), -1).reshape(-1, 2),
                ]
            )
            lo = forward(tr, edge).min(axis=0)
            origin = tuple(int(np.floor(v)) - jitter_px - int(rng.integers(0, 4)) for v in lo)
        # the section's montage over its tile region, sampled from the world through F^-1
        y0, x0 = origin[0] - jitter_px - extra, origin[1] - jitter_px - extra
        y1 = origin[0] + (rows - 1) * step + tile_px + jitter_px + extra
        x1 = origin[1] + (cols - 1) * step + tile_px + jitter_px + extra
        # F^-1 on a 4 px grid, interpolated (error << 0.01 px for these smooth warps)
        gy, gx = np.arange(y0, y1 + 4, 4, dtype=np.float64), np.arange(x0, x1 + 4, 4, dtype=np.float64)
        coarse = inverse(tr, np.stack(np.meshgrid(gy, gx, indexing="ij"), -1).reshape(-1, 2))
        coarse = coarse.reshape(len(gy), len(gx), 2)
        fy = (np.arange(y0, y1) - y0) / 4.0
        fx = (np.arange(x0, x1) - x0) / 4.0
        cy, cx = np.meshgrid(fy, fx, indexing="ij")
        p = [ndi.map_coordinates(coarse[..., k], [cy, cx], order=3, mode="nearest") for k in (0, 1)]
        montage = ndi.map_coordinates(world, [p[0] + margin, p[1] + margin], order=3, mode="nearest")
        raw[z] = np.clip(np.rint(world[margin : margin + h, margin : margin + w]), 0, 255).astype(np.uint8)
        sections.append(
            {
                "section": z,
                "missing": False,
                "damaged": z in noise_sections,
                "damage": None,
                "stage_origin_yx": list(origin),
                "transform": tr,
            }
        )
        for r in range(rows):
            for cc in range(cols):
                nom = (origin[0] + r * step, origin[1] + cc * step)
                j = np.clip(np.rint(rng.normal(0, jitter_px / 2.0, 2)), -jitter_px, jitter_px).astype(int)
                if z == 0 and r == 0 and cc == 0:
                    j[:] = 0
                ty, tx = nom[0] + int(j[0]), nom[1] + int(j[1])
                if (z, r, cc) in tile_shifts:
                    ty, tx = ty + tile_shifts[(z, r, cc)][0], tx + tile_shifts[(z, r, cc)][1]
                tile = montage[ty - y0 : ty - y0 + tile_px, tx - x0 : tx - x0 + tile_px]
                if (z, r, cc) in blank_tiles:
                    tile = np.full_like(tile, 140.0)
                if vig is not None:
                    tile = tile * vig
                gain, off = float(np.exp(rng.normal(0, 0.025))), float(rng.normal(0, 2.0))
                if gain_sigma != 0.025:
                    gain = float(np.exp(np.log(gain) * gain_sigma / 0.025))
                img = gain * tile + off + rng.normal(0, noise, tile.shape)
                if z in noise_sections:
                    img = rng.normal(128, 40, tile.shape)
                rel = f"s{z:04d}/r{r:02d}_c{cc:02d}.png"
                (out / "tiles" / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(out / "tiles" / rel)
                manifest.append((z, r, cc, rel, nom[1], nom[0]))
                true_rows.append((z, r, cc, tx, ty))
    with open(out / "tiles" / "manifest.csv", "w", newline="") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["section", "row", "col", "path", "x", "y"])
        wr.writerows(manifest)
    with open(out / "truth" / "tiles.csv", "w", newline="") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["section", "row", "col", "x", "y"])
        wr.writerows(true_rows)
    (out / "truth" / "sections.json").write_text(json.dumps({"shape_zyx": [n_sections, h, w], "sections": sections}))
    np.save(out / "truth_raw.npy", raw)
    return out
