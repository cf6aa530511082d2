"""Where a synthetic dataset goes and how it is written.

Layout of ``OUT`` (see ``shared/CONTRACT.md``, "Synthetic dataset")::

    OUT/
      synth.json              parameters, seed, preset, shape, voxel size, measured statistics
                              (statistics.content_flow: mean (dy, dx) px per section that the
                              truth raw's content moves from z to z+1, see flow.py)
      tiles/manifest.csv      section,row,col,path,x,y   (nominal stage positions, px)
      tiles/s0003/r01_c02.png 8-bit grayscale tiles
      truth.zarr/             zarr v3 group: raw (uint8), neurons (uint64), vessels (uint8),
                              synapse_clefts (uint64); each with voxel_size_nm [z, y, x]
      truth/synapses.csv      synapse_id,z,y,x,pre_segment_id,post_segment_id,score
      truth/connectivity.csv  pre_segment_id,post_segment_id,synapse_count,mean_score
      truth/tiles.csv         section,row,col,x,y,gain,offset   (true positions, px)
      truth/sections.json     per section: transform aligned -> montage, flags
      truth/skeletons/        the true skeleton of every neuron (its centre lines, nm), as
                              neuroglancer precomputed skeletons: info + one file <neuron id>
                              (see connectome/skeletons/precomputed.py); cropped to the volume
      preview.png             with --preview

``OUT`` must be missing, empty, or an earlier ``connectome synth`` output (recognised by
``synth.json`` or the in-progress marker ``.synth-incomplete``). A complete earlier output made
with the same parameters and seed is kept as it is (the command is idempotent); otherwise the
generator's own entries are removed and rewritten; other files are left alone. The marker is
written first and removed last, so a killed run is recognised and redone by the next one.
Small files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import cast

import numpy as np

from connectome.errors import UserInputError

MARKER = ".synth-incomplete"
OWNED = ("tiles", "truth.zarr", "truth", "preview.png", "synth.json", MARKER)
TRUTH_ARRAYS = {"raw": np.uint8, "neurons": np.uint64, "vessels": np.uint8, "synapse_clefts": np.uint64}


def _norm(obj):
    return json.loads(json.dumps(obj))


def prepare(out: Path, fingerprint: dict) -> bool:
    """Check and claim ``out``. True when it already holds this exact, complete dataset."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"synth: OUT {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        meta_path, marker = out / "synth.json", out / MARKER
        if not meta_path.is_file() and not marker.is_file():
            raise UserInputError(
                f"synth: OUT {out} is not empty and is not a `connectome synth` output "
                "(no synth.json); give a new or empty folder"
            )
        if meta_path.is_file() and not marker.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
            if meta.get("fingerprint") == _norm(fingerprint):
                return True
        try:
            for name in OWNED:
                p = out / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        except OSError as exc:
            raise UserInputError(
                f"synth: OUT {out}: cannot replace the earlier output ({exc.strerror or exc})"
            ) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps(_norm(fingerprint)))
        (out / "tiles").mkdir(exist_ok=True)
        (out / "truth").mkdir(exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"synth: OUT {out} is not writable ({exc.strerror or exc})") from None
    return False


def finish(out: Path) -> None:
    (out / MARKER).unlink(missing_ok=True)


def create_truth(path: Path, cfg) -> dict:
    """Create ``truth.zarr`` and its four arrays; return them by name."""
    import zarr
    from zarr.storage import LocalStore

    from connectome.workspace import Frame

    shape = cast("tuple[int, int, int]", tuple(int(s) for s in cfg.shape_zyx))
    chunks = tuple(int(min(c, s)) for c, s in zip(cfg.chunk_zyx, shape))
    vs = [float(v) for v in cfg.voxel_size_nm]
    group = zarr.open_group(LocalStore(str(path)), mode="w", zarr_format=3)
    group.attrs["connectome"] = Frame(shape, cast("tuple[float, float, float]", tuple(vs))).to_json()
    arrays = {}
    for name, dtype in TRUTH_ARRAYS.items():
        arrays[name] = group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, attributes={"voxel_size_nm": vs}
        )
    return arrays


def _atomic(path: Path):
    tmp = path.with_name(path.name + ".tmp")
    return tmp


def write_csv(path: Path, header, rows) -> None:
    tmp = _atomic(path)
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    tmp = _atomic(path)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def tile_relpath(section: int, row: int, col: int, fmt: str) -> str:
    return f"s{section:04d}/r{row:02d}_c{col:02d}.{fmt}"


def write_tile(tiles_dir: Path, rel: str, img: np.ndarray, fmt: str) -> None:
    path = tiles_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        from PIL import Image

        Image.fromarray(img).save(path, format="PNG", compress_level=1)
    else:
        import tifffile

        tifffile.imwrite(path, img, photometric="minisblack")


def fmt_float(v: float | np.floating, nd: int = 4) -> str:
    return f"{float(v):.{nd}f}".rstrip("0").rstrip(".") if np.isfinite(v) else "nan"


SKELETON_INFO = {
    "@type": "neuroglancer_skeletons",
    "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
    "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1}],
}


def truth_skeletons(tubes, shape_zyx, voxel_size_nm) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per neuron id: (vertices nm z y x, edges, radii nm) of its centre lines inside the volume.

    A neuron's tubes (root, branches, spines) are chained point to point; a branch starts at a
    point of its parent, so points at equal positions are merged into one vertex, which joins
    the tree. Vertices outside ``[0, shape * voxel)`` nm are dropped with their edges (voxel i
    spans [i, i+1) * voxel, its centre at (i + 0.5) * voxel, as the truth volumes are drawn)."""
    hi = np.asarray(shape_zyx, float) * np.asarray(voxel_size_nm, float)
    by_neuron: dict[int, list] = {}
    for t in tubes:
        by_neuron.setdefault(int(t.neuron), []).append(t)
    out = {}
    for nid in sorted(by_neuron):
        pts = np.concatenate([t.points for t in by_neuron[nid]])
        rad = np.concatenate([t.radii for t in by_neuron[nid]])
        starts = np.cumsum([0] + [len(t.points) for t in by_neuron[nid]])
        edges = np.concatenate(
            [
                np.stack([np.arange(a, b - 1), np.arange(a + 1, b)], 1)
                for a, b in zip(starts[:-1], starts[1:])
                if b - a > 1
            ]
            or [np.zeros((0, 2), int)]
        )
        key = np.round(pts, 3)
        uniq, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        radii = np.zeros(len(uniq))
        np.maximum.at(radii, inv, rad)
        e = np.sort(inv[edges], axis=1)
        e = np.unique(e[e[:, 0] != e[:, 1]], axis=0)
        inside = np.all((uniq >= 0) & (uniq < hi), axis=1)
        new = np.cumsum(inside) - 1
        e = e[inside[e[:, 0]] & inside[e[:, 1]]]
        if len(e):
            out[nid] = (uniq[inside], new[e], radii[inside])
    return out


def write_truth_skeletons(folder: Path, skeletons) -> int:
    """``folder/info`` and one precomputed skeleton file per neuron (x, y, z order on disk)."""
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    for nid, (v, e, r) in skeletons.items():
        data = (
            struct.pack("<II", len(v), len(e))
            + np.ascontiguousarray(v[:, ::-1], "<f4").tobytes()
            + np.ascontiguousarray(e, "<u4").tobytes()
            + np.ascontiguousarray(r, "<f4").tobytes()
        )
        tmp = _atomic(folder / str(nid))
        tmp.write_bytes(data)
        os.replace(tmp, folder / str(nid))
    write_json(folder / "info", SKELETON_INFO)
    return len(skeletons)
