"""Synaptic partners: which segment is pre-synaptic and which post-synaptic at each cleft.

Inputs: cleft labels (0 = none, else the cleft's id), the segmentation (0 = no segment), a
*post-side signal* p in [0, 1] per voxel, high on the postsynaptic side of a cleft, and
optionally a *pre-side signal* r in [0, 1], high on the presynaptic side (the synapse model
predicts both; on synthetic data they can be made from the truth). Signals are used at 8-bit
precision, ``p8 = round(255 p)`` (a uint8 array is taken as p8 directly), so every sum below is
an exact integer and the result does not depend on how the volume was cut into blocks.

The rule
--------
The *shell* of a cleft c is every voxel within ``radius_zyx`` of c: the voxels v + d for v in c
and d in the ellipsoid ``(dz/rz)^2 + (dy/ry)^2 + (dx/rx)^2 <= 1`` (an axis with radius 0 is not
grown), c's own voxels included. The stage sets the radius from a physical distance,
``shell_radius_nm`` (16 nm: at 40 x 8 x 8 nm that is (0, 2, 2), the cleft's own section only --
a neighbouring section is 40 nm away, where other neurites pass by). Each shell voxel v whose
segment s(v) is not 0 votes for its segment::

    Q(s) = sum over the shell voxels of s of r8(v)            evidence that s is pre-synaptic
           (without a pre-side signal: of 255 - p8(v))
    P(s) = sum over the shell voxels of s of p8(v)            evidence that s is post-synaptic

* post = argmax P (ties: the smaller id), 0 if P(post) == 0;
* pre = argmax Q over the segments other than post (ties: the smaller id), 0 if none or
  Q(pre) == 0;
* segment 0 never votes; a voxel in the shells of two clefts votes in both.

Post first: the model's post-side channel is the sharper signal (on held-out synthetic volumes
the argmax of P was the true post-synaptic neuron for every matched synapse), and Q then only has
to tell the pre-synaptic neurite from bystanders touching the cleft's rim. A bystander is "not
post" too, which is what a pre-side signal could fix; with the shipped model it did not (the
stage's ``use_pre_channel``, off by default; numbers in the model card). So pre != post always,
unless both are 0. Partner points (voxels): the centroid of the pre segment's shell voxels weighted by
the pre evidence (post: by p8), the plain centroid where those weights sum to 0, NaN where the
partner is 0.

Blockwise use: :func:`shell_evidence` on each block (the cleft labels with a halo >= the radius, the
rest on the block's write box), :func:`merge_evidence` of all blocks, then
:func:`choose_partners`. :func:`assign_partners` does all three on in-memory arrays.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import cast

import numpy as np


@dataclass(frozen=True)
class Evidence:
    """Per (cleft, segment) sums over shell voxels, rows sorted by (cleft, segment)."""

    cleft: np.ndarray  # int64
    segment: np.ndarray  # uint64, never 0
    n: np.ndarray  # int64: shell voxels
    q: np.ndarray  # int64: sum of 255 - p8
    p: np.ndarray  # int64: sum of p8
    zyx: np.ndarray  # (m, 3) float64: sum of coordinates
    zyx_q: np.ndarray  # (m, 3): sum of (255 - p8) * coordinates
    zyx_p: np.ndarray  # (m, 3): sum of p8 * coordinates

    def __len__(self) -> int:
        return int(self.cleft.size)

    @classmethod
    def empty(cls) -> "Evidence":
        i, z3 = np.zeros(0, np.int64), np.zeros((0, 3))
        return cls(i, np.zeros(0, np.uint64), i, i, i, z3, z3, z3)

    def to_npz(self) -> dict:
        return {f"ev_{k}": getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_npz(cls, f) -> "Evidence":
        return cls(**{k: f[f"ev_{k}"] for k in cls.__dataclass_fields__})


def post_to_u8(post: np.ndarray) -> np.ndarray:
    """The post-side signal at 8-bit precision (uint8 as is; floats clipped to [0, 1] * 255)."""
    post = np.asarray(post)
    if post.dtype == np.uint8:
        return post
    return np.rint(np.clip(np.nan_to_num(post.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)


def shell_radius_voxels(shell_radius_nm: float, voxel_size_nm) -> tuple[int, int, int]:
    """Per-axis shell radius in voxels: the whole voxels within ``shell_radius_nm``."""
    return cast("tuple[int, int, int]", tuple(int(np.floor(shell_radius_nm / float(v) + 1e-9)) for v in voxel_size_nm))


#: the stage's shell radius (``DetectConfig.shell_radius_nm``), and in voxels at 40 x 8 x 8 nm, (0, 2, 2):
#: the default of the in-memory functions here (callers with another voxel size pass their own)
DEFAULT_SHELL_RADIUS_NM = 16.0
DEFAULT_RADIUS_ZYX = shell_radius_voxels(DEFAULT_SHELL_RADIUS_NM, (40.0, 8.0, 8.0))


def shell_offsets(radius_zyx) -> list[tuple[int, int, int]]:
    """The offsets d of the shell's ellipsoid (see the module docstring), (0, 0, 0) included."""
    r = [int(v) for v in radius_zyx]
    if any(v < 0 for v in r):
        raise ValueError(f"shell radius must be >= 0 voxels, got {tuple(r)}")
    out: list[tuple[int, int, int]] = []
    for d in itertools.product(*[range(-v, v + 1) for v in r]):
        if sum((di / ri) ** 2 for di, ri in zip(d, r) if ri) <= 1.0 + 1e-9:
            out.append(cast("tuple[int, int, int]", tuple(d)))
    return out


def shell_evidence(
    clefts: np.ndarray,
    segmentation: np.ndarray,
    post: np.ndarray,
    core: tuple[slice, slice, slice] | None = None,
    offset_zyx=(0, 0, 0),
    radius_zyx=DEFAULT_RADIUS_ZYX,
    pre: np.ndarray | None = None,
) -> Evidence:
    """Evidence from the shell voxels that lie in ``core``.

    ``clefts`` covers a region (e.g. a block's write box plus a halo of ``radius_zyx``, clipped to the
    volume); ``core`` = slices of the write box inside that region (default: all of it);
    ``segmentation``, ``post`` and ``pre`` (None: no pre-side signal) cover the core only;
    ``offset_zyx`` = the core's global origin (partner points are global). Voxels outside
    ``clefts`` count as no cleft.
    """
    clefts = np.asarray(clefts)
    core = core or cast("tuple[slice, slice, slice]", tuple(slice(0, s) for s in clefts.shape))
    shape = tuple(s.stop - s.start for s in core)
    if (
        tuple(segmentation.shape) != shape
        or tuple(post.shape) != shape
        or (pre is not None and tuple(pre.shape) != shape)
    ):
        raise ValueError(
            f"segmentation {segmentation.shape}, post {post.shape} and pre "
            f"{None if pre is None else pre.shape} must cover the core {shape}"
        )
    if not clefts.any():
        return Evidence.empty()
    offsets = shell_offsets(radius_zyx)
    r = [int(v) for v in radius_zyx]
    padded = np.pad(clefts, [(v, v) for v in r])
    labs, where = [], []
    for d in offsets:
        view = padded[tuple(slice(c.start + rv + o, c.stop + rv + o) for c, rv, o in zip(core, r, d))]
        idx = np.flatnonzero(view)
        labs.append(view.reshape(-1)[idx].astype(np.int64))
        where.append(idx)
    lab, idx = np.concatenate(labs), np.concatenate(where)
    if lab.size == 0:
        return Evidence.empty()
    ncore = int(np.prod(shape))
    if int(lab.max()) >= (2**63 - 1) // max(ncore, 1):
        raise ValueError("cleft ids too large for this block size")
    key = np.unique(lab * ncore + idx)  # each (cleft, voxel) once
    lab, idx = key // ncore, key % ncore
    seg = np.asarray(segmentation).reshape(-1)[idx].astype(np.uint64)
    keep = seg != 0
    lab, idx, seg = lab[keep], idx[keep], seg[keep]
    p8 = post_to_u8(post).reshape(-1)[idx].astype(np.int64)
    q8 = 255 - p8 if pre is None else post_to_u8(pre).reshape(-1)[idx].astype(np.int64)
    coords = np.stack(np.unravel_index(idx, shape), axis=1).astype(np.float64) + np.asarray(offset_zyx, np.float64)
    return _group(lab, seg, np.ones(lab.size, np.int64), q8, p8, coords, coords * q8[:, None], coords * p8[:, None])


def _group(cleft, segment, n, q, p, zyx, zyx_q, zyx_p) -> Evidence:
    """Sum rows with equal (cleft, segment); rows come out sorted by (cleft, segment)."""
    if cleft.size == 0:
        return Evidence.empty()
    order = np.lexsort((segment, cleft))
    cleft, segment = cleft[order], segment[order]
    start = np.flatnonzero(np.r_[True, (cleft[1:] != cleft[:-1]) | (segment[1:] != segment[:-1])])

    def red(a):
        return np.add.reduceat(np.asarray(a)[order], start, axis=0)

    return Evidence(
        cleft[start].astype(np.int64),
        segment[start].astype(np.uint64),
        red(n),
        red(q),
        red(p),
        red(zyx),
        red(zyx_q),
        red(zyx_p),
    )


def merge_evidence(parts) -> Evidence:
    """Evidence of several blocks (or any parts) summed per (cleft, segment)."""
    parts = [e for e in parts if len(e)]
    if not parts:
        return Evidence.empty()
    cat = {k: np.concatenate([getattr(e, k) for e in parts]) for k in Evidence.__dataclass_fields__}
    return _group(**cat)


@dataclass(frozen=True)
class Partners:
    """Per cleft id (in the order asked for): pre and post segment ids and partner points."""

    cleft: np.ndarray
    pre: np.ndarray  # uint64, 0 = none
    post: np.ndarray  # uint64, 0 = none
    pre_zyx: np.ndarray  # (k, 3), NaN where pre is 0
    post_zyx: np.ndarray

    @property
    def paired(self) -> np.ndarray:
        """Per cleft: both partners found (a synapse between two segments)."""
        return (self.pre != 0) & (self.post != 0)


def _best(cleft: np.ndarray, segment: np.ndarray, value: np.ndarray, ids: np.ndarray, exclude: np.ndarray):
    """Per cleft id in ``ids``: the row with the largest value among rows not excluded (ties:
    the smaller segment); -1 where there is none."""
    rows = np.flatnonzero(~exclude)
    best = np.full(ids.size, -1)
    if rows.size == 0:
        return best
    order = rows[np.lexsort((segment[rows], -value[rows], cleft[rows]))]
    c = cleft[order]
    first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    best[np.searchsorted(ids, c[first])] = order[first]
    return best


def _val(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, v[np.maximum(rows, 0)], 0)


def choose_partners(ev: Evidence, cleft_ids) -> Partners:
    """Apply the rule (module docstring) to every id of ``cleft_ids`` (sorted, unique)."""
    ids = np.asarray(cleft_ids, np.int64)
    k = ids.size
    nan3 = np.full((k, 3), np.nan)
    if k == 0 or len(ev) == 0:
        return Partners(ids, np.zeros(k, np.uint64), np.zeros(k, np.uint64), nan3, nan3.copy())
    ev_rows = np.isin(ev.cleft, ids)
    if not ev_rows.all():
        raise ValueError("evidence for cleft ids that were not asked for")
    post = _best(ev.cleft, ev.segment, ev.p, ids, np.zeros(len(ev), bool))
    post[_val(post, ev.p) == 0] = -1
    is_post_row = post[np.searchsorted(ids, ev.cleft)] == np.arange(len(ev))  # rows are unique per (cleft, segment)
    pre = _best(ev.cleft, ev.segment, ev.q, ids, is_post_row)
    pre[_val(pre, ev.q) == 0] = -1

    def seg_of(rows):
        return np.where(rows >= 0, ev.segment[np.maximum(rows, 0)], 0).astype(np.uint64)

    def point(rows, wsum, wzyx):
        out = nan3.copy()
        ok = rows >= 0
        r = rows[ok]
        w = wsum[r].astype(np.float64)
        weighted = w > 0
        out[ok] = np.where(weighted[:, None], wzyx[r] / np.maximum(w, 1)[:, None], ev.zyx[r] / ev.n[r][:, None])
        return out

    return Partners(ids, seg_of(pre), seg_of(post), point(pre, ev.q, ev.zyx_q), point(post, ev.p, ev.zyx_p))


def assign_partners(
    clefts: np.ndarray,
    segmentation: np.ndarray,
    post: np.ndarray,
    radius_zyx=DEFAULT_RADIUS_ZYX,
    pre: np.ndarray | None = None,
) -> Partners:
    """The rule on whole in-memory arrays (same shape), for every non-zero cleft id present."""
    clefts = np.asarray(clefts)
    ids = np.unique(clefts)
    ids = ids[ids != 0].astype(np.int64)
    return choose_partners(
        shell_evidence(
            clefts,
            np.asarray(segmentation),
            np.asarray(post),
            radius_zyx=radius_zyx,
            pre=None if pre is None else np.asarray(pre),
        ),
        ids,
    )
