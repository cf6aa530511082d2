"""TEASAR skeletons (kimimaro) of every segment, blockwise, joined across block borders.

One block::

    +-------------------------+   read box = write box + halo (``halo_nm``), clipped to the volume
    |   +-----------------+   |   kimimaro (TEASAR) runs on the read box;
    |   |   write box     |   |   the skeleton is cropped to the write box: vertices inside are
    |   |  o--o--o--o--o--|-x |   kept, an edge leaving it is kept as a *cut* (kept vertex o,
    |   +-----------------+   |   position of the vertex x outside)
    +-------------------------+

Joining (:func:`join_segment`): the write boxes tile the volume, so every vertex belongs to one
block. Each cut proposes a link from its kept vertex to the nearest vertex of another block near
the cut end (within ``join_radius_nm``); links are added shortest first and only between
different components, so the joins make no loops. Because each block saw a halo of context, the
neighbouring pieces follow the same centre line across the border and the links are short;
components of one segment still closer than ``join_radius_nm`` are joined last. So a neuron's
skeleton does not break at a border, and the skeletons of a volume cut into blocks equal those
of one block up to node spacing (tests/test_skeletons.py). Dust (segments under ``dust_voxels``
voxels in the whole volume) is removed after the join, never per block.

Anisotropy: kimimaro works in physical units (``anisotropy`` = voxel size in nm, z y x);
TEASAR parameters are in nm. Vertices come out at voxel centres, ``(i + 0.5) * voxel``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping, cast

import numpy as np

from connectome.config import BlockwiseConfig
from connectome.skeletons.model import Skeleton

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkeletonizeConfig:
    #: block (write box) shape; blocks overlap by one voxel plane on their high sides
    blockwise: BlockwiseConfig = field(default_factory=lambda: BlockwiseConfig(block_shape_zyx=(64, 256, 256)))
    #: the segmentation array of the workspace to skeletonize
    input: str = "segmentation"
    #: TEASAR invalidation radius r = scale * DBF + const (nm): larger = fewer, coarser branches
    teasar_scale: float = 1.5
    teasar_const_nm: float = 300.0
    #: segments with fewer voxels (in the whole volume) get no skeleton
    dust_voxels: int = 100
    #: each block is skeletonized with this much context (nm) around its write box, then cropped
    #: to the write box; larger = pieces that agree better where blocks meet
    halo_nm: float = 480.0
    #: components of one segment closer than this (nm) are joined; 0 = default of 3 voxels
    #: along the largest voxel axis
    join_radius_nm: float = 0.0
    #: also write one SWC file per segment to WS/skeletons/swc/
    swc: bool = False

    def __post_init__(self) -> None:
        if not self.teasar_scale > 0 or not self.teasar_const_nm >= 0:
            raise ValueError("teasar_scale must be > 0 and teasar_const_nm >= 0")
        if self.dust_voxels < 0 or self.join_radius_nm < 0 or self.halo_nm < 0:
            raise ValueError("dust_voxels, halo_nm and join_radius_nm must be >= 0")


Config = SkeletonizeConfig


def check_voxel_size(voxel_size_nm) -> tuple[float, float, float]:
    from connectome.errors import UserInputError

    vs = tuple(float(v) for v in voxel_size_nm)
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise UserInputError(f"anisotropy / voxel size: expected three positive numbers (z, y, x nm), got {list(vs)}")
    return vs


def join_radius(cfg: SkeletonizeConfig, voxel_size_nm) -> float:
    return cfg.join_radius_nm or 3.0 * max(voxel_size_nm)


def _patch_osteoid() -> None:
    """osteoid <= 0.7.x's ``Skeleton.simple_merge`` adds a Python int to a uint32 0-d array,
    which numpy < 2 refuses (kimimaro calls it whenever a segment has several paths). Casting
    the edges to int64 first makes it work on both numpy 1 and 2; applied once."""
    import osteoid

    sk = osteoid.Skeleton
    if getattr(sk, "_connectome_patched", False):
        return
    orig = sk.simple_merge.__func__

    def simple_merge(cls, skeletons):
        if len(skeletons) and not isinstance(skeletons[0], np.ndarray):
            for s in skeletons:
                s.edges = np.asarray(s.edges).astype(np.int64)
        return orig(cls, skeletons)

    sk.simple_merge = classmethod(simple_merge)
    sk._connectome_patched = True


@dataclass
class Piece:
    """One segment's skeleton inside one block's write box, and its edges cut at the box:
    vertex ``cut_from[k]`` (kept) was joined to a vertex at ``cut_to_nm[k]`` outside the box."""

    skeleton: Skeleton
    cut_from: np.ndarray  # (K,) int64
    cut_to_nm: np.ndarray  # (K, 3) float64


def skeletonize_block(labels_zyx: np.ndarray, origin_zyx, voxel_size_nm, cfg: SkeletonizeConfig) -> dict[int, Skeleton]:
    """Skeletons (nm, volume frame) of the segments in ``labels_zyx``, whose first voxel is
    ``origin_zyx`` of the volume."""
    import fastremap
    import kimimaro

    _patch_osteoid()
    labels = np.asarray(labels_zyx)
    if not labels.any():
        return {}
    small, remap = fastremap.renumber(labels, in_place=False, preserve_zero=True)
    back = {int(v): int(k) for k, v in remap.items() if v != 0}
    small = np.ascontiguousarray(small.astype(np.uint32, copy=False))
    vs = np.asarray(voxel_size_nm, np.float64)
    skels = kimimaro.skeletonize(
        small,
        teasar_params={
            "scale": cfg.teasar_scale,
            "const": cfg.teasar_const_nm,
            "pdrf_scale": 100000,
            "pdrf_exponent": 4,
            "soma_detection_threshold": 1e12,
            "soma_acceptance_threshold": 1e12,
            "soma_invalidation_const": 300,
            "soma_invalidation_scale": 2,
        },
        anisotropy=tuple(vs),
        dust_threshold=0,
        fix_branching=True,
        fix_borders=True,
        progress=False,
        parallel=1,
    )
    offset = (np.asarray(origin_zyx, np.float64) + 0.5) * vs
    out: dict[int, Skeleton] = {}
    for small_id in sorted(skels):
        sk = skels[small_id]
        if len(sk.vertices) == 0:
            continue
        out[back[int(small_id)]] = Skeleton(
            np.asarray(sk.vertices, np.float64) + offset,
            np.asarray(sk.edges, np.int64),
            np.asarray(sk.radii, np.float32),
        )
    return out


def crop_to_box(sk: Skeleton, begin_zyx, end_zyx, voxel_size_nm) -> Piece:
    """The part of ``sk`` whose vertices lie in the voxel box ``[begin, end)``, with its cut edges."""
    vox = np.floor(sk.vertices_nm / np.asarray(voxel_size_nm)).astype(np.int64)
    inside = np.all((vox >= np.asarray(begin_zyx)) & (vox < np.asarray(end_zyx)), axis=1)
    part = sk.subset(inside)
    new = np.cumsum(inside) - 1
    e = sk.edges
    cut = inside[e[:, 0]] != inside[e[:, 1]] if e.size else np.zeros(0, bool)
    a, b = e[cut, 0], e[cut, 1]
    frm = np.where(inside[a], a, b)
    to = np.where(inside[a], b, a)
    return Piece(part, new[frm].astype(np.int64), sk.vertices_nm[to])


def block_voxel_counts(labels_zyx: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(labels_zyx, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts) if i != 0}


def halo_voxels(cfg: SkeletonizeConfig, voxel_size_nm) -> tuple[int, int, int]:
    return tuple(int(np.ceil(cfg.halo_nm / float(v))) for v in voxel_size_nm)  # type: ignore[return-value]


def process_region(
    array, begin_zyx, end_zyx, voxel_size_nm, cfg: SkeletonizeConfig
) -> tuple[dict[int, Piece], dict[int, int]]:
    """Pieces (cropped to the write box) and voxel counts (write box) of one block of ``array``
    (numpy or zarr), skeletonized with a halo of ``cfg.halo_nm`` around the write box."""
    shape = array.shape
    halo = halo_voxels(cfg, voxel_size_nm)
    lo = tuple(max(0, int(b) - h) for b, h in zip(begin_zyx, halo))
    hi = tuple(min(int(s), int(e) + h) for e, h, s in zip(end_zyx, halo, shape))
    data = np.asarray(array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    skels = skeletonize_block(data, lo, voxel_size_nm, cfg)
    pieces = {}
    for i, sk in skels.items():
        p = crop_to_box(sk, begin_zyx, end_zyx, voxel_size_nm)
        if p.skeleton.n_vertices:
            pieces[i] = p
    w = tuple(slice(int(b) - o, int(e) - o) for b, e, o in zip(begin_zyx, end_zyx, lo))
    return pieces, block_voxel_counts(data[w])


# ---------------------------------------------------------------------- piece files
def pack(pieces: Mapping[int, Piece], counts: Mapping[int, int]) -> bytes:
    """One block's pieces (and voxel counts) as npz bytes."""
    ids = np.array(sorted(pieces), np.uint64)
    parts = [pieces[int(i)] for i in ids]
    sks = [p.skeleton for p in parts]
    cat = Skeleton.concat(sks) if sks else Skeleton.empty()
    cids = np.array(sorted(counts), np.uint64)
    buf = io.BytesIO()
    np.savez(
        buf,
        ids=ids,
        nv=np.array([s.n_vertices for s in sks], np.int64),
        ne=np.array([len(s.edges) for s in sks], np.int64),
        nc=np.array([len(p.cut_from) for p in parts], np.int64),
        vertices=cat.vertices_nm,
        radii=cat.radii_nm if cat.radii_nm is not None else np.zeros(0, np.float32),
        edges=np.concatenate([s.edges for s in sks]) if sks else np.zeros((0, 2), np.int64),
        cut_from=np.concatenate([p.cut_from for p in parts]) if parts else np.zeros(0, np.int64),
        cut_to=np.concatenate([p.cut_to_nm for p in parts]) if parts else np.zeros((0, 3)),
        count_ids=cids,
        counts=np.array([counts[int(i)] for i in cids], np.int64),
    )
    return buf.getvalue()


def unpack(data) -> tuple[dict[int, Piece], dict[int, int]]:
    with np.load(io.BytesIO(data) if isinstance(data, bytes) else data) as z:
        d = {k: z[k] for k in z.files}
    counts = {int(i): int(c) for i, c in zip(d["count_ids"], d["counts"])}
    vo, eo, co = (np.concatenate([[0], np.cumsum(d[k])]) for k in ("nv", "ne", "nc"))
    out = {}
    for k, i in enumerate(d["ids"].tolist()):
        sk = Skeleton(d["vertices"][vo[k] : vo[k + 1]], d["edges"][eo[k] : eo[k + 1]], d["radii"][vo[k] : vo[k + 1]])
        out[int(i)] = Piece(sk, d["cut_from"][co[k] : co[k + 1]], d["cut_to"][co[k] : co[k + 1]])
    return out, counts


# ---------------------------------------------------------------------- joining
def join_segment(pieces: list[Piece], radius_nm: float) -> Skeleton:
    """One segment's pieces (from different blocks) joined into one skeleton: each cut edge
    proposes a link from its kept vertex to the nearest vertex of another block near its cut end
    (within ``radius_nm``); links are added shortest first, only between different components
    (so the joins add no loops); components still closer than ``radius_nm`` are then joined."""
    from scipy.spatial import cKDTree

    sk = Skeleton.concat([p.skeleton for p in pieces])
    if len(pieces) > 1:
        nv = [p.skeleton.n_vertices for p in pieces]
        offsets = np.concatenate([[0], np.cumsum(nv)])
        owner = np.repeat(np.arange(len(pieces)), nv)
        tree = cKDTree(sk.vertices_nm)
        cand = []
        for k, p in enumerate(pieces):
            if not len(p.cut_from):
                continue
            near = tree.query_ball_point(p.cut_to_nm, r=radius_nm)
            for u_local, to, idx in zip(p.cut_from, p.cut_to_nm, near):
                idx = [j for j in idx if owner[j] != k]
                if not idx:
                    continue
                dist = np.linalg.norm(sk.vertices_nm[idx] - to, axis=1)
                v = int(idx[int(np.lexsort((idx, dist))[0])])
                u = int(u_local + offsets[k])
                cand.append((float(np.linalg.norm(sk.vertices_nm[u] - sk.vertices_nm[v])), min(u, v), max(u, v)))
        if cand:
            _, comp = sk.components()
            parent = list(range(int(comp.max()) + 1))

            def find(a):
                while parent[a] != a:
                    parent[a] = parent[parent[a]]
                    a = parent[a]
                return a

            added = []
            for _, u, v in sorted(cand):
                a, b = find(comp[u]), find(comp[v])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                    added.append((u, v))
            if added:
                sk = Skeleton(sk.vertices_nm, np.vstack([sk.edges, np.array(added, np.int64)]), sk.radii_nm)
    return sk.merged_duplicates().joined_close_components(radius_nm)


def join_pieces(
    blocks: Iterable[tuple[Mapping[int, Piece], Mapping[int, int]]],
    radius_nm: float,
    dust_voxels: int = 0,
    progress: bool = False,
) -> dict[int, Skeleton]:
    """Join the block pieces of every segment (:func:`join_segment`); segments under
    ``dust_voxels`` voxels in all blocks together are dropped. The result does not depend on
    the order of the blocks beyond the order of the pieces, which is by block position."""
    from tqdm import tqdm

    by_id: dict[int, list[Piece]] = {}
    counts: dict[int, int] = {}
    for pieces, cnt in blocks:
        for i, p in pieces.items():
            by_id.setdefault(int(i), []).append(p)
        for i, c in cnt.items():
            counts[int(i)] = counts.get(int(i), 0) + int(c)
    out: dict[int, Skeleton] = {}
    for i in tqdm(sorted(by_id), disable=not progress, desc="skeletonize: join", unit="segment"):
        if counts.get(i, 0) < dust_voxels:
            continue
        sk = join_segment(by_id[i], radius_nm)
        if sk.n_vertices:
            out[i] = sk
    return out


def skeletonize_volume(
    labels_zyx: np.ndarray, voxel_size_nm, cfg: SkeletonizeConfig = SkeletonizeConfig(), progress: bool = False
) -> dict[int, Skeleton]:
    """Skeletons of every segment of an in-memory (or zarr) volume, blockwise with ``cfg``'s
    blocks, serially (the workspace stage :mod:`connectome.skeletons.stage` runs the same
    :func:`process_region` per block on an executor)."""
    from tqdm import tqdm

    from connectome.blockwise import BlockGrid

    vs = check_voxel_size(voxel_size_nm)
    shape = cast("tuple[int, int, int]", tuple(labels_zyx.shape))
    grid = BlockGrid(
        shape, cast("tuple[int, int, int]", tuple(min(b, s) for b, s in zip(cfg.blockwise.block_shape_zyx, shape)))
    )
    blocks = [
        process_region(labels_zyx, b.write_box.begin_zyx, b.write_box.end_zyx, vs, cfg)
        for b in tqdm(list(grid.blocks()), disable=not progress, desc="skeletonize", unit="block")
    ]
    return join_pieces(blocks, join_radius(cfg, vs), cfg.dust_voxels)
