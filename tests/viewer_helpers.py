"""Shared helpers for the viewer tests: a tiny asymmetric workspace and a sharded-file reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from connectome.workspace import Workspace

SHAPE = (8, 64, 96)  # z, y, x: every axis different, so an axis swap cannot pass
VOXEL = (40.0, 8.0, 8.0)
BIG = 2**63 + 5
SEG_BOXES = {  # id -> (z0, z1, y0, y1, x0, x1)
    7: (1, 7, 4, 30, 4, 50),
    BIG: (0, 8, 34, 60, 10, 40),
    3: (2, 6, 36, 56, 60, 90),
}
SYNAPSES = (
    "synapse_id,z,y,x,pre_segment_id,post_segment_id,score\n"
    f"1,3,20,45,7,{BIG},0.9\n2,4,40,62,3,7,0.8\n5,2,30,20,0,3,0.5\n"
)


def arrays():
    z, y, x = SHAPE
    rng = np.random.default_rng(0)
    raw = (np.indices(SHAPE)[2] * 2 + np.indices(SHAPE)[0] * 3 + rng.integers(0, 40, SHAPE)).astype(np.uint8)
    seg = np.zeros(SHAPE, np.uint64)
    for sid, (z0, z1, y0, y1, x0, x1) in SEG_BOXES.items():
        seg[z0:z1, y0:y1, x0:x1] = sid
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, 40:50, 45:55] = 1
    return raw, seg, mask


def make_workspace(path: Path, segmentation: bool = True, synapses: bool = True, mask: bool = True) -> Path:
    raw, seg, m = arrays()
    ws = Workspace.create(path, SHAPE, VOXEL)
    ws.require_array("raw", "uint8", (4, 32, 32))[:] = raw
    if segmentation:
        ws.require_array("segmentation", "uint64", (4, 32, 32))[:] = seg
    if mask:
        ws.require_array("vessel_mask", "uint8", (4, 32, 32))[:] = m
    if synapses:
        (Path(path) / "synapses.csv").write_text(SYNAPSES)
    return Path(path)


def read_sharded(folder: Path, spec: dict, key: int) -> bytes | None:
    """One entry of a neuroglancer_uint64_sharded_v1 folder, decoded independently of the writer."""
    from cloudvolume.datasource.precomputed.sharding import ShardingSpecification

    s = ShardingSpecification.from_dict(spec)
    loc = s.compute_shard_location(key)
    path = Path(folder) / f"{loc.shard_number}.shard"
    if not path.is_file():
        return None
    data = path.read_bytes()
    n_mini = 2 ** int(spec["minishard_bits"])
    index = np.frombuffer(data[: 16 * n_mini], "<u8").reshape(-1, 2)
    start, end = (int(v) for v in index[int(loc.minishard_number)])
    base = 16 * n_mini
    mini = data[base + start : base + end]
    if spec.get("minishard_index_encoding") == "gzip":
        mini = gzip.decompress(mini)
    arr = np.frombuffer(mini, "<u8").reshape(3, -1)
    keys = np.cumsum(arr[0], dtype=np.uint64)
    offset = 0
    for k, delta, size in zip(keys.tolist(), (int(v) for v in arr[1]), (int(v) for v in arr[2])):
        offset += delta
        if k == key:
            blob = data[base + offset : base + offset + size]
            return gzip.decompress(blob) if spec.get("data_encoding") == "gzip" else blob
        offset += size
    return None
