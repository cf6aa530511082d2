"""Segmentation metrics from a voxel contingency table: VOI split/merge, adapted Rand error,
split and merge object counts, and the segment -> truth-neuron id mapping.

Conventions (``truth`` = ground-truth neuron ids, ``seg`` = the workspace's segmentation):

* Evaluated voxels: truth label != 0 and not a truth vessel voxel (vessel voxels are set to
  truth label 0 before counting). Segment id 0 ("unlabelled") is *not* ignored: as in
  scikit-image, it counts as one more segment, so unlabelled neuron voxels are penalised.
* The contingency table ``n[t, s]`` counts voxels with truth id t and segment id s. It is built
  block by block (``np.unique`` on paired labels, then summed), so memory is bounded by the
  block size and the number of distinct (t, s) pairs, never by the volume.
* VOI (bits, log2), with p = n / N over evaluated voxels::

      split = H(seg | truth) = -sum p_ts log2(p_ts / p_t)   (over-segmentation)
      merge = H(truth | seg) = -sum p_ts log2(p_ts / p_s)   (under-segmentation)

  ``skimage.metrics.variation_of_information(truth, seg, ignore_labels=[0])`` returns exactly
  ``(split, merge)`` in that order.
* Adapted Rand (SNEMI3D / scikit-image): with ordered voxel pairs,
  ``P_both = sum n_ts^2 - N``, ``P_truth = sum n_t^2 - N``, ``P_seg = sum n_s^2 - N``::

      precision = P_both / P_seg     (pairs joined by seg that truth joins too; merges lower it)
      recall    = P_both / P_truth   (pairs joined by truth that seg joins too; splits lower it)
      error     = 1 - 2 P_both / (P_truth + P_seg)

  ``skimage.metrics.adapted_rand_error(truth, seg)`` returns ``(error, recall, precision)`` in
  these terms: its code divides by the *truth* pair count for what it calls precision
  (scikit-image issue #6485). The error is the same either way; we name the two by meaning.
* Split / merge object counts: an overlap n[t, s] (s != 0) is *significant* when it holds at
  least ``min_voxels`` voxels and at least ``min_fraction`` of the truth object or of the
  segment (of the smaller of the two), so a thin boundary sheet between two large objects is
  not counted. A truth object is *split* when >= 2 segments overlap it significantly; a segment
  is a *merger* when it overlaps >= 2 truth objects significantly.
* Id mapping (for synapse partners and connectivity): each segment maps to the truth id it
  shares most voxels with, over all voxels (truth 0 and vessels included, as id 0); ties go to
  the smaller truth id. A segment that is mostly outside neurons maps to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from connectome.evaluate.inputs import iter_boxes


@dataclass(frozen=True)
class Contingency:
    """A sparse contingency table: one entry per distinct (truth id, segment id) pair."""

    truth_ids: np.ndarray  # uint64
    seg_ids: np.ndarray  # uint64
    counts: np.ndarray  # int64, > 0

    @classmethod
    def empty(cls) -> "Contingency":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))

    @classmethod
    def from_labels(cls, truth: np.ndarray, seg: np.ndarray) -> "Contingency":
        """Count the (truth, seg) pairs of two label arrays of one shape (all voxels)."""
        t = np.asarray(truth).astype(np.uint64, copy=False).reshape(-1)
        s = np.asarray(seg).astype(np.uint64, copy=False).reshape(-1)
        if t.shape != s.shape:
            raise ValueError(f"label arrays differ in size: {t.size} vs {s.size}")
        if t.size == 0:
            return cls.empty()
        ut, ti = np.unique(t, return_inverse=True)
        us, si = np.unique(s, return_inverse=True)
        key = ti.astype(np.int64).reshape(-1) * len(us) + si.reshape(-1)
        uk, counts = np.unique(key, return_counts=True)
        return cls(ut[uk // len(us)], us[uk % len(us)], counts.astype(np.int64))

    def combined(self, *others: "Contingency") -> "Contingency":
        """The sum of several tables."""
        t = np.concatenate([self.truth_ids] + [o.truth_ids for o in others])
        s = np.concatenate([self.seg_ids] + [o.seg_ids for o in others])
        c = np.concatenate([self.counts] + [o.counts for o in others])
        if t.size == 0:
            return Contingency.empty()
        order = np.lexsort((s, t))
        t, s, c = t[order], s[order], c[order]
        start = np.ones(t.size, bool)
        start[1:] = (t[1:] != t[:-1]) | (s[1:] != s[:-1])
        idx = np.flatnonzero(start)
        return Contingency(t[idx], s[idx], np.add.reduceat(c, idx))

    def without_truth(self, label: int = 0) -> "Contingency":
        keep = self.truth_ids != np.uint64(label)
        return Contingency(self.truth_ids[keep], self.seg_ids[keep], self.counts[keep])

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def contingency_from_arrays(truth_array, seg_array, vessel_array=None, block_shape_zyx=(16, 512, 512)) -> Contingency:
    """Stream two (zarr or numpy) label volumes block by block into one table (all voxels).

    Truth vessel voxels (``vessel_array`` != 0) are counted as truth id 0.
    """
    if tuple(truth_array.shape) != tuple(seg_array.shape):
        raise ValueError(f"shapes differ: {list(truth_array.shape)} vs {list(seg_array.shape)}")
    table = Contingency.empty()
    pending: list[Contingency] = []
    for box in iter_boxes(truth_array.shape, block_shape_zyx):
        t = np.asarray(truth_array[box]).astype(np.uint64, copy=True)
        if vessel_array is not None:
            t[np.asarray(vessel_array[box]) != 0] = 0
        pending.append(Contingency.from_labels(t, np.asarray(seg_array[box])))
        if len(pending) >= 16:
            table = table.combined(*pending)
            pending = []
    return table.combined(*pending) if pending else table


def _marginal(ids: np.ndarray, counts: np.ndarray):
    """Per distinct id: the summed count, and for each entry the index of its id."""
    uid, inv = np.unique(ids, return_inverse=True)
    return uid, np.bincount(inv.reshape(-1), weights=counts, minlength=uid.size), inv.reshape(-1)


def voi(table: Contingency) -> tuple[float, float]:
    """(split, merge) = (H(seg|truth), H(truth|seg)) in bits over the table's voxels."""
    n = table.total
    if n == 0:
        return math.nan, math.nan
    c = table.counts.astype(np.float64)
    _, a, ti = _marginal(table.truth_ids, c)
    _, b, si = _marginal(table.seg_ids, c)
    p = c / n
    split = float(-(p * np.log2(c / a[ti])).sum())
    merge = float(-(p * np.log2(c / b[si])).sum())
    # clamp rounding noise (and -0.0) of perfect scores to exactly 0
    return (split if split > 1e-15 else 0.0), (merge if merge > 1e-15 else 0.0)


def rand_pair_sums(table: Contingency) -> dict[str, float]:
    """The additive terms of the adapted Rand index: ``n`` voxels and the ordered voxel pairs
    together in both (``both``), in the truth (``truth_pairs``) and in the segmentation
    (``seg_pairs``). Sums over disjoint regions add up, so shards (e.g. Horovod ranks) can pool
    them before :func:`adapted_rand_from_sums`."""
    n = float(table.total)
    c = table.counts.astype(np.float64)
    _, a, _ = _marginal(table.truth_ids, c)
    _, b, _ = _marginal(table.seg_ids, c)
    return {"n": n, "both": float(c @ c) - n, "truth_pairs": float(a @ a) - n, "seg_pairs": float(b @ b) - n}


def adapted_rand(table: Contingency) -> tuple[float, float, float]:
    """(error, precision, recall) of the adapted Rand index (see the module docstring)."""
    return adapted_rand_from_sums(rand_pair_sums(table))


def adapted_rand_from_sums(sums: dict[str, float]) -> tuple[float, float, float]:
    """(error, precision, recall) from (pooled) :func:`rand_pair_sums`."""
    both, truth_pairs, seg_pairs = sums["both"], sums["truth_pairs"], sums["seg_pairs"]
    precision = both / seg_pairs if seg_pairs > 0 else math.nan
    recall = both / truth_pairs if truth_pairs > 0 else math.nan
    denom = truth_pairs + seg_pairs
    error = 1.0 - 2.0 * both / denom if denom > 0 else math.nan
    return error, precision, recall


def split_merge_counts(table: Contingency, min_fraction: float = 0.05, min_voxels: int = 100) -> dict:
    """Counts of split truth objects and merger segments (see the module docstring)."""
    c = table.counts
    _, t_size, ti = _marginal(table.truth_ids, c.astype(np.float64))
    _, s_size, si = _marginal(table.seg_ids, c.astype(np.float64))
    smaller = np.minimum(t_size[ti], s_size[si])
    significant = (table.seg_ids != 0) & (c >= min_voxels) & (c >= min_fraction * smaller)
    pieces_per_truth = np.bincount(ti[significant], minlength=t_size.size)
    truths_per_seg = np.bincount(si[significant], minlength=s_size.size)
    seg_nonzero = np.unique(table.seg_ids[table.seg_ids != 0])
    return {
        "n_truth_objects": int(t_size.size),
        "n_segments": int(seg_nonzero.size),
        "n_split_truth_objects": int((pieces_per_truth >= 2).sum()),
        "n_merger_segments": int((truths_per_seg >= 2).sum()),
    }


def segment_to_truth_map(table: Contingency) -> dict[int, int]:
    """Segment id -> the truth id it overlaps most (0 -> 0); built from an all-voxel table."""
    if table.counts.size == 0:
        return {0: 0}
    order = np.lexsort((-table.counts, table.seg_ids))  # per segment: largest count first
    s, t = table.seg_ids[order], table.truth_ids[order]
    first = np.ones(s.size, bool)
    first[1:] = s[1:] != s[:-1]
    mapping = {int(k): int(v) for k, v in zip(s[first], t[first])}
    mapping[0] = 0
    return mapping


def segmentation_metrics(full_table: Contingency, min_fraction: float = 0.05, min_voxels: int = 100) -> dict:
    """All segmentation scores from an all-voxel table (truth 0 / vessels as truth id 0)."""
    table = full_table.without_truth(0)
    split, merge = voi(table)
    are, precision, recall = adapted_rand(table)
    n = table.total
    unlabelled = int(table.counts[table.seg_ids == 0].sum())
    return {
        "status": "ok",
        "evaluated_voxels": n,
        "unlabelled_fraction": unlabelled / n if n else math.nan,
        "voi_split": split,
        "voi_merge": merge,
        "voi_sum": split + merge,
        "arand_error": are,
        "arand_precision": precision,
        "arand_recall": recall,
        **split_merge_counts(table, min_fraction, min_voxels),
        "overlap_min_fraction": min_fraction,
        "overlap_min_voxels": min_voxels,
    }
