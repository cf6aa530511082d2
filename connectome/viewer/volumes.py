"""Image and segmentation layers with a downsampled pyramid, written through cloud-volume.

Axis order: workspace arrays are (z, y, x); precomputed volumes are (x, y, z). Every block read
from zarr is transposed once (``zyx_to_xyz``) and nothing else touches the order.

Pyramid: each level halves x and y, and z too once the voxels are about isotropic
(:func:`plan_factors`). Levels are written in passes: a pass reads one "super-block" of its
source level (the zarr array for level 0, an already written precomputed level otherwise),
writes it, then pools it down through up to three further levels, each pooled block covering
whole chunks of its level. Super-blocks are bounded (:data:`MAX_BLOCK_VOXELS`), so memory
stays bounded whatever the volume size. Pooling: ``mean`` (image), ``mode`` (segmentation,
ties broken towards non-zero ids), ``max`` (masks, so thin vessels stay visible).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, cast

import numpy as np

from connectome.viewer.steps import Step, block_delay

log = logging.getLogger(__name__)

MAX_BLOCK_VOXELS = 2**24
MAX_LEVELS_PER_PASS = 3


@dataclass(frozen=True)
class VolumeSpec:
    name: str  # layer folder and workspace array
    layer_type: str  # "image" | "segmentation"
    dtype: str
    encoding: str  # "raw" | "compressed_segmentation"
    pooling: str  # "mean" | "mode" | "max"


SPECS = {
    "raw": VolumeSpec("raw", "image", "uint8", "raw", "mean"),
    "segmentation": VolumeSpec("segmentation", "segmentation", "uint64", "compressed_segmentation", "mode"),
    "vessel_mask": VolumeSpec("vessel_mask", "image", "uint8", "raw", "max"),
    "boundary": VolumeSpec("boundary", "image", "uint8", "raw", "mean"),
}


def zyx_to_xyz(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(a, (2, 1, 0)))


def chunk_size_xyz(res_xyz: Sequence[float]) -> tuple[int, int, int]:
    """64x64x16 for anisotropic EM (z >= 2x the xy voxel size), else 32^3."""
    return (64, 64, 16) if res_xyz[2] >= 2 * min(res_xyz[0], res_xyz[1]) else (32, 32, 32)


def plan_factors(shape_xyz, res_xyz, min_xy: int = 32, max_levels: int = 8) -> list[tuple[int, int, int]]:
    """Cumulative downsampling factors per level (level 0 = (1, 1, 1)); a level is added while
    the larger of its x, y extents is still >= ``min_xy`` voxels."""
    cum = [(1, 1, 1)]
    res = list(map(float, res_xyz))
    while len(cum) < max_levels:
        f = (2, 2, 2) if res[2] <= 1.5 * max(res[0], res[1]) else (2, 2, 1)
        nxt = cast("tuple[int, int, int]", tuple(c * k for c, k in zip(cum[-1], f)))
        if max(-(-shape_xyz[0] // nxt[0]), -(-shape_xyz[1] // nxt[1])) < min_xy or -(-shape_xyz[2] // nxt[2]) < 1:
            break
        cum.append(nxt)
        res = [r * k for r, k in zip(res, f)]
    return cum


def level_shape(shape_xyz, factor) -> tuple[int, int, int]:
    return tuple(-(-s // f) for s, f in zip(shape_xyz, factor))


def make_info(spec: VolumeSpec, shape_xyz, res_xyz, chunk_xyz, factors) -> dict:
    scales = []
    for f in factors:
        res = [float(r) * k for r, k in zip(res_xyz, f)]
        scale = {
            "key": "_".join(f"{r:g}" for r in res),
            "resolution": res,
            "voxel_offset": [0, 0, 0],
            "size": list(level_shape(shape_xyz, f)),
            "chunk_sizes": [list(chunk_xyz)],
            "encoding": spec.encoding,
        }
        if spec.encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = [8, 8, 8]
        scales.append(scale)
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": spec.layer_type,
        "data_type": spec.dtype,
        "num_channels": 1,
        "scales": scales,
    }


# ------------------------------------------------------------------------------------ pooling
def downsample(a: np.ndarray, f: Sequence[int], pooling: str) -> np.ndarray:
    """Pool an (x, y, z) block by integer factors ``f``; odd edges are padded by replication."""
    f = tuple(int(k) for k in f)
    if f == (1, 1, 1):
        return a
    pad = [(0, (-s) % k) for s, k in zip(a.shape, f)]
    if any(p[1] for p in pad):
        a = np.pad(a, pad, mode="edge")
    X, Y, Z = (s // k for s, k in zip(a.shape, f))
    n = f[0] * f[1] * f[2]
    v = a.reshape(X, f[0], Y, f[1], Z, f[2]).transpose(0, 2, 4, 1, 3, 5).reshape(X, Y, Z, n)
    if pooling == "mean":
        return ((v.sum(-1, dtype=np.uint32) + n // 2) // n).astype(a.dtype)
    if pooling == "max":
        return v.max(-1)
    if pooling == "mode":
        counts = np.zeros(v.shape, np.float32)
        for j in range(n):
            counts += v == v[..., j : j + 1]
        counts -= 0.5 * (v == 0)  # a non-zero id wins a tie against background
        pick = counts.argmax(-1)
        return np.take_along_axis(v, pick[..., None], -1)[..., 0]
    raise ValueError(f"unknown pooling {pooling!r}")


# ------------------------------------------------------------------------------------ passes
@dataclass(frozen=True)
class Pass:
    index: int
    source_level: int
    levels: tuple[int, ...]  # levels written by the pass (incl. the source for pass 0)
    block_xyz: tuple[int, int, int]  # super-block at the source level


def plan_passes(factors, chunk_xyz) -> list[Pass]:
    passes: list[Pass] = []
    src = 0
    while True:
        top = src
        while top + 1 < len(factors) and top + 1 - src <= MAX_LEVELS_PER_PASS:
            rel = [t // s for t, s in zip(factors[top + 1], factors[src])]
            if int(np.prod([c * r for c, r in zip(chunk_xyz, rel)])) > MAX_BLOCK_VOXELS:
                break
            top += 1
        rel = [t // s for t, s in zip(factors[top], factors[src])]
        levels = tuple(range(0 if src == 0 else src + 1, top + 1))
        if levels:
            passes.append(Pass(len(passes), src, levels, tuple(c * r for c, r in zip(chunk_xyz, rel))))
        if top + 1 >= len(factors):
            return passes
        src = top if top > src else src + 1  # next pass starts from the highest written level


def _cloudvolume(path: Path, mip: int, compress):
    from cloudvolume import CloudVolume

    return CloudVolume(
        f"file://{path}",
        mip=mip,
        compress=compress,
        progress=False,
        fill_missing=False,
        cache=False,
        non_aligned_writes=False,
        delete_black_uploads=False,
    )


def write_volume(
    src_array,
    layer_dir: Path,
    spec: VolumeSpec,
    shape_zyx,
    res_zyx,
    step: Step,
    compress,
    on_level0_block: Callable[[str, np.ndarray, tuple], dict] | None = None,
) -> dict:
    """Write ``src_array`` (zarr, z,y,x) as a precomputed layer with its pyramid, blockwise and
    resumable (``step`` holds the done-markers). ``on_level0_block(block_id, block_xyz, origin_xyz)``
    may return arrays to keep in the block's marker (e.g. segment counts). Returns a summary."""
    from cloudvolume import CloudVolume

    shape_xyz = tuple(int(s) for s in reversed(shape_zyx))
    res_xyz = tuple(float(r) for r in reversed(res_zyx))
    chunk = chunk_size_xyz(res_xyz)
    factors = plan_factors(shape_xyz, res_xyz)
    info = make_info(spec, shape_xyz, res_xyz, chunk, factors)
    layer_dir.mkdir(parents=True, exist_ok=True)
    CloudVolume(f"file://{layer_dir}", info=info, progress=False).commit_info()
    vols = {m: _cloudvolume(layer_dir, m, compress) for m in range(len(factors))}
    written = skipped = 0
    for p in plan_passes(factors, chunk):
        src_shape = level_shape(shape_xyz, factors[p.source_level])
        grid = [range(0, s, b) for s, b in zip(src_shape, p.block_xyz)]
        for x0 in grid[0]:
            for y0 in grid[1]:
                for z0 in grid[2]:
                    origin = (x0, y0, z0)
                    end = tuple(min(o + b, s) for o, b, s in zip(origin, p.block_xyz, src_shape))
                    bid = f"{spec.name}_p{p.index}_x{x0}_y{y0}_z{z0}"
                    if step.is_done(bid):
                        skipped += 1
                        continue
                    block_delay()
                    if p.source_level == 0:
                        block = zyx_to_xyz(
                            np.asarray(src_array[origin[2] : end[2], origin[1] : end[1], origin[0] : end[0]])
                        )
                    else:
                        block = np.asarray(
                            vols[p.source_level][origin[0] : end[0], origin[1] : end[1], origin[2] : end[2]]
                        )[..., 0]
                    block = block.astype(spec.dtype, copy=False)
                    extra = {}
                    level = p.source_level
                    for target in p.levels:
                        if target != level:
                            f = tuple(t // s for t, s in zip(factors[target], factors[level]))
                            block = downsample(block, f, spec.pooling)
                            level = target
                        rel = tuple(t // s for t, s in zip(factors[target], factors[p.source_level]))
                        o = tuple(a // r for a, r in zip(origin, rel))
                        e = tuple(a + s for a, s in zip(o, block.shape))
                        vols[target][o[0] : e[0], o[1] : e[1], o[2] : e[2]] = block
                        if target == 0 and on_level0_block is not None:
                            extra = on_level0_block(bid, block, origin) or {}
                    step.mark_done(bid, **extra)
                    written += 1
    return {"levels": len(factors), "chunk_xyz": list(chunk), "blocks_written": written, "blocks_skipped": skipped}
