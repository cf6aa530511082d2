"""The synapse table as a neuroglancer precomputed annotation layer (``OUT/synapses``).

One POINT per synapse at its (x, y, z) voxel centre, annotation id = ``synapse_id``, property
``score`` (float32), and two relationships, ``pre_segment`` and ``post_segment``, so a
neuroglancer annotation layer linked to the segmentation shows (with ``filterBySegmentation``)
exactly the synapses of the selected segments. Indices written:

* ``spatial0/<ix>_<iy>_<iz>``: a grid over the volume (cells of at most
  :data:`SPATIAL_CELL_XYZ` voxels), every annotation in exactly one cell (``limit`` = the
  fullest cell, so nothing is subsampled);
* ``by_id`` and ``rel_pre_segment`` / ``rel_post_segment``: sharded
  (``neuroglancer_uint64_sharded_v1``, murmurhash), so a million synapses are a few files.

Encodings follow the precomputed annotation spec: an annotation = float32 x, y, z + float32
score; a list = uint64 count, the annotations, then their uint64 ids; a by_id entry = the
annotation, then per relationship uint32 count + uint64 segment ids.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from connectome.viewer.fsutil import write_bytes, write_json

SPATIAL_CELL_XYZ = (512, 512, 64)
RELATIONSHIPS = ("pre_segment", "post_segment")
RECORD = np.dtype([("xyz", "<f4", (3,)), ("score", "<f4")])


def _encode_list(records: np.ndarray, ids: np.ndarray) -> bytes:
    return np.array([records.size], "<u8").tobytes() + records.tobytes() + np.ascontiguousarray(ids, "<u8").tobytes()


def _sharding(num_labels: int):
    from cloudvolume.datasource.precomputed.sharding import ShardingSpecification, compute_shard_params_for_hashed

    shard_bits, minishard_bits, preshift = compute_shard_params_for_hashed(max(num_labels, 1))
    return ShardingSpecification(
        "neuroglancer_uint64_sharded_v1",
        preshift_bits=preshift,
        hash="murmurhash3_x86_128",
        minishard_bits=minishard_bits,
        shard_bits=shard_bits,
        minishard_index_encoding="gzip",
        data_encoding="gzip",
    )


def _write_sharded(folder: Path, data: dict[int, bytes]) -> dict:
    from cloudvolume.datasource.precomputed.sharding import synthesize_shard_files

    spec = _sharding(len(data))
    folder.mkdir(parents=True, exist_ok=True)
    if data:
        for name, blob in synthesize_shard_files(spec, data).items():
            write_bytes(folder / name, blob)
    return {k: int(v) if isinstance(v, np.integer) else v for k, v in spec.to_dict().items()}


def write_synapse_annotations(table, out_dir: Path, shape_zyx, res_zyx) -> dict:
    """Write the layer from a :class:`~connectome.synapses.table.SynapseTable`; returns a summary."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shape_xyz = np.array(shape_zyx[::-1], np.float64)
    n = len(table)
    rec = np.zeros(n, RECORD)
    rec["xyz"] = np.stack([table.x, table.y, table.z], axis=1) + 0.5  # voxel centres
    rec["score"] = table.score
    ids = table.synapse_id.astype(np.uint64)

    # spatial grid
    cell = np.minimum(np.array(SPATIAL_CELL_XYZ, np.float64), shape_xyz)
    grid = np.maximum(np.ceil(shape_xyz / cell).astype(int), 1)
    idx = np.clip(np.floor(rec["xyz"].astype(np.float64) / cell).astype(int), 0, grid - 1)
    key = (idx[:, 0] * grid[1] + idx[:, 1]) * grid[2] + idx[:, 2]
    order = np.argsort(key, kind="stable")
    limit = 1
    for k in np.unique(key):
        sel = order[key[order] == k]
        ix, iy, iz = idx[sel[0]]
        write_bytes(out_dir / "spatial0" / f"{ix}_{iy}_{iz}", _encode_list(rec[sel], ids[sel]))
        limit = max(limit, sel.size)
    (out_dir / "spatial0").mkdir(parents=True, exist_ok=True)

    # by id: the annotation + its related segments (0 = none: not listed)
    pre, post = table.pre_segment_id.astype(np.uint64), table.post_segment_id.astype(np.uint64)
    by_id = {}
    for i in range(n):
        parts = [rec[i : i + 1].tobytes()]
        for seg in (int(pre[i]), int(post[i])):
            parts.append(
                np.array([1 if seg else 0], "<u4").tobytes() + (np.array([seg], "<u8").tobytes() if seg else b"")
            )
        by_id[int(ids[i])] = b"".join(parts)
    by_id_sharding = _write_sharded(out_dir / "by_id", by_id)

    relationships = []
    for name, seg in zip(RELATIONSHIPS, (pre, post)):
        groups: dict[int, list[int]] = defaultdict(list)
        nz = np.flatnonzero(seg != 0)
        if nz.size:
            o = nz[np.argsort(seg[nz], kind="stable")]
            bounds = np.flatnonzero(seg[o][1:] != seg[o][:-1]) + 1
            for part in np.split(o, bounds):
                groups[int(seg[part[0]])] = part
        data = {s: _encode_list(rec[p], ids[p]) for s, p in groups.items()}
        relationships.append(
            {"id": name, "key": f"rel_{name}", "sharding": _write_sharded(out_dir / f"rel_{name}", data)}
        )

    res_xyz = [float(r) for r in res_zyx[::-1]]
    info = {
        "@type": "neuroglancer_annotations_v1",
        "dimensions": {a: [r * 1e-9, "m"] for a, r in zip("xyz", res_xyz)},
        "lower_bound": [0.0, 0.0, 0.0],
        "upper_bound": [float(s) for s in shape_xyz],
        "annotation_type": "POINT",
        "properties": [{"id": "score", "type": "float32", "description": "synapse confidence in [0, 1]"}],
        "relationships": relationships,
        "by_id": {"key": "by_id", "sharding": by_id_sharding},
        "spatial": [
            {
                "key": "spatial0",
                "grid_shape": [int(g) for g in grid],
                "chunk_size": [float(c) for c in cell],
                "limit": int(limit),
            }
        ],
    }
    write_json(out_dir / "info", info)
    return {"synapses": n, "spatial_cells": int(np.unique(key).size) if n else 0}
