"""Synaptic partners: which segment is pre-synaptic and which post-synaptic at each cleft.

Inputs: cleft labels (0 = none, else the cleft's id), the segmentation (0 = no segment) and a
*post-side signal* p in [0, 1] per voxel, high on the postsynaptic side of a cleft (the synapse
model predicts it; on synthetic data it can be made from the truth). p is used at 8-bit
precision, ``p8 = round(255 p)`` (a uint8 array is taken as p8 directly), so every sum below is
an exact integer and the result does not depend on how the volume was cut into blocks.

The rule
--------
The *shell* of a cleft c is every voxel within one voxel of c: the 3 x 3 x 3 neighbourhood of
each voxel of c, c's own voxels included (at 40 x 8 x 8 nm: one section in z, 8 nm in y and x).
Each shell voxel v whose segment s(v) is not 0 votes for its segment::

    Q(s) = sum over the shell voxels of s of (255 - p8(v))    evidence that s is pre-synaptic
    P(s) = sum over the shell voxels of s of p8(v)            evidence that s is post-synaptic

* pre = argmax Q, post = argmax P (ties: the smaller id);
* if that is the same segment s*, the better of (pre s*, post = the best other segment by P)
  and (pre = the best other segment by Q, post s*) by Q(pre) + P(post) wins (ties: s* stays
  pre); where no other segment touches the shell, "other" is 0 (no partner);
* a role needs evidence: pre becomes 0 if Q(pre) == 0, post becomes 0 if P(post) == 0;
* segment 0 never votes; a voxel in the shells of two clefts votes in both.

So pre != post always, unless both are 0. Partner points (voxels): the centroid of the pre
segment's shell voxels weighted by 255 - p8 (post: by p8), the plain centroid where those
weights sum to 0, NaN where the partner is 0.

Blockwise use: :func:`shell_evidence` on each block (the cleft labels with a 1-voxel halo, the
rest on the block's write box), :func:`merge_evidence` of all blocks, then
:func:`choose_partners`. :func:`assign_partners` does all three on in-memory arrays.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Evidence:
    """Per (cleft, segment) sums over shell voxels, rows sorted by (cleft, segment)."""

    cleft: np.ndarray     # int64
    segment: np.ndarray   # uint64, never 0
    n: np.ndarray         # int64: shell voxels
    q: np.ndarray         # int64: sum of 255 - p8
    p: np.ndarray         # int64: sum of p8
    zyx: np.ndarray       # (m, 3) float64: sum of coordinates
    zyx_q: np.ndarray     # (m, 3): sum of (255 - p8) * coordinates
    zyx_p: np.ndarray     # (m, 3): sum of p8 * coordinates

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


def shell_evidence(clefts: np.ndarray, segmentation: np.ndarray, post: np.ndarray,
                   core: tuple[slice, slice, slice] | None = None, offset_zyx=(0, 0, 0)) -> Evidence:
    """Evidence from the shell voxels that lie in ``core``.

    ``clefts`` covers a region (e.g. a block's write box plus a 1-voxel halo, clipped to the
    volume); ``core`` = slices of the write box inside that region (default: all of it);
    ``segmentation`` and ``post`` cover the core only; ``offset_zyx`` = the core's global origin
    (partner points are global). Voxels outside ``clefts`` count as no cleft.
    """
    clefts = np.asarray(clefts)
    core = core or tuple(slice(0, s) for s in clefts.shape)
    shape = tuple(s.stop - s.start for s in core)
    if tuple(segmentation.shape) != shape or tuple(post.shape) != shape:
        raise ValueError(f"segmentation {segmentation.shape} and post {post.shape} must cover the core {shape}")
    if not clefts.any():
        return Evidence.empty()
    padded = np.pad(clefts, 1)
    labs, where = [], []
    for d in itertools.product((-1, 0, 1), repeat=3):
        view = padded[tuple(slice(c.start + 1 + o, c.stop + 1 + o) for c, o in zip(core, d))]
        idx = np.flatnonzero(view)
        labs.append(view.reshape(-1)[idx].astype(np.int64))
        where.append(idx)
    lab, idx = np.concatenate(labs), np.concatenate(where)
    if lab.size == 0:
        return Evidence.empty()
    ncore = int(np.prod(shape))
    if int(lab.max()) >= (2 ** 63 - 1) // max(ncore, 1):
        raise ValueError("cleft ids too large for this block size")
    key = np.unique(lab * ncore + idx)       # each (cleft, voxel) once
    lab, idx = key // ncore, key % ncore
    seg = np.asarray(segmentation).reshape(-1)[idx].astype(np.uint64)
    keep = seg != 0
    lab, idx, seg = lab[keep], idx[keep], seg[keep]
    p8 = post_to_u8(post).reshape(-1)[idx].astype(np.int64)
    coords = np.stack(np.unravel_index(idx, shape), axis=1).astype(np.float64) + np.asarray(offset_zyx, np.float64)
    return _group(lab, seg, np.ones(lab.size, np.int64), 255 - p8, p8, coords,
                  coords * (255 - p8)[:, None], coords * p8[:, None])


def _group(cleft, segment, n, q, p, zyx, zyx_q, zyx_p) -> Evidence:
    """Sum rows with equal (cleft, segment); rows come out sorted by (cleft, segment)."""
    if cleft.size == 0:
        return Evidence.empty()
    order = np.lexsort((segment, cleft))
    cleft, segment = cleft[order], segment[order]
    start = np.flatnonzero(np.r_[True, (cleft[1:] != cleft[:-1]) | (segment[1:] != segment[:-1])])

    def red(a):
        return np.add.reduceat(np.asarray(a)[order], start, axis=0)

    return Evidence(cleft[start].astype(np.int64), segment[start].astype(np.uint64), red(n), red(q), red(p),
                    red(zyx), red(zyx_q), red(zyx_p))


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
    pre: np.ndarray        # uint64, 0 = none
    post: np.ndarray       # uint64, 0 = none
    pre_zyx: np.ndarray    # (k, 3), NaN where pre is 0
    post_zyx: np.ndarray


def _best_two(cleft: np.ndarray, segment: np.ndarray, value: np.ndarray, ids: np.ndarray):
    """Per cleft id in ``ids``: the row with the largest value (ties: smaller segment) and the
    runner-up; -1 where there is none."""
    order = np.lexsort((segment, -value, cleft))
    c = cleft[order]
    first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    has_second = np.r_[first[1:] - first[:-1] > 1, c.size - first[-1] > 1] if first.size else np.zeros(0, bool)
    best, second = np.full(ids.size, -1), np.full(ids.size, -1)
    at = np.searchsorted(ids, c[first])
    best[at] = order[first]
    second[at[has_second]] = order[first[has_second] + 1]
    return best, second


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
    bq, sq = _best_two(ev.cleft, ev.segment, ev.q, ids)
    bp, sp = _best_two(ev.cleft, ev.segment, ev.p, ids)

    def val(rows, v):
        return np.where(rows >= 0, v[np.maximum(rows, 0)], 0)

    pre, post = bq.copy(), bp.copy()
    clash = (bq >= 0) & (bq == bp)
    keep_pre = val(bq, ev.q) + val(sp, ev.p) >= val(sq, ev.q) + val(bp, ev.p)
    post[clash & keep_pre] = sp[clash & keep_pre]
    pre[clash & ~keep_pre] = sq[clash & ~keep_pre]
    pre[val(pre, ev.q) == 0] = -1
    post[val(post, ev.p) == 0] = -1

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


def assign_partners(clefts: np.ndarray, segmentation: np.ndarray, post: np.ndarray) -> Partners:
    """The rule on whole in-memory arrays (same shape), for every non-zero cleft id present."""
    clefts = np.asarray(clefts)
    ids = np.unique(clefts)
    ids = ids[ids != 0].astype(np.int64)
    return choose_partners(shell_evidence(clefts, np.asarray(segmentation), np.asarray(post)), ids)
