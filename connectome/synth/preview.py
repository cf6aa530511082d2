"""``OUT/preview.png``: a few sections of raw beside their ground truth, to judge by eye.

One row per section (first, middle, last; at most ``max_px`` square, cut from the centre)::

    raw | raw + neurons (one colour each, ECS black) | raw + vessel (blue) + clefts (red)
        | one acquired tile of that section (drifted, warped, own gain)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

GAP = 4


def _colours(ids: np.ndarray) -> np.ndarray:
    h = (ids.astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFF)
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(255) for s in (16, 8, 0)], -1).astype(np.float32)
    return 60 + 0.75 * rgb


def _panel_row(raw, neurons, vessels, clefts, tile):
    g = np.repeat(raw[..., None].astype(np.float32), 3, -1)
    seg = np.where((neurons > 0)[..., None], 0.5 * g + 0.5 * _colours(neurons), 0.25 * g)
    ann = g.copy()
    ann[vessels > 0] = 0.5 * ann[vessels > 0] + 0.5 * np.array([60, 110, 255])
    ann[clefts > 0] = np.array([255, 30, 30])
    panels = [g, seg, ann]
    if tile is not None:
        t = np.repeat(tile[..., None].astype(np.float32), 3, -1)
        canvas = np.full_like(g, 255.0)
        hh, ww = min(t.shape[0], g.shape[0]), min(t.shape[1], g.shape[1])
        canvas[:hh, :ww] = t[:hh, :ww]
        panels.append(canvas)
    sep = np.full((g.shape[0], GAP, 3), 255.0)
    row = [panels[0]]
    for p in panels[1:]:
        row += [sep, p]
    return np.concatenate(row, axis=1)


def write_preview(out: Path, max_px: int = 384, sections=None) -> Path:
    import zarr
    from PIL import Image
    from zarr.storage import LocalStore

    out = Path(out)
    g = zarr.open_group(LocalStore(str(out / "truth.zarr"), read_only=True), mode="r")

    def array(name: str) -> zarr.Array:
        a = g[name]
        assert isinstance(a, zarr.Array)  # truth.zarr holds arrays only
        return a

    nz, h, w = array("raw").shape
    sy, sx = min(h, max_px), min(w, max_px)
    y0, x0 = (h - sy) // 2, (w - sx) // 2
    tiles: dict[int, str] = {}
    manifest = out / "tiles" / "manifest.csv"
    if manifest.is_file():
        with open(manifest) as f:
            for row in csv.DictReader(f):
                tiles.setdefault(int(row["section"]), row["path"])
    rows = []
    for z in sections if sections is not None else sorted({0, nz // 2, nz - 1}):
        sl = (z, slice(y0, y0 + sy), slice(x0, x0 + sx))
        tile = None
        if z in tiles:
            tile = np.asarray(Image.open(out / "tiles" / tiles[z]).convert("L"))
        rows.append(
            _panel_row(array("raw")[sl], array("neurons")[sl], array("vessels")[sl], array("synapse_clefts")[sl], tile)
        )
        rows.append(np.full((GAP, rows[-1].shape[1], 3), 255.0))
    img = np.concatenate(rows[:-1], axis=0)
    path = out / "preview.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path
