"""Quality control of stitching and alignment: NCC, the QC tables, PNG previews.

* :func:`ncc` is the Pearson correlation of two images over a mask (``nan`` when either is
  flat there) -- the same measure ``connectome evaluate`` reports for neighbour sections.
* Tables are CSV files with a header line, written atomically (temporary file + rename), one
  row per tile / pair / section; floats with 4 decimals, booleans as 0/1, missing values empty.
* Previews are RGB PNGs: red = the earlier section, green = the later one, so aligned
  structures look yellow and misaligned ones show red/green fringes; "before" (the montages
  in their own frames) on the left, "after" (the aligned sections) on the right.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from connectome.blockwise.markers import atomic_write_text


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return ""
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f"{f:.4f}"
    return str(v)


def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping]) -> int:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    n = 0
    for row in rows:
        writer.writerow([_fmt(row.get(c)) for c in columns])
        n += 1
    atomic_write_text(Path(path), buf.getvalue())
    return n


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(img, dtype=np.float32)), 0, 255).astype(np.uint8)


def overlay(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8: red = earlier, green = later."""
    h = min(earlier.shape[0], later.shape[0])
    w = min(earlier.shape[1], later.shape[1])
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[..., 0] = _to_u8(earlier[:h, :w])
    rgb[..., 1] = _to_u8(later[:h, :w])
    return rgb


def write_preview(
    path: str | Path, before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray], max_side: int = 1024
) -> None:
    """Before | after red-green overlays side by side, downsampled to at most ``max_side``."""
    from PIL import Image

    left, right = overlay(*before), overlay(*after)
    h = max(left.shape[0], right.shape[0])
    gap = 8
    canvas = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] + gap :] = right
    step = max(1, int(math.ceil(max(canvas.shape[:2]) / max_side)))
    img = Image.fromarray(canvas[::step, ::step])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    from connectome.atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), buf.getvalue())
