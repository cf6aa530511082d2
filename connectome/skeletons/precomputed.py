"""Neuroglancer precomputed skeletons (unsharded).

Layout (``DIR`` = e.g. ``WS/precomputed/segmentation/skeletons``)::

    DIR/info    {"@type": "neuroglancer_skeletons", "transform": identity 3x4 (row-major),
                 "vertex_attributes": [{"id": "radius", "data_type": "float32",
                 "num_components": 1}], "segment_properties": null}
    DIR/<id>    uint32 n_vertices, uint32 n_edges, float32[n][3] positions (x, y, z in nm),
                uint32[m][2] edges, float32[n] radius          (little endian)

The segmentation layer's ``info`` names the folder in its ``skeletons`` key (relative path), so
Neuroglancer draws the skeleton of every selected segment (see :func:`link_skeletons`).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from connectome.skeletons.model import Skeleton

INFO = {
    "@type": "neuroglancer_skeletons",
    "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
    "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1}],
}


def encode(sk: Skeleton) -> bytes:
    v = np.ascontiguousarray(sk.vertices_nm[:, ::-1], "<f4")
    e = np.ascontiguousarray(sk.edges, "<u4")
    r = np.ascontiguousarray(sk.radii_nm if sk.radii_nm is not None else np.zeros(sk.n_vertices), "<f4")
    return struct.pack("<II", sk.n_vertices, len(sk.edges)) + v.tobytes() + e.tobytes() + r.tobytes()


def decode(data: bytes) -> Skeleton:
    n, m = struct.unpack_from("<II", data)
    v = np.frombuffer(data, "<f4", 3 * n, 8).reshape(n, 3)[:, ::-1]
    e = np.frombuffer(data, "<u4", 2 * m, 8 + 12 * n).reshape(m, 2)
    off = 8 + 12 * n + 8 * m
    r = np.frombuffer(data, "<f4", n, off) if len(data) >= off + 4 * n else None
    return Skeleton(v.astype(np.float64), e.astype(np.int64), r)


def write_skeletons(folder: str | Path, skeletons: Mapping[int, Skeleton]) -> int:
    """Write ``info`` and one file per segment (replacing what was there); returns the count."""
    import shutil

    from connectome.viewer.fsutil import write_json

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for seg_id, sk in skeletons.items():
        (tmp / str(int(seg_id))).write_bytes(encode(sk))
    write_json(tmp / "info", INFO)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return len(skeletons)


def read_skeletons(folder: str | Path) -> dict[int, Skeleton]:
    folder = Path(folder)
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.isdigit():
            out[int(p.name)] = decode(p.read_bytes())
    return out


def link_skeletons(layer_dir: str | Path, subdir: str = "skeletons") -> bool:
    """Name ``subdir`` in the segmentation layer's ``info`` (``skeletons`` key), if the layer
    has an info yet; True when linked."""
    from connectome.viewer.fsutil import read_json, write_json

    info_path = Path(layer_dir) / "info"
    info = read_json(info_path)
    if not isinstance(info, dict) or not (Path(layer_dir) / subdir / "info").is_file():
        return False
    if info.get("skeletons") != subdir:
        info["skeletons"] = subdir
        write_json(info_path, info)
    return True
