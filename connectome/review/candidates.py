"""What can be reviewed, per target, with an uncertainty score in [0, 1] (higher = a person's
look is expected to help more). A strategy (:mod:`.strategies`) then picks from them.

* ``vessels``: boxes of the ``--box`` shape on a grid of half-box steps; score = the mean of
  ``4 p (1 - p)`` over the box (``p`` = ``vessel_prob`` / 255), i.e. 1 where every voxel is
  at p = 0.5 and 0 where the model is sure. Boxes may not overlap (``exclusive``). The box sums
  are computed from per-cell sums read one z-slab at a time (memory: one slab + the cell grid).
* ``synapses``: (a) every detection in ``WS/synapses.csv``: score = the mean of its closeness to
  the cleft threshold ``1 - |s - t| / max(t, 1 - t)`` and its *partner weakness* ``1 - margin``,
  where margin is how clearly the pre/post segments dominate the box around the point (0 when a
  partner is missing, lower when a third segment is as present as a partner; 1 without a
  segmentation and both partners set); (b) *missed candidates*: 26-connected components of
  ``synapse_prob`` in ``[t - 0.2, t)`` that never reach the threshold (at least 8 voxels),
  score = their peak / t. Each item's box is ``--box`` centred on the point.
* ``segmentation``: (a) *merge candidates*: pairs of segments touching across a face, score =
  how weak the boundary between them is (``1 -`` the mean ``boundary`` probability on their
  contact, channel 0 when channel-first; 0.5 without a boundary array) times a contact-size
  factor ``min(1, contact / 50)``; (b) *split candidates*: segments whose interior (the segment
  eroded by one voxel in y, x) falls into two or more pieces of at least 20 voxels (a thin neck)
  or carries boundary probability >= 0.5 on n >= 10 of its t interior voxels: score = the second
  piece's share of the two largest (a balanced neck scores highest), or ``2 min(n, t - n) / t``
  times ``min(1, n / 100)`` (a boundary with cytoplasm on both sides; a segment lying wholly on a
  membrane is no split). Boxes:
  ``--box`` centred on the contact / the neck.

Whole arrays of ``synapse_prob``, ``segmentation`` and ``boundary`` are read into memory for
the synapse and segmentation targets (fine up to a few GB; a blockwise version is future work).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

CONSUMER = "review plan"


@dataclass
class Candidates:
    boxes: np.ndarray  # (N, 6) int64: z0, y0, x0, z1, y1, x1
    scores: np.ndarray  # (N,) float64 in [0, 1]
    kinds: list
    reason: Callable[[int], str]
    exclusive: bool = False  # whether picked boxes may not overlap
    inputs: dict = field(default_factory=dict)  # array name -> its connectome_state digest
    #: the segment ids an item is about (merge candidate: the pair, split candidate: the segment);
    #: None when the target has no segments (``review.json``'s ``item_segments``)
    segments: Callable[[int], tuple[int, ...]] | None = None

    def __len__(self) -> int:
        return int(len(self.scores))

    def item_segments(self, i: int) -> list[int]:
        """The segment ids of candidate ``i`` ([] when there are none)."""
        return [int(v) for v in self.segments(i)] if self.segments is not None else []


def _digest(ws, name) -> dict:
    st = ws.array_state(name) or {}
    return {"config_digest": str(st.get("config_digest", "")), "stage": st.get("stage")}


def centred_box(point_zyx, box_zyx, shape_zyx) -> list[int]:
    """A ``box_zyx`` box centred on a point, shifted (not shrunk) to stay inside the volume."""
    lo, hi = [], []
    for c, b, s in zip(point_zyx, box_zyx, shape_zyx):
        b = min(int(b), int(s))
        a = int(np.floor(c)) - b // 2
        a = max(0, min(a, int(s) - b))
        lo.append(a)
        hi.append(a + b)
    return lo + hi


# ------------------------------------------------------------------------------ vessels
def vessel_candidates(ws, box_zyx) -> Candidates:
    prob = ws.require_complete("vessel_prob", CONSUMER)
    shape = ws.shape_zyx
    box = [min(int(b), int(s)) for b, s in zip(box_zyx, shape)]
    kw = [1 if b == 1 else 2 for b in box]  # window = kw cells per axis
    cell = [b // k for b, k in zip(box, kw)]
    ncell = [-(-s // c) for s, c in zip(shape, cell)]
    sums = np.zeros(ncell, np.float64)
    cz = cell[0]
    for iz in range(ncell[0]):
        slab = np.asarray(prob[iz * cz : min(shape[0], (iz + 1) * cz)]).astype(np.float64) / 255.0
        u = (4.0 * slab * (1.0 - slab)).sum(axis=0)  # (y, x)
        py, px = ncell[1] * cell[1] - u.shape[0], ncell[2] * cell[2] - u.shape[1]
        u = np.pad(u, ((0, py), (0, px)))
        sums[iz] = u.reshape(ncell[1], cell[1], ncell[2], cell[2]).sum(axis=(1, 3))
    # window sums of kw cells per axis at every cell start that fits
    win = sums
    for ax, k in enumerate(kw):
        if k == 2 and win.shape[ax] >= 2:
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[ax], b[ax] = slice(None, -1), slice(1, None)
            win = win[tuple(a)] + win[tuple(b)]
    idx = np.indices(win.shape).reshape(3, -1).T
    starts = idx * np.asarray(cell)
    ends = np.minimum(starts + np.asarray(box), np.asarray(shape))
    starts = np.maximum(0, ends - np.asarray(box))  # edge boxes keep the full shape
    boxes = np.concatenate([starts, ends], axis=1).astype(np.int64)
    scores = np.clip(win.reshape(-1) / float(np.prod(box)), 0.0, 1.0)

    def reason(i: int) -> str:
        z0, y0, x0, z1, y1, x1 = (int(v) for v in boxes[i])
        p = np.asarray(prob[z0:z1, y0:y1, x0:x1]).astype(np.float64) / 255.0
        mid = float(np.mean((p > 0.2) & (p < 0.8)))
        return f"vessel probability uncertain: mean 4p(1-p) {scores[i]:.3f}, {mid:.0%} of voxels at 0.2<p<0.8"

    return Candidates(
        boxes,
        scores,
        ["uncertain-region"] * len(scores),
        reason,
        exclusive=True,
        inputs={"vessel_prob": _digest(ws, "vessel_prob")},
    )


# ------------------------------------------------------------------------------ synapses
def _threshold(ws) -> float:
    for name in ws.array_names():
        t8 = ws.group[name].attrs.get("threshold_u8")
        if isinstance(t8, (int, float)) and 0 < t8 <= 255:
            return float(t8) / 255.0
    return 0.5


def synapse_candidates(ws, box_zyx) -> Candidates:
    from pathlib import Path

    from connectome.synapses.table import read_synapse_table

    shape = ws.shape_zyx
    prob = np.asarray(ws.require_complete("synapse_prob", CONSUMER)[:])
    t = _threshold(ws)
    t8 = max(1, int(round(255 * t)))
    seg = np.asarray(ws.require_complete("segmentation", CONSUMER)[:]) if ws.has("segmentation") else None
    boxes, scores, kinds, reasons = [], [], [], []
    csv_path = Path(ws.path) / "synapses.csv"
    if csv_path.is_file():
        tab = read_synapse_table(csv_path)
        for k in range(len(tab)):
            pt = (tab.z[k], tab.y[k], tab.x[k])
            s = float(tab.score[k])
            close = 1.0 - abs(s - t) / max(t, 1.0 - t)
            pre, post = int(tab.pre_segment_id[k]), int(tab.post_segment_id[k])
            b = centred_box(pt, box_zyx, shape)
            margin = _partner_margin(seg, b, pre, post)
            scores.append(float(np.clip(0.5 * close + 0.5 * (1.0 - margin), 0, 1)))
            boxes.append(b)
            kinds.append("detection")
            reasons.append(
                f"synapse {int(tab.synapse_id[k])} score {s:.2f} (threshold {t:.2f}); "
                f"partner margin {margin:.2f} ({pre} -> {post})"
            )
    low8 = max(1, int(round(255 * max(0.0, t - 0.2))))
    lab, n = ndi.label(prob >= low8, structure=np.ones((3, 3, 3), bool))
    if n:
        peak = ndi.maximum(prob, lab, index=np.arange(1, n + 1))
        size = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        keep = np.nonzero((peak < t8) & (size >= 8))[0]
        if len(keep):
            com = ndi.center_of_mass(prob >= low8, lab, keep + 1)
            for j, c in zip(keep, com):
                boxes.append(centred_box(c, box_zyx, shape))
                scores.append(float(np.clip(peak[j] / t8, 0, 1)))
                kinds.append("missed-candidate")
                reasons.append(
                    f"cleft-like signal below threshold: peak {peak[j] / 255:.2f} < {t:.2f}, {int(size[j])} voxels"
                )
    inputs = {"synapse_prob": _digest(ws, "synapse_prob")}
    if seg is not None:
        inputs["segmentation"] = _digest(ws, "segmentation")
    return Candidates(
        np.asarray(boxes, np.int64).reshape(-1, 6),
        np.asarray(scores, float),
        kinds,
        reasons.__getitem__,
        exclusive=False,
        inputs=inputs,
    )


def _partner_margin(seg, box, pre: int, post: int) -> float:
    if pre == 0 or post == 0:
        return 0.0
    if seg is None:
        return 1.0
    z0, y0, x0, z1, y1, x1 = box
    ids, counts = np.unique(seg[z0:z1, y0:y1, x0:x1], return_counts=True)
    c = dict(zip(ids.tolist(), counts.tolist()))
    c.pop(0, None)
    n_pre, n_post = c.pop(pre, 0), c.pop(post, 0)
    third = max(c.values(), default=0)
    weak = min(n_pre, n_post)
    return float(weak / (weak + third)) if weak + third else 0.0


# ------------------------------------------------------------------------------ segmentation
def centred_boxes(points_zyx: np.ndarray, box_zyx, shape_zyx) -> np.ndarray:
    """:func:`centred_box` for (N, 3) points: (N, 6) boxes."""
    b = np.minimum(np.asarray(box_zyx, np.int64), np.asarray(shape_zyx, np.int64))
    a = np.floor(np.asarray(points_zyx, float)).astype(np.int64) - b // 2
    a = np.clip(a, 0, np.asarray(shape_zyx, np.int64) - b)
    return np.concatenate([a, a + b], axis=1).reshape(-1, 6)


def segmentation_candidates(ws, box_zyx) -> Candidates:
    shape = ws.shape_zyx
    seg = np.asarray(ws.require_complete("segmentation", CONSUMER)[:])
    bnd = None
    inputs = {"segmentation": _digest(ws, "segmentation")}
    if ws.has("boundary"):
        b = ws.require_complete("boundary", CONSUMER)
        bnd = np.asarray(b[0] if b.ndim == 4 else b[:]).astype(np.float32) / 255.0
        inputs["boundary"] = _digest(ws, "boundary")
    parts: list[tuple] = []  # (boxes, scores, kind, reason(k), segments(k))
    # merge candidates: touching pairs across a weak boundary
    keys, vals, pos = [], [], []
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(None, -1), slice(1, None)
        sa, sb = seg[tuple(a)], seg[tuple(b)]
        m = (sa != sb) & (sa > 0) & (sb > 0)
        if not m.any():
            continue
        lo, hi = np.minimum(sa[m], sb[m]), np.maximum(sa[m], sb[m])
        keys.append(np.stack([lo, hi], 1))
        vals.append(0.5 * (bnd[tuple(a)][m] + bnd[tuple(b)][m]) if bnd is not None else np.full(lo.shape, 0.5))
        pos.append(np.argwhere(m).astype(np.float64))
    if keys:
        k = np.concatenate(keys)
        v = np.concatenate(vals)
        p = np.concatenate(pos)
        uniq, inv, cnt = np.unique(k, axis=0, return_inverse=True, return_counts=True)
        inv = inv.reshape(-1)
        mean_b = np.bincount(inv, weights=v) / cnt
        cen = np.stack([np.bincount(inv, weights=p[:, d]) / cnt for d in range(3)], 1)
        src = "boundary" if bnd is not None else "no boundary array"

        def merge_reason(j, uniq=uniq, cnt=cnt, mean_b=mean_b, src=src):
            return (
                f"segments {int(uniq[j, 0])} and {int(uniq[j, 1])} touch over {int(cnt[j])} faces; "
                f"mean boundary {mean_b[j]:.2f} ({src})"
            )

        parts.append(
            (
                centred_boxes(cen, box_zyx, shape),
                (1.0 - mean_b) * np.minimum(1.0, cnt / 50.0),
                "merge-candidate",
                merge_reason,
                lambda j, uniq=uniq: (int(uniq[j, 0]), int(uniq[j, 1])),
            )
        )
    # split candidates: interior (4-neighbours in y, x in the same segment) in two or more pieces
    same = seg > 0
    for ax in (1, 2):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        d = seg[tuple(lo)] == seg[tuple(hi)]
        edge = np.zeros(seg.shape, bool)
        edge[tuple(lo)] |= ~d
        edge[tuple(hi)] |= ~d
        same &= ~edge
    interior = same
    lab, n = ndi.label(interior)
    if n:
        flat = lab.ravel()
        size = np.bincount(flat, minlength=n + 1)
        owner = np.zeros(n + 1, np.uint64)
        owner[flat] = seg.ravel()
        big = np.nonzero(size[1:] >= 20)[0] + 1
        if len(big):
            zz, yy, xx = np.nonzero(interior)
            lz = lab[zz, yy, xx]
            com = (
                np.stack([np.bincount(lz, weights=c, minlength=n + 1) for c in (zz, yy, xx)], 1)
                / np.maximum(1, size)[:, None]
            )
            order = big[np.lexsort((-size[big], owner[big]))]  # by segment, largest piece first
            own_o = owner[order]
            first = np.r_[True, own_o[1:] != own_o[:-1]]
            starts = np.nonzero(first)[0]
            counts = np.diff(np.r_[starts, len(order)])
            multi = starts[counts >= 2]
            if len(multi):
                p1, p2 = order[multi], order[multi + 1]
                a, b2 = size[p1].astype(float), size[p2].astype(float)
                npieces = counts[counts >= 2]

                def split_reason(j, sid=own_o[multi], a=a, b2=b2, npieces=npieces):
                    return (
                        f"segment {int(sid[j])}: interior in {int(npieces[j])} pieces (largest {int(a[j])}, "
                        f"{int(b2[j])} voxels): a thin neck"
                    )

                parts.append(
                    (
                        centred_boxes(0.5 * (com[p1] + com[p2]), box_zyx, shape),
                        b2 / (a + b2),
                        "split-candidate",
                        split_reason,
                        lambda j, sid=own_o[multi]: (int(sid[j]),),
                    )
                )
    if bnd is not None:
        hot = interior & (bnd >= 0.5)
        if hot.any():
            uids, tot = np.unique(seg[interior], return_counts=True)
            hz, hy, hx = np.nonzero(hot)
            hidx = np.searchsorted(uids, seg[hz, hy, hx])
            hc = np.bincount(hidx, minlength=len(uids))
            sel = np.nonzero(hc >= 10)[0]
            if len(sel):
                cen = (
                    np.stack([np.bincount(hidx, weights=c, minlength=len(uids))[sel] for c in (hz, hy, hx)], 1)
                    / hc[sel, None]
                )
                # a boundary through the segment with cytoplasm on both sides: balanced shares score
                # highest (a segment lying wholly on a membrane is no split), small evidence less
                h, t = hc[sel].astype(float), tot[sel].astype(float)
                score = 2.0 * np.minimum(h, t - h) / t * np.minimum(1.0, h / 100.0)

                def hot_reason(j, sid=uids[sel], hcs=hc[sel], tots=tot[sel]):
                    return (
                        f"segment {int(sid[j])}: {int(hcs[j])} of {int(tots[j])} interior voxels on a "
                        "boundary (p >= 0.5)"
                    )

                parts.append(
                    (
                        centred_boxes(cen, box_zyx, shape),
                        score,
                        "split-candidate",
                        hot_reason,
                        lambda j, sid=uids[sel]: (int(sid[j]),),
                    )
                )
    if not parts:
        return Candidates(
            np.zeros((0, 6), np.int64), np.zeros(0), [], lambda i: "", inputs=inputs, segments=lambda i: ()
        )
    boxes = np.concatenate([q[0] for q in parts]).astype(np.int64)
    scores = np.clip(np.concatenate([q[1] for q in parts]).astype(float), 0.0, 1.0)
    kinds: list[str] = []
    offsets: list[int] = []
    for q in parts:
        offsets.append(len(kinds))
        kinds.extend([q[2]] * len(q[1]))

    def reason(i: int) -> str:
        k = int(np.searchsorted(offsets, i, side="right")) - 1
        return parts[k][3](i - offsets[k])

    def segments(i: int) -> tuple[int, ...]:
        k = int(np.searchsorted(offsets, i, side="right")) - 1
        return parts[k][4](i - offsets[k])

    return Candidates(boxes, scores, kinds, reason, exclusive=False, inputs=inputs, segments=segments)


CANDIDATES = {"vessels": vessel_candidates, "synapses": synapse_candidates, "segmentation": segmentation_candidates}
DEFAULT_BOX = {"vessels": (8, 96, 96), "synapses": (8, 96, 96), "segmentation": (8, 64, 64)}
