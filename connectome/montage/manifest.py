"""The tile manifest (input of ``connectome stitch``) and the tile images it lists.

Format (see ``shared/CONTRACT.md``): a CSV file with the header ``section,row,col,path,x,y``
(further columns are ignored)::

    section,row,col,path,x,y
    0,0,0,s000/r0_c0.png,0,0
    0,0,1,s000/r0_c1.png,133,0

* ``section``, ``row``, ``col``: integers >= 0; ``(section, row, col)`` is unique.
* ``path``: relative to the manifest's folder; a path that leads outside it (absolute, or with
  ``..``) is refused unless ``allow_outside`` (``connectome stitch --allow-absolute-paths``).
* ``x``, ``y``: the *nominal* stage position of the tile's top-left pixel (element ``[0, 0]``)
  in pixels; any finite numbers (only differences within a section matter).
* Tiles are 8- or 16-bit grayscale PNG or TIFF images; all tiles of a manifest share one
  shape and one dtype (the most common one; a tile that differs is an error naming it).
* Sections may be missing (gaps in the numbering); a section listed only with empty paths is
  an *empty section*, an error.

Validation happens before anything is written (:func:`check_tiles`): the manifest is parsed,
every tile's header is read (shape, dtype) and its data checked for truncation (PNG chunk
CRCs; TIFF strip extents against the file size) without decoding the pixels. A bad tile is an
error naming the section, row, column and file, unless ``skip_bad_tiles`` is given, in which
case it is reported and left out (a section left without tiles is treated as missing).
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np

from connectome.errors import UserInputError

log = logging.getLogger(__name__)

COLUMNS = ("section", "row", "col", "path", "x", "y")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class TileRecord:
    """One line of the manifest (``path`` resolved to an absolute path)."""

    section: int
    row: int
    col: int
    path: str
    x: float
    y: float
    line: int = 0

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.section, self.row, self.col)

    @property
    def name(self) -> str:
        return f"section {self.section} row {self.row} col {self.col} ({self.path})"


@dataclass(frozen=True)
class Manifest:
    path: str
    tiles: tuple[TileRecord, ...]

    def sections(self) -> list[int]:
        return sorted({t.section for t in self.tiles})

    def section_tiles(self, section: int) -> tuple[TileRecord, ...]:
        return tuple(t for t in self.tiles if t.section == section)


@dataclass(frozen=True)
class TileSpec:
    """Shape ``(h, w)`` and dtype every tile of the manifest has."""

    shape_hw: tuple[int, int]
    dtype: str


@dataclass(frozen=True)
class BadTile:
    tile: TileRecord
    reason: str

    def message(self) -> str:
        return f"tile {self.tile.name}: {self.reason}"


# ---------------------------------------------------------------------------------------------
# the CSV


@overload
def _number(text: str, what: str, where: str, integer: Literal[True]) -> int: ...


@overload
def _number(text: str, what: str, where: str, integer: Literal[False]) -> float: ...


def _number(text: str, what: str, where: str, integer: bool) -> float | int:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserInputError(f"{where}: {what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UserInputError(f"{where}: {what} must be finite, got {text!r}")
    if integer:
        if value != int(value) or value < 0:
            raise UserInputError(f"{where}: {what} must be an integer >= 0, got {text!r}")
        return int(value)
    return value


def read_manifest(path: str | Path, allow_outside: bool = False) -> Manifest:
    """Parse and validate a manifest; :class:`UserInputError` names the line at fault."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{p}: tile manifest not found")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{p}: cannot read the tile manifest ({exc})") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise UserInputError(f"{p}: empty tile manifest (expected the header {','.join(COLUMNS)})")
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise UserInputError(
            f"{p}: missing column(s) {', '.join(missing)} (expected the header "
            f"{','.join(COLUMNS)}, got {','.join(header)})"
        )
    idx = {c: header.index(c) for c in COLUMNS}
    base = p.parent
    tiles: list[TileRecord] = []
    seen: dict[tuple[int, int, int], int] = {}
    empty: dict[int, int] = {}
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{p} line {lineno}"
        if len(row) < len(header):
            raise UserInputError(f"{where}: expected {len(header)} fields, got {len(row)}")
        section = _number(row[idx["section"]].strip(), "section", where, True)
        r = _number(row[idx["row"]].strip(), "row", where, True)
        c = _number(row[idx["col"]].strip(), "col", where, True)
        where = f"{p} line {lineno} (section {section} row {r} col {c})"
        x = _number(row[idx["x"]].strip(), "x", where, False)
        y = _number(row[idx["y"]].strip(), "y", where, False)
        key = (section, r, c)
        if key in seen:
            raise UserInputError(
                f"{where}: duplicate tile (section {section}, row {r}, col {c}) already listed on line {seen[key]}"
            )
        seen[key] = lineno
        rel = row[idx["path"]].strip()
        if not rel:
            empty[section] = empty.get(section, 0) + 1
            continue
        tile_path = Path(rel) if Path(rel).is_absolute() else base / rel
        if not allow_outside:
            inside = base.resolve()
            target = tile_path.resolve()
            if target != inside and inside not in target.parents:
                raise UserInputError(
                    f"{where}: tile path {rel!r} lies outside the manifest's folder {inside}; "
                    "use paths relative to it, or pass --allow-absolute-paths"
                )
        tiles.append(TileRecord(section, r, c, str(tile_path), float(x), float(y), lineno))
    listed = {t.section for t in tiles}
    for section in sorted(empty):
        if section not in listed:
            raise UserInputError(f"{p}: section {section} is empty ({empty[section]} line(s) with no tile path)")
        raise UserInputError(f"{p}: section {section} has {empty[section]} line(s) with an empty tile path")
    if not tiles:
        raise UserInputError(f"{p}: the manifest lists no tiles")
    return Manifest(str(p), tuple(tiles))


# ---------------------------------------------------------------------------------------------
# tile images


def probe_tile(path: str) -> tuple[tuple[int, int], str]:
    """``((h, w), dtype)`` of a tile image from its header; raises ``ValueError`` with the reason
    if the file is missing, not an image, not 8/16-bit grayscale, or truncated."""
    p = Path(path)
    if p.is_dir():
        raise ValueError("is a directory, not an image file")
    if not p.is_file():
        raise ValueError("file not found")
    size = p.stat().st_size
    if size == 0:
        raise ValueError("empty file (0 bytes)")
    if p.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(str(p)) as tif:
                page = tif.pages[0]
                shape, dtype = tuple(page.shape), np.dtype(page.dtype)
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
        except Exception as exc:  # tifffile raises many types for broken files
            raise ValueError(f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
        if ends and max(ends) > size:
            raise ValueError(f"truncated TIFF (data extends to byte {max(ends)}, file has {size})")
        if len(shape) == 3 and shape[-1] == 1:
            shape = shape[:2]
        if len(shape) != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {list(shape)}")
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(str(p)) as im:
                mode, (w, h) = im.mode, im.size
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None
        modes = {"L": "uint8", "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "I": "uint16"}
        if mode not in modes:
            raise ValueError(f"expected an 8- or 16-bit grayscale image, got PIL mode {mode!r}")
        shape, dtype = (h, w), np.dtype(modes[mode])
    if dtype not in (np.dtype("uint8"), np.dtype("uint16")):
        raise ValueError(f"expected an 8- or 16-bit grayscale image, got dtype {dtype}")
    return (int(shape[0]), int(shape[1])), str(dtype)


def read_tile(tile: TileRecord, spec: TileSpec) -> np.ndarray:
    """The pixels of a tile; ``ValueError`` naming the tile if they cannot be decoded or do not
    match ``spec``."""
    try:
        if Path(tile.path).suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            data = np.asarray(tifffile.imread(tile.path, key=0))
        else:
            from PIL import Image

            with Image.open(tile.path) as im:
                data = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is reported with the tile
        raise ValueError(f"tile {tile.name}: cannot decode ({type(exc).__name__}: {exc})") from None
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.dtype == np.int32 and spec.dtype == "uint16":  # PIL mode "I"
        data = data.astype(np.uint16)
    if tuple(data.shape) != tuple(spec.shape_hw) or str(data.dtype) != spec.dtype:
        raise ValueError(
            f"tile {tile.name}: decoded {list(data.shape)} {data.dtype}, expected {list(spec.shape_hw)} {spec.dtype}"
        )
    return data


def check_tiles(manifest: Manifest, skip_bad_tiles: bool = False) -> tuple[Manifest, TileSpec, tuple[BadTile, ...]]:
    """Probe every tile. Returns the manifest without bad tiles, the common tile spec and the
    bad tiles; without ``skip_bad_tiles`` the first bad tile raises :class:`UserInputError`."""
    probes: dict[tuple[int, int, int], tuple[tuple[int, int], str]] = {}
    bad: list[BadTile] = []
    for tile in manifest.tiles:
        try:
            probes[tile.key] = probe_tile(tile.path)
        except ValueError as exc:
            item = BadTile(tile, str(exc))
            if not skip_bad_tiles:
                raise UserInputError(f"{item.message()} (pass --skip-bad-tiles to leave it out)") from None
            bad.append(item)
    if not probes:
        raise UserInputError(
            f"{manifest.path}: none of the {len(manifest.tiles)} listed tiles is usable (first: {bad[0].message()})"
        )
    counts = Counter(probes.values())
    (shape, dtype), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    spec = TileSpec(shape, dtype)
    good: list[TileRecord] = []
    for tile in manifest.tiles:
        if tile.key not in probes:
            continue
        t_shape, t_dtype = probes[tile.key]
        if (t_shape, t_dtype) != (shape, dtype):
            what = f"shape {t_shape[0]}x{t_shape[1]} (h x w)" if t_shape != shape else f"dtype {t_dtype}"
            want = f"{shape[0]}x{shape[1]}" if t_shape != shape else dtype
            item = BadTile(tile, f"{what}, expected {want} like the other {counts[(shape, dtype)]} tiles")
            if not skip_bad_tiles:
                raise UserInputError(f"{item.message()} (pass --skip-bad-tiles to leave it out)")
            bad.append(item)
            continue
        good.append(tile)
    for item in bad:
        log.warning("skipping bad %s", item.message())
    before, after = set(manifest.sections()), {t.section for t in good}
    for section in sorted(before - after):
        log.warning("section %d: all its tiles are bad; treated as missing", section)
    return Manifest(manifest.path, tuple(good)), spec, tuple(bad)
