"""Segment meshes by marching cubes, in neuroglancer's precomputed (legacy) mesh format.

Layout under ``OUT/segmentation/mesh/``: ``info`` = ``{"@type": "neuroglancer_legacy_mesh"}``;
one fragment per (segment, block) named ``<id>:0:<block_id>``: ``uint32`` vertex count,
``float32[n][3]`` vertices (x, y, z in nm), ``uint32[m][3]`` triangles; one manifest per
segment ``<id>:0`` = ``{"fragments": [...]}``.

Blocks are meshed independently: a block reads one extra voxel on its high side, and marching
cubes runs between voxel centres, so the fragments of neighbouring blocks meet without gaps or
overlap. Only at the volume's boundary is the mask padded with background, to close the surface.
Vertices sit at voxel centres: voxel i spans [i, i+1), its centre is i + 0.5 (as neuroglancer).
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np

MESH_BLOCK_ZYX = (64, 256, 256)


def encode_fragment(vertices_xyz_nm: np.ndarray, faces: np.ndarray) -> bytes:
    v = np.ascontiguousarray(vertices_xyz_nm, "<f4")
    f = np.ascontiguousarray(faces, "<u4")
    return struct.pack("<I", v.shape[0]) + v.tobytes() + f.tobytes()


def decode_fragment(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    n = struct.unpack_from("<I", data)[0]
    v = np.frombuffer(data, "<f4", 3 * n, 4).reshape(n, 3)
    f = np.frombuffer(data, "<u4", offset=4 + 12 * n).reshape(-1, 3)
    return v, f


def mesh_block(block_zyx: np.ndarray, origin_zyx, shape_zyx, res_zyx) -> dict[int, bytes]:
    """Fragments (segment id -> bytes) for one block read with one extra voxel on its high side
    (where the volume continues). ``origin_zyx`` = the block's first voxel."""
    from scipy import ndimage
    from skimage.measure import marching_cubes

    b = np.transpose(block_zyx, (2, 1, 0))  # x, y, z
    origin = np.array(origin_zyx[::-1], np.int64)
    vol_end = np.array(shape_zyx[::-1], np.int64)
    res = np.array(res_zyx[::-1], np.float64)
    ids, inv = np.unique(b, return_inverse=True)
    inv = inv.reshape(b.shape).astype(np.int32)
    if ids.size and ids[0] == 0:
        labels, ids = inv, ids[1:]
    else:
        labels = inv + 1
    out: dict[int, bytes] = {}
    at_lo = origin == 0
    at_hi = origin + np.array(b.shape) >= vol_end
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        lo = np.array([max(s.start - 1, 0) for s in sl])
        hi = np.array([min(s.stop + 1, n) for s, n in zip(sl, b.shape)])
        m = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] == k
        pad_lo = ((lo == 0) & at_lo & np.array([s.start == 0 for s in sl])).astype(int)
        pad_hi = ((hi == np.array(b.shape)) & at_hi & np.array([s.stop == n for s, n in zip(sl, b.shape)])).astype(int)
        m = np.pad(m, list(zip(pad_lo, pad_hi))).astype(np.float32)
        if min(m.shape) < 2:
            continue
        try:
            verts, faces, _, _ = marching_cubes(m, level=0.5, allow_degenerate=False)
        except (ValueError, RuntimeError):  # no surface crosses this block
            continue
        if faces.size == 0:
            continue
        verts = (verts + (origin + lo - pad_lo) + 0.5) * res
        out[int(ids[k - 1])] = encode_fragment(verts, faces)
    return out


def write_manifests(mesh_dir: Path, fragments: dict[int, list[str]]) -> None:
    from connectome.viewer.fsutil import write_json

    mesh_dir.mkdir(parents=True, exist_ok=True)
    write_json(mesh_dir / "info", {"@type": "neuroglancer_legacy_mesh"})
    for seg_id, names in fragments.items():
        (mesh_dir / f"{seg_id}:0").write_text(json.dumps({"fragments": sorted(names)}))


def export_meshes(seg_array, mesh_dir: Path, shape_zyx, res_zyx, step, block_zyx=MESH_BLOCK_ZYX) -> dict:
    """Mesh every segment blockwise (resumable through ``step``); then write the manifests."""
    from connectome.blockwise import BlockGrid
    from connectome.viewer.fsutil import write_bytes
    from connectome.viewer.steps import block_delay

    grid = BlockGrid(tuple(shape_zyx), tuple(min(b, s) for b, s in zip(block_zyx, shape_zyx)))
    written = skipped = 0
    mesh_dir.mkdir(parents=True, exist_ok=True)
    for block in grid.blocks():
        bid = f"mesh_{block.block_id}"
        if step.is_done(bid):
            skipped += 1
            continue
        block_delay()
        (z0, y0, x0), (z1, y1, x1) = block.write_box.begin_zyx, block.write_box.end_zyx
        z1, y1, x1 = (min(e + 1, s) for e, s in zip((z1, y1, x1), shape_zyx))
        data = np.asarray(seg_array[z0:z1, y0:y1, x0:x1])
        frags = mesh_block(data, (z0, y0, x0), shape_zyx, res_zyx)
        for seg_id, blob in frags.items():
            write_bytes(mesh_dir / f"{seg_id}:0:{block.block_id}", blob)
        step.mark_done(bid, ids=np.array(sorted(frags), np.uint64))
        written += 1
    fragments: dict[int, list[str]] = defaultdict(list)
    for bid, payload in step.done_payloads("mesh_"):
        for seg_id in payload["ids"].tolist():
            fragments[int(seg_id)].append(f"{seg_id}:0:{bid[len('mesh_') :]}")
    write_manifests(mesh_dir, fragments)
    return {"mesh_blocks_written": written, "mesh_blocks_skipped": skipped, "meshed_segments": len(fragments)}
