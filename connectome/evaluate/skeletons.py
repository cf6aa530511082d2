"""Skeleton metrics (FFN paper, Januszewski et al. 2018, Nat Methods 15:605): expected run length
(ERL), merges and splits counted on the nodes of the true skeletons.

Every node of a true skeleton (nm, z y x) is looked up in the segmentation: the voxel
``floor(node / voxel_size_nm)``. Then:

* a segment *holds* a true skeleton when at least ``min_overlap_nm`` of the skeleton's cable
  lies in it (each node stands for half the length of its edges; a length rather than a node
  count, so the threshold does not depend on how densely a skeleton is sampled, and a centre
  line grazing a neighbour for a node or two is no merge);
* a segment is a *merger* when it holds >= 2 true skeletons; it makes ``k - 1`` merges for
  ``k`` skeletons, so a segment that joins two neurons is one merge;
* a true skeleton is *split* into the segments that hold it; it makes ``k - 1`` splits for
  ``k`` segments (segment 0, unlabelled, does not count as a piece);
* an edge of a true skeleton is *correct* when both of its nodes lie in the same segment,
  that segment is not 0 and not a merger. *Runs* are the connected pieces of correct edges of
  one skeleton: a run ends at a split, at an unlabelled node and anywhere on a merger::

      truth     o---o---o---o---o---o          segments:  a a a b b b  -> runs of 2 + 2 edges
      runs      =========   =========

* ERL = sum over runs of run_length^2 / total length (all skeletons): the expected length of
  the run through a point drawn uniformly along all true skeletons (the FFN definition,
  skeletons weighted by their length);
* the ERL of the truth: the same with the true neuron labels as the segmentation; the ceiling,
  below the total length where centre lines leave their own neuron's voxels (such nodes are
  left out of both, see :func:`evaluate_skeletons`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from connectome.skeletons.model import Skeleton


def node_voxels(sk: Skeleton, voxel_size_nm, shape_zyx) -> tuple[np.ndarray, np.ndarray]:
    """(voxel z y x of each node, inside-the-volume flag)."""
    vox = np.floor(sk.vertices_nm / np.asarray(voxel_size_nm, float)).astype(np.int64)
    inside = np.all((vox >= 0) & (vox < np.asarray(shape_zyx)), axis=1)
    return vox, inside


def crop_to_volume(skeletons: Mapping[int, Skeleton], voxel_size_nm, shape_zyx) -> dict[int, Skeleton]:
    out = {}
    for i, sk in skeletons.items():
        _, inside = node_voxels(sk, voxel_size_nm, shape_zyx)
        s = sk.subset(inside)
        if len(s.edges):
            out[int(i)] = s
    return out


def lookup(labels, skeletons: Mapping[int, Skeleton], voxel_size_nm) -> dict[int, np.ndarray]:
    """The label under every node (nodes must lie inside the volume; see :func:`crop_to_volume`).
    ``labels``: a numpy or zarr array; zarr is read by point selection."""
    ids = sorted(skeletons)
    if not ids:
        return {}
    vox = np.concatenate([node_voxels(skeletons[i], voxel_size_nm, labels.shape)[0] for i in ids])
    if isinstance(labels, np.ndarray):
        vals = labels[vox[:, 0], vox[:, 1], vox[:, 2]]
    else:
        vals = _read_points(labels, vox)
    counts = np.cumsum([0] + [skeletons[i].n_vertices for i in ids])
    return {i: vals[counts[k] : counts[k + 1]].astype(np.uint64) for k, i in enumerate(ids)}


def _read_points(array, vox: np.ndarray) -> np.ndarray:
    """Values of a (zarr) array at voxels, read chunk-row by chunk-row of z (bounded memory)."""
    out = np.zeros(len(vox), np.dtype(array.dtype))
    cz = int(array.chunks[0]) if getattr(array, "chunks", None) else 16
    order = np.argsort(vox[:, 0], kind="stable")
    zs = vox[order, 0]
    for z0 in range(0, int(array.shape[0]), cz):
        a, b = np.searchsorted(zs, [z0, z0 + cz])
        if a == b:
            continue
        sel = order[a:b]
        ys, xs = vox[sel, 1], vox[sel, 2]
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        slab = np.asarray(array[z0 : z0 + cz, y0:y1, x0:x1])
        out[sel] = slab[vox[sel, 0] - z0, ys - y0, xs - x0]
    return out


def run_lengths(sk: Skeleton, node_seg: np.ndarray, mergers: set) -> np.ndarray:
    """Lengths (nm) of the runs of one skeleton given the segment of each node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = sk.edges
    if not len(e):
        return np.zeros(0)
    sa, sb = node_seg[e[:, 0]], node_seg[e[:, 1]]
    bad = np.isin(sa, np.fromiter(mergers, np.uint64, len(mergers))) if mergers else np.zeros(len(e), bool)
    ok = (sa == sb) & (sa != 0) & ~bad
    if not ok.any():
        return np.zeros(0)
    n = sk.n_vertices
    ce = e[ok]
    g = coo_matrix((np.ones(len(ce)), (ce[:, 0], ce[:, 1])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    lengths = sk.edge_lengths_nm()[ok]
    return np.bincount(comp[ce[:, 0]], weights=lengths)[np.unique(comp[ce[:, 0]])]


def node_weights(sk: Skeleton) -> np.ndarray:
    """The cable length (nm) each node stands for: half the length of each of its edges."""
    w = np.zeros(sk.n_vertices)
    if len(sk.edges):
        half = 0.5 * sk.edge_lengths_nm()
        np.add.at(w, sk.edges[:, 0], half)
        np.add.at(w, sk.edges[:, 1], half)
    return w


def skeleton_metrics(
    skeletons: Mapping[int, Skeleton],
    node_seg: Mapping[int, np.ndarray],
    voxel_size_nm=None,
    min_overlap_nm: float = 0.0,
    top: int = 10,
) -> dict:
    """ERL, merges and splits of a segmentation (``node_seg``: the segment under every node of
    every true skeleton) along ``skeletons`` (true id -> Skeleton, inside the volume)."""
    ids = sorted(skeletons)
    # cable length per (segment, skeleton)
    pairs: dict[int, dict[int, float]] = {}
    held: dict[int, dict[int, float]] = {}
    for t in ids:
        segs, inv = np.unique(node_seg[t], return_inverse=True)
        length = np.bincount(inv.reshape(-1), weights=node_weights(skeletons[t]), minlength=len(segs))
        held[t] = {
            int(s): float(c) for s, c in zip(segs.tolist(), length.tolist()) if s != 0 and c >= min_overlap_nm and c > 0
        }
        for s, c in held[t].items():
            pairs.setdefault(s, {})[t] = c
    mergers = pairs
    mergers = {s: d for s, d in mergers.items() if len(d) >= 2}
    n_merges = sum(len(d) - 1 for d in mergers.values())
    n_splits, split_skeletons, omitted = 0, 0, 0
    runs_sq, total = 0.0, 0.0
    per_truth_len = {}
    for t in ids:
        sk = skeletons[t]
        pieces = len(held[t])
        n_splits += max(0, pieces - 1)
        split_skeletons += pieces > 1
        omitted += int((node_seg[t] == 0).sum())
        L = sk.length_nm()
        per_truth_len[t] = L
        total += L
        runs_sq += float((run_lengths(sk, node_seg[t], set(mergers)) ** 2).sum())
    worst: list[dict[str, Any]] = []
    row: dict[str, Any]
    for s, d in mergers.items():
        affected = sum(per_truth_len[t] for t in d)
        # where the merge is: a node of the second-largest skeleton in this segment
        t2 = sorted(d, key=lambda t: (-d[t], t))[1]
        k = int(np.flatnonzero(node_seg[t2] == s)[0])
        pos_nm = skeletons[t2].vertices_nm[k]
        row = {
            "segment_id": int(s),
            "n_skeletons": len(d),
            "truth_ids": sorted(int(t) for t in d),
            "cable_in_segment_nm": float(sum(d.values())),
            "skeleton_length_nm": float(affected),
            "position_nm_zyx": [float(v) for v in pos_nm],
        }
        if voxel_size_nm is not None:
            row["position_zyx"] = [int(v) for v in np.floor(pos_nm / np.asarray(voxel_size_nm))]
        worst.append(row)
    worst.sort(key=lambda r: (-r["skeleton_length_nm"], r["segment_id"]))
    n_nodes = int(sum(skeletons[t].n_vertices for t in ids))
    return {
        "erl_nm": runs_sq / total if total > 0 else float("nan"),
        "total_length_nm": total,
        "n_skeletons": len(ids),
        "n_nodes": n_nodes,
        "n_merges": int(n_merges),
        "n_merger_segments": len(mergers),
        "n_splits": int(n_splits),
        "n_split_skeletons": int(split_skeletons),
        "omitted_node_fraction": omitted / n_nodes if n_nodes else float("nan"),
        "min_overlap_nm": float(min_overlap_nm),
        "worst_mergers": worst[:top],
    }


def evaluate_skeletons(
    skeletons: Mapping[int, Skeleton],
    segmentation,
    truth_labels,
    voxel_size_nm,
    min_overlap_nm: float = 0.0,
    top: int = 10,
) -> dict:
    """The section ``skeletons`` of ``evaluation.json``: metrics of the segmentation along the
    true skeletons, and the ERL of the truth labels (the ceiling) when given.

    With ``truth_labels``, a node that does not lie in its own neuron's truth voxels (a thin
    neurite's centre line can leave its few voxels, or cross a squeezed neighbour) is left out:
    it counts as in no segment for both the segmentation and the truth, so it ends runs but
    makes no merge or split. Their share is reported (``nodes_outside_own_label``)."""
    sk = crop_to_volume(skeletons, voxel_size_nm, segmentation.shape)
    seg_nodes = lookup(segmentation, sk, voxel_size_nm)
    truth_nodes = None
    outside = 0
    if truth_labels is not None:
        truth_nodes = lookup(truth_labels, sk, voxel_size_nm)
        for t in sk:
            bad = truth_nodes[t] != np.uint64(t)
            outside += int(bad.sum())
            seg_nodes[t] = np.where(bad, np.uint64(0), seg_nodes[t])
            truth_nodes[t] = np.where(bad, np.uint64(0), truth_nodes[t])
    out = {"status": "ok", **skeleton_metrics(sk, seg_nodes, voxel_size_nm, min_overlap_nm, top)}
    if truth_nodes is not None:
        ceiling = skeleton_metrics(sk, truth_nodes, voxel_size_nm, min_overlap_nm, 0)
        out["erl_truth_nm"] = ceiling["erl_nm"]
        out["truth_n_merges"] = ceiling["n_merges"]
        out["truth_n_splits"] = ceiling["n_splits"]
        out["erl_fraction_of_truth"] = (out["erl_nm"] / ceiling["erl_nm"]) if ceiling["erl_nm"] > 0 else float("nan")
        out["nodes_outside_own_label"] = outside / out["n_nodes"] if out["n_nodes"] else float("nan")
    return out


def truth_skeletons(truth, voxel_size_nm, progress: bool = False, cfg=None) -> tuple[dict[int, Skeleton], str]:
    """The true skeletons of a truth folder: ``truth/skeletons/`` (precomputed, written by
    ``connectome synth``) or, without it, skeletons of the truth ``neurons`` made by the same
    skeletonizer as ``connectome skeletonize``. Returns (skeletons, where they came from)."""
    from connectome.skeletons.precomputed import read_skeletons

    folder = truth.path / "truth" / "skeletons"
    if (folder / "info").is_file():
        return read_skeletons(folder), str(folder)
    from connectome.skeletons.skeletonize import SkeletonizeConfig, skeletonize_volume

    labels = np.asarray(truth.array("neurons")[:])
    if truth.has("vessels"):
        labels[np.asarray(truth.array("vessels")[:]) != 0] = 0
    return skeletonize_volume(
        labels, voxel_size_nm, cfg or SkeletonizeConfig(), progress
    ), "skeletonized from truth.zarr/neurons"


def optional(value: Optional[float]) -> Optional[float]:
    return None if value is None or not np.isfinite(value) else float(value)
