"""Learned-boundary segmentation: supervoxels by watershed, then agglomeration by mean affinity.

What affinity / LSD pipelines do (Funke et al. 2019, Sheridan et al. 2022), on the output of
``connectome predict-boundaries`` (``boundary``: channel 0 boundary probability, 1-3 affinities
to the predecessor along z, y, x):

1. **Fragments (supervoxels), per section.** Sections are 40 nm apart and 8 nm pixels wide,
   so fragments are grown in 2D: the boundary map of a section is thresholded at
   ``fragment_threshold`` (interior = below), the interior's distance transform is smoothed,
   its local maxima (within ``seed_radius_px``; plateaus joined) seed
   ``skimage.segmentation.watershed`` over the boundary map, which then covers every voxel
   outside the vessel mask. Ids are unique over the sections.
2. **Agglomeration, in 3D.** ``waterz`` (Funke's C++ region-graph agglomeration, binary wheel
   on PyPI) joins fragments across sections and within them in order of the mean affinity along
   their shared faces (``OneMinus<MeanAffinity>``; ``scoring: quantile_Q`` uses a percentile of
   the face's affinities instead), recomputing the statistic after every merge, until no face
   left scores below ``merge_threshold``. The affinities are the
   model's learned ones (``affinities: learned``) or, for comparison, derived from the boundary
   channel (``affinities: boundary``: ``aff_d(v) = 1 - max(b(v), b(v - e_d))``).
   Chosen over writing the agglomeration here: waterz is what the affinity pipelines of the
   field use, is exact (a priority queue over region-graph edges with incremental means) and
   runs a 64 x 512 x 512 volume in seconds. ``mwatershed`` (mutex watershed) was considered
   too: it needs long-range affinities with attractive/repulsive biases that this model does
   not predict.
3. **Clean-up.** Objects smaller than ``min_size_voxels`` are given to the neighbour they share
   the most face with (``0`` leaves them); vessel voxels are 0.

Everything is a pure function of the subvolume's arrays, so blockwise runs over overlapping
subvolumes are reconciled like the FFN's (:mod:`ffn.reconcile`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class WatershedConfig:
    #: "learned": the model's z/y/x affinities; "boundary": affinities derived from the boundary map
    affinities: Literal["learned", "boundary"] = "learned"
    #: boundary probability below which a pixel is interior (seed area of the fragments)
    fragment_threshold: float = 0.5
    #: Gaussian sigma (px) on the interior distance transform before its maxima are taken
    distance_sigma_px: float = 1.0
    #: local maxima of the distance transform within this radius (px) seed one fragment each
    seed_radius_px: int = 3
    #: agglomerate while the best face's score (1 - its mean affinity) is below this. Chosen on
    #: validation volumes only (benchmarks/tune_watershed.py; synth 1111, 1112 and 1113, the last
    #: with degraded imaging): 0.4 -- mean ARAND + VOI / 4 of 0.94 against 1.05 for 0.5, which is
    #: slightly better on the two in-range volumes alone (0.70 vs 0.72) but merges far more when
    #: membranes are faint and blurred (b1113 ARAND 0.51 vs 0.26)
    merge_threshold: float = 0.4
    #: face statistic: "mean" affinity, or "quantile_Q" (Q in 10, 15, ..., 95: that percentile of
    #: the face's affinities, as LSD's "hist_quant_Q"); both are precompiled in waterz's wheel
    scoring: str = "mean"
    #: objects smaller than this (voxels) join the neighbour they share the most face with (0: off)
    min_size_voxels: int = 0

    def __post_init__(self):
        _scoring_function(self.scoring)
        if not 0 < self.fragment_threshold < 1 or not 0 < self.merge_threshold < 1:
            raise ValueError("fragment_threshold and merge_threshold must be in (0, 1)")
        if self.seed_radius_px < 1 or self.distance_sigma_px < 0 or self.min_size_voxels < 0:
            raise ValueError("seed_radius_px must be >= 1, distance_sigma_px >= 0 and min_size_voxels >= 0")


def fragments_2d(boundary: np.ndarray, cfg: WatershedConfig, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """uint64 (z, y, x) supervoxels from a boundary map in [0, 1] (see module doc, step 1)."""
    from skimage.segmentation import watershed

    out = np.zeros(boundary.shape, np.uint64)
    next_id = 1
    footprint = np.ones((2 * cfg.seed_radius_px + 1,) * 2, bool)
    for z in range(boundary.shape[0]):
        b = boundary[z]
        area = np.ones(b.shape, bool) if mask is None else ~np.asarray(mask[z], bool)
        interior = (b < cfg.fragment_threshold) & area
        if not interior.any():
            continue
        dist = ndimage.distance_transform_edt(interior).astype(np.float32)
        if cfg.distance_sigma_px:
            dist = ndimage.gaussian_filter(dist, cfg.distance_sigma_px)
        peaks = (dist == ndimage.maximum_filter(dist, footprint=footprint, mode="nearest")) & interior
        markers, n = ndimage.label(peaks, structure=np.ones((3, 3), bool))
        if n == 0:
            continue
        lab = watershed(b, markers, mask=area)
        sel = lab > 0
        out[z][sel] = lab[sel].astype(np.uint64) + np.uint64(next_id - 1)
        next_id += n
    return out


def affinities_from_boundary(boundary: np.ndarray) -> np.ndarray:
    """(3, z, y, x) float32: ``1 - max(b(v), b(v - e_d))`` (the first plane of each axis: ``1 - b``)."""
    out = np.empty((3,) + boundary.shape, np.float32)
    for d in range(3):
        prev = np.roll(boundary, 1, axis=d)
        first = [slice(None)] * 3
        first[d] = slice(0, 1)
        prev[tuple(first)] = boundary[tuple(first)]
        out[d] = 1.0 - np.maximum(boundary, prev)
    return out


def _scoring_function(scoring: str) -> str:
    """waterz's C++ type of a ``scoring`` name (ValueError if it is not one of the precompiled)."""
    if scoring == "mean":
        return "OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>"
    q = scoring.removeprefix("quantile_")
    if q.isdigit() and int(q) in range(10, 100, 5):
        return f"OneMinus<HistogramQuantileAffinity<RegionGraphType,{int(q)},ScoreValue,256,false>>"
    raise ValueError(f"scoring must be 'mean' or 'quantile_Q' with Q in 10, 15, ..., 95, got {scoring!r}")


@contextmanager
def _quiet_stdout():
    """waterz's C++ core prints its progress to the process's stdout; send it to /dev/null."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _waterz_args(scoring: str) -> dict:
    return {"scoring_function": _scoring_function(scoring), "discretize_queue": 0 if scoring == "mean" else 256}


def agglomerate(affs: np.ndarray, fragments: np.ndarray, thresholds, scoring: str = "mean") -> list[np.ndarray]:
    """waterz agglomeration of ``fragments`` (uint64, 0 = none; not modified), one segmentation
    per threshold (ascending; each continues the merges of the one before)."""
    import waterz

    out = []
    with _quiet_stdout():
        for seg in waterz.agglomerate(
            np.ascontiguousarray(affs, np.float32),
            [float(t) for t in thresholds],
            fragments=np.array(fragments, np.uint64, order="C", copy=True),
            **_waterz_args(scoring),
        ):
            out.append(np.array(seg, np.uint64, copy=True))
    return out


def agglomerate_with_graph(
    affs: np.ndarray, fragments: np.ndarray, threshold: float, scoring: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """The segmentation at ``threshold`` and its region graph: (n, 3) float64 rows ``u, v,
    score`` (score = 1 - mean affinity along the shared face of segments ``u`` and ``v``)."""
    import waterz

    with _quiet_stdout():
        seg, graph = next(
            iter(
                waterz.agglomerate(
                    np.ascontiguousarray(affs, np.float32),
                    [float(threshold)],
                    fragments=np.array(fragments, np.uint64, order="C", copy=True),
                    return_region_graph=True,
                    **_waterz_args(scoring),
                )
            )
        )
        seg = np.array(seg, np.uint64, copy=True)
    rows = np.array([(e["u"], e["v"], e["score"]) for e in graph], np.float64).reshape(-1, 3)
    return seg, rows


def affinities_for(boundary4: np.ndarray, cfg: WatershedConfig) -> np.ndarray:
    """(3, z, y, x) float32 affinities in [0, 1] of ``boundary4`` under ``cfg.affinities``."""
    scale = 255.0 if boundary4.dtype == np.uint8 else 1.0
    if cfg.affinities == "learned":
        return np.asarray(boundary4[1:4], np.float32) / scale
    return affinities_from_boundary(np.asarray(boundary4[0], np.float32) / scale)


def absorb_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Objects under ``min_size`` voxels take the id of the (not small) neighbour they share the
    most 6-connected face with; isolated ones keep their id."""
    if min_size <= 1:
        return labels
    ids, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = (counts < min_size) & (ids != 0)
    if not small.any():
        return labels
    flat = inv.reshape(labels.shape)
    pairs = []
    for axis in range(3):
        a = np.moveaxis(flat, axis, 0)
        u, v = a[1:].ravel(), a[:-1].ravel()
        diff = u != v
        pairs.append(np.stack([u[diff], v[diff]], 1))
        pairs.append(np.stack([v[diff], u[diff]], 1))
    p = np.concatenate(pairs)
    p = p[small[p[:, 0]] & ~small[p[:, 1]] & (ids[p[:, 1]] != 0)]
    if not len(p):
        return labels
    keys, n = np.unique(p, axis=0, return_counts=True)
    order = np.lexsort((-n, keys[:, 0]))
    keys = keys[order]
    first = np.r_[True, keys[1:, 0] != keys[:-1, 0]]
    target = np.arange(len(ids))
    target[keys[first, 0]] = keys[first, 1]
    return ids[target][flat]


def segment_watershed(
    boundary4: np.ndarray, cfg: WatershedConfig = WatershedConfig(), mask: Optional[np.ndarray] = None
) -> np.ndarray:
    """uint64 (z, y, x) neurons from ``boundary4`` ((4, z, y, x) uint8 of predict-boundaries, or
    float in [0, 1]); ``mask`` (vessels) voxels stay 0."""
    scale = 255.0 if boundary4.dtype == np.uint8 else 1.0
    frags = fragments_2d(np.asarray(boundary4[0], np.float32) / scale, cfg, mask)
    if not frags.any():
        return frags
    seg = agglomerate(affinities_for(boundary4, cfg), frags, [cfg.merge_threshold], cfg.scoring)[0]
    seg = absorb_small(seg, cfg.min_size_voxels)
    if mask is not None:
        seg[np.asarray(mask, bool)] = 0
    return seg
