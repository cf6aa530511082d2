"""Connectivity: the predicted neuron-to-neuron graph against the true one.

Predicted edges (``pre_segment_id, post_segment_id, synapse_count``) are first mapped to truth
neuron ids with ``segmentation.segment_to_truth_map``; predicted edges that land on the same
truth pair are merged (their synapse counts summed). A mapped edge that touches id 0 (a segment
that is mostly not neuron) or becomes an autapse (two fragments of one neuron) is kept: it
cannot be a true edge, so it counts as a false positive. True edges with duplicates are summed
likewise.

For each level k in ``edge_min_synapses`` (default 1 and 2), the edge sets are the edges with
synapse count >= k on each side::

    precision = |pred_k & true_k| / |pred_k|   recall = |pred_k & true_k| / |true_k|

"Weighted" scores count synapses rather than edges, edge by edge:
``tp = sum_e min(pred_count_e, true_count_e)``, precision = tp / sum pred counts,
recall = tp / sum true counts.
"""

from __future__ import annotations

from typing import Optional, Sequence

from connectome.evaluate.synapses import prf


def _edge_counts(pre, post, counts, mapping: Optional[dict] = None) -> dict[tuple[int, int], int]:
    edges: dict[tuple[int, int], int] = {}
    for a, b, c in zip(pre.tolist(), post.tolist(), counts.tolist()):
        if mapping is not None:
            a, b = mapping.get(int(a), 0), mapping.get(int(b), 0)
        key = (int(a), int(b))
        edges[key] = edges.get(key, 0) + int(c)
    return edges


def connectivity_metrics(pred: dict, truth: dict, seg_to_truth: dict, min_synapses: Sequence[int] = (1, 2)) -> dict:
    """Edge-level and synapse-weighted scores; ``pred``/``truth`` are column dicts
    (see tables.CONNECTIVITY)."""
    p = _edge_counts(pred["pre_segment_id"], pred["post_segment_id"], pred["synapse_count"], seg_to_truth)
    t = _edge_counts(truth["pre_segment_id"], truth["post_segment_id"], truth["synapse_count"])
    result: dict = {"status": "ok", "n_predicted_edges_mapped": len(p), "n_true_edges": len(t)}
    for k in min_synapses:
        pk = {e for e, c in p.items() if c >= k}
        tk = {e for e, c in t.items() if c >= k}
        tp = len(pk & tk)
        result[f"edges_min{k}"] = {
            "n_predicted": len(pk),
            "n_true": len(tk),
            "n_correct": tp,
            **prf(tp, len(pk), len(tk)),
        }
    tp_w = sum(min(c, t.get(e, 0)) for e, c in p.items())
    n_p, n_t = sum(p.values()), sum(t.values())
    result["weighted"] = {"n_predicted_synapses": n_p, "n_true_synapses": n_t, "n_correct": tp_w, **prf(tp_w, n_p, n_t)}
    return result
