"""Synapse detection: one-to-one matching of predicted to true synapse locations.

Locations are the tables' ``z,y,x`` (voxels), scaled by the voxel size to nm. A predicted and
a true synapse can match when their Euclidean distance is <= ``max_distance_nm`` (400 nm as in
CREMI / synful). Among all one-to-one matchings of such pairs we take one with the most matches
and, among those, the smallest summed distance (Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``; run per connected component of the "within
distance" graph, found with a k-d tree, so the cost matrices stay small). synful's cost is the
mean of the pre- and post-site distances; our tables carry one location per synapse, so the
cost is that location's distance.

    precision = matches / predicted     recall = matches / true     F1 = 2 matches / (pred + true)

Partner accuracy: among matched pairs, the fraction whose predicted (pre, post) segment ids,
mapped to truth neuron ids (see ``segmentation.segment_to_truth_map``), equal the true pair's
(pre, post) ids. It needs the workspace's segmentation for the mapping; without one it is null.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def prf(tp: int, n_pred: int, n_true: int) -> dict:
    """Precision, recall and F1 (null where a denominator is zero; F1 = 2tp / (pred + true))."""
    return {
        "precision": tp / n_pred if n_pred else math.nan,
        "recall": tp / n_true if n_true else math.nan,
        "f1": 2.0 * tp / (n_pred + n_true) if (n_pred + n_true) else math.nan,
    }


def match_points(pred_nm: np.ndarray, true_nm: np.ndarray, max_distance_nm: float):
    """Optimal one-to-one matching within ``max_distance_nm``.

    Returns (pred_index, true_index, distance_nm) arrays of the matched pairs.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pred_nm = np.asarray(pred_nm, dtype=np.float64).reshape(-1, 3)
    true_nm = np.asarray(true_nm, dtype=np.float64).reshape(-1, 3)
    n_p, n_t = len(pred_nm), len(true_nm)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if n_p == 0 or n_t == 0:
        return empty
    neighbours = cKDTree(true_nm).query_ball_point(pred_nm, r=max_distance_nm * (1 + 1e-9))
    pi = np.repeat(np.arange(n_p), [len(n) for n in neighbours])
    ti = np.fromiter((j for n in neighbours for j in n), dtype=np.int64, count=pi.size)
    dist = np.linalg.norm(pred_nm[pi] - true_nm[ti], axis=1) if pi.size else np.zeros(0)
    keep = dist <= max_distance_nm
    pi, ti, dist = pi[keep], ti[keep], dist[keep]
    if pi.size == 0:
        return empty
    # bipartite graph: nodes 0..n_p-1 predicted, n_p..n_p+n_t-1 true
    graph = coo_matrix((np.ones(pi.size), (pi, ti + n_p)), shape=(n_p + n_t, n_p + n_t))
    _, component = connected_components(graph, directed=False)
    comp_of_pair = component[pi]
    order = np.argsort(comp_of_pair, kind="stable")
    pi, ti, dist, comp_of_pair = pi[order], ti[order], dist[order], comp_of_pair[order]
    bounds = np.flatnonzero(np.r_[True, comp_of_pair[1:] != comp_of_pair[:-1], True])
    out_p, out_t, out_d = [], [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        cp, ct, cd = pi[lo:hi], ti[lo:hi], dist[lo:hi]
        up, rp = np.unique(cp, return_inverse=True)
        ut, rt = np.unique(ct, return_inverse=True)
        # infeasible pairs cost more than any feasible matching: most matches first, then distance
        big = max_distance_nm * (min(up.size, ut.size) + 1) + 1.0
        cost = np.full((up.size, ut.size), big)
        cost[rp, rt] = cd
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] < big
        out_p.append(up[rows[ok]])
        out_t.append(ut[cols[ok]])
        out_d.append(cost[rows[ok], cols[ok]])
    return np.concatenate(out_p), np.concatenate(out_t), np.concatenate(out_d)


def synapse_metrics(
    pred: dict, truth: dict, voxel_size_nm, max_distance_nm: float = 400.0, seg_to_truth: Optional[dict] = None
) -> dict:
    """Detection and partner scores; ``pred``/``truth`` are column dicts (see tables.SYNAPSES)."""
    scale = np.asarray(voxel_size_nm, dtype=np.float64)
    p_nm = np.stack([pred["z"], pred["y"], pred["x"]], axis=1) * scale if len(pred["z"]) else np.zeros((0, 3))
    t_nm = np.stack([truth["z"], truth["y"], truth["x"]], axis=1) * scale if len(truth["z"]) else np.zeros((0, 3))
    mp, mt, md = match_points(p_nm, t_nm, max_distance_nm)
    n_pred, n_true, tp = len(p_nm), len(t_nm), int(mp.size)
    result = {
        "status": "ok",
        "n_predicted": n_pred,
        "n_true": n_true,
        "n_matched": tp,
        "match_distance_nm": max_distance_nm,
        **prf(tp, n_pred, n_true),
        "mean_match_distance_nm": float(md.mean()) if tp else math.nan,
        "partner_accuracy": math.nan,
        "n_partners_correct": None,
    }
    if seg_to_truth is not None and tp:
        pre = np.array([seg_to_truth.get(int(v), 0) for v in pred["pre_segment_id"][mp]], dtype=np.uint64)
        post = np.array([seg_to_truth.get(int(v), 0) for v in pred["post_segment_id"][mp]], dtype=np.uint64)
        correct = (
            (pre == truth["pre_segment_id"][mt]) & (post == truth["post_segment_id"][mt]) & (pre != 0) & (post != 0)
        )
        result["n_partners_correct"] = int(correct.sum())
        result["partner_accuracy"] = float(correct.mean())
    elif seg_to_truth is not None:
        result["n_partners_correct"] = 0
    return result
