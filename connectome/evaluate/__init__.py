"""``connectome evaluate``: score a workspace's outputs against ground truth.

Modules (each owns and documents its conventions):

* :mod:`.stitching`    tile-position error (px), per-section median offset removed
* :mod:`.alignment`    patch-wise phase-correlation residual (px) and neighbour-section NCC
* :mod:`.align_truth`  alignment criteria against the truth transforms: (a) adjacent-pair error,
                       (b) accumulated error after one global affine, (c) drift, (d) over-registration
* :mod:`.downstream`   alignment criterion (e): the segmenter on the aligned vs the true raw volume
* :mod:`.masks`        vessel-mask IoU / Dice / precision / recall
* :mod:`.segmentation` VOI split/merge, adapted Rand, split/merge object counts, id mapping
* :mod:`.synapses`     Hungarian matching within a distance (nm): P/R/F1, partner accuracy
* :mod:`.connectivity` edge P/R/F1 at >= 1 and >= 2 synapses, synapse-weighted P/R/F1
* :mod:`.runner`       :func:`evaluate_workspace` (writes ``WS/evaluation.json``)
* :mod:`.report`       :func:`format_table`

This package reads workspaces and truth folders; nothing in the pipeline imports it.
"""

from connectome.evaluate.align_truth import evaluate_transforms, over_registration, transform_criteria
from connectome.evaluate.alignment import neighbour_ncc, pair_ncc, patch_shift, patch_shifts, residuals
from connectome.evaluate.config import EvaluateConfig
from connectome.evaluate.connectivity import connectivity_metrics
from connectome.evaluate.masks import mask_overlap
from connectome.evaluate.report import format_table
from connectome.evaluate.runner import RESULT_FILE, evaluate_workspace
from connectome.evaluate.segmentation import (
    Contingency,
    adapted_rand,
    contingency_from_arrays,
    segment_to_truth_map,
    segmentation_metrics,
    split_merge_counts,
    voi,
)
from connectome.evaluate.stitching import tile_position_errors
from connectome.evaluate.synapses import match_points, prf, synapse_metrics

__all__ = [
    "EvaluateConfig",
    "evaluate_workspace",
    "format_table",
    "RESULT_FILE",
    "tile_position_errors",
    "residuals",
    "neighbour_ncc",
    "pair_ncc",
    "patch_shift",
    "patch_shifts",
    "mask_overlap",
    "evaluate_transforms",
    "transform_criteria",
    "over_registration",
    "Contingency",
    "contingency_from_arrays",
    "voi",
    "adapted_rand",
    "split_merge_counts",
    "segment_to_truth_map",
    "segmentation_metrics",
    "match_points",
    "synapse_metrics",
    "prf",
    "connectivity_metrics",
]
