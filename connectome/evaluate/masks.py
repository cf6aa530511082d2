"""Vessel mask: voxel-wise IoU, Dice, precision and recall of the workspace's ``vessel_mask``
against the truth's ``vessels`` (any non-zero value = vessel), streamed block by block.

    IoU = |P & T| / |P | T|      Dice = 2 |P & T| / (|P| + |T|)
    precision = |P & T| / |P|    recall = |P & T| / |T|

When both masks are empty, IoU and Dice are 1 (perfect agreement); a ratio with an empty
denominator otherwise is null.
"""

from __future__ import annotations

import math

import numpy as np

from connectome.evaluate.inputs import iter_boxes


def mask_overlap(pred, truth, block_shape_zyx=(16, 512, 512)) -> dict:
    """Overlap scores of two binary volumes of the same shape (zarr or numpy)."""
    if tuple(pred.shape) != tuple(truth.shape):
        raise ValueError(f"shapes differ: {list(pred.shape)} vs {list(truth.shape)}")
    inter = n_pred = n_truth = 0
    for box in iter_boxes(pred.shape, block_shape_zyx):
        p = np.asarray(pred[box]) != 0
        t = np.asarray(truth[box]) != 0
        inter += int(np.count_nonzero(p & t))
        n_pred += int(np.count_nonzero(p))
        n_truth += int(np.count_nonzero(t))
    union = n_pred + n_truth - inter
    empty = union == 0
    return {
        "status": "ok",
        "predicted_voxels": n_pred,
        "truth_voxels": n_truth,
        "intersection_voxels": inter,
        "iou": 1.0 if empty else inter / union,
        "dice": 1.0 if empty else 2.0 * inter / (n_pred + n_truth),
        "precision": inter / n_pred if n_pred else math.nan,
        "recall": inter / n_truth if n_truth else math.nan,
    }
