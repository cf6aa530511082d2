"""FFN agglomeration of supervoxels (``connectome segment --method ffn-agglomerate``).

The way Google's own pipeline used the FFN for agglomeration (Januszewski et al. 2018,
"resegmentation"): short floods are what a flood-filling network is good at, so instead of
flooding whole neurons it decides, for pairs of adjacent segments, whether they are one neuron.

1. **Segments and candidates.** The learned-boundary watershed (:mod:`ffn.watershed`) is run
   up to ``base_threshold`` (by default the watershed method's own ``merge_threshold``); its
   region graph gives every pair of touching segments with the mean affinity of their shared
   face. Pairs whose score (1 - mean affinity) lies in ``[base_threshold, base_threshold +
   band)`` are the uncertain ones the watershed left apart: the FFN decides them (at most
   ``max_pairs``, most affine first). Pairs below ``base_threshold`` are already merged; the
   rest never.
2. **Seeds.** At the model's resolution, the contact point of a pair is the face voxel
   nearest the mean position of their shared face. In a ``box_zyx`` box around it, each of the
   two segments gets one seed: its voxel farthest from its own border (distance transform, nm)
   within ``seed_window_zyx`` of the contact (so a FOV centred on it has context).
   The FFN floods the box from each seed on its own canvas (box-limited, at most
   ``max_fovs_per_flood`` FOVs); the canvases of many pairs run batched.
3. **Decision** (``decision: soft``, the default): one FFN forward pass centred on each seed; merge
   when the mean probability the network gives the *other* segment's voxels in that FOV is at
   least ``soft_threshold`` from both sides (forward / reverse consensus). ``decision: floods``:
   with ``F_a`` the box-limited flood from ``a``'s seed and ``A``, ``B`` the two segments'
   voxels in the box, merge when ``|F_a & B| / |B|`` and ``|F_b & A| / |A|`` are both at least
   ``agree_fraction``. Merges are joined with union-find.
4. Small objects are absorbed as in the watershed method; vessel voxels are 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class FFNAgglomerationConfig:
    #: the supervoxels: the watershed's agglomeration up to this score (1 - mean affinity); null:
    #: the watershed method's own merge_threshold, so the FFN only adds merges to it
    base_threshold: Optional[float] = None
    #: pairs scored in [base_threshold, base_threshold + band) are decided by the FFN. On a
    #: 32 x 256 x 256 demo subvolume (seed 1121) the region graph at 0.5 has ~10k edges, 2.5k of
    #: them below 0.6: every decided pair costs two floods
    band: float = 0.1
    #: local flood box (z, y, x) at the model's resolution, centred on the contact
    box_zyx: tuple[int, int, int] = (13, 33, 33)
    #: each segment's seed is its deepest voxel within this distance (z, y, x voxels) of the contact
    seed_window_zyx: tuple[int, int, int] = (1, 6, 6)
    #: both floods must cover at least this fraction of the other segment's voxels in the box
    agree_fraction: float = 0.5
    #: FOV budget of one local flood
    max_fovs_per_flood: int = 8
    #: at most this many pairs per subvolume are decided (most affine first); the rest stay apart
    max_pairs: int = 20000
    #: canvases run side by side (their FOVs share forward passes)
    parallel_floods: int = 32
    #: "soft" (default): one forward pass from each seed, merge when the mean probability the
    #: network gives the other segment's voxels in that FOV is >= soft_threshold from both sides;
    #: "floods": box-limited floods from both seeds must cover the other segment (agree_fraction).
    #: Chosen on validation crops (synth 1111, 1112; four 32 x 256 x 256 crops): floods merged
    #: almost nothing (the network stops at the boundary channel's ridges); soft 0.15 gave mean
    #: ARAND + VOI / 4 0.589 against 0.592 for 0.2, 0.599 for the watershed alone, 0.10: merges
    decision: str = "soft"
    soft_threshold: float = 0.15

    def __post_init__(self):
        if self.base_threshold is not None and not 0 < self.base_threshold < 1:
            raise ValueError("base_threshold must be null or in (0, 1)")
        if not 0 < self.band < 1:
            raise ValueError("band must be in (0, 1)")
        if len(self.box_zyx) != 3 or any(int(v) < 3 or int(v) % 2 == 0 for v in self.box_zyx):
            raise ValueError(f"box_zyx must be three odd sizes >= 3, got {list(self.box_zyx)}")
        if self.decision not in ("floods", "soft") or not 0 < self.soft_threshold < 1:
            raise ValueError("decision must be 'floods' or 'soft' and soft_threshold in (0, 1)")
        if len(self.seed_window_zyx) != 3 or min(int(v) for v in self.seed_window_zyx) < 0:
            raise ValueError(f"seed_window_zyx must be three numbers >= 0, got {list(self.seed_window_zyx)}")
        if not 0 < self.agree_fraction <= 1 or min(self.max_fovs_per_flood, self.max_pairs, self.parallel_floods) < 1:
            raise ValueError("agree_fraction must be in (0, 1]; max_fovs_per_flood, max_pairs and parallel_floods >= 1")


def contact_points(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(n, 3) int: for each (u, v) row of ``pairs`` the voxel of ``u`` or ``v`` on their shared
    6-connected face nearest the face's mean position; -1 rows where they do not touch."""
    out = np.full((len(pairs), 3), -1, np.int64)
    if not len(pairs):
        return out
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    want: dict = {}
    for a, b in zip(lo, hi):
        want.setdefault((int(a), int(b)), len(want))
    rows_of = np.array([want[(int(a), int(b))] for a, b in zip(lo, hi)])
    n_u = len(want)
    keys, pos = [], []
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        u, v = a[1:], a[:-1]
        diff = (u != v) & (u != 0) & (v != 0)
        idx = np.argwhere(diff)
        if not len(idx):
            continue
        uu, vv = u[diff], v[diff]
        k = np.stack([np.minimum(uu, vv), np.maximum(uu, vv)], 1)
        p = np.empty_like(idx)
        p[:, axis] = idx[:, 0] + 1  # the voxel on the high side of the face
        p[:, [x for x in range(3) if x != axis]] = idx[:, 1:]
        keys.append(k)
        pos.append(p)
    if not keys:
        return out
    keys, pos = np.concatenate(keys), np.concatenate(pos)
    row = np.array([want.get((int(a), int(b)), -1) for a, b in keys])
    sel = row >= 0
    row, pos = row[sel], pos[sel].astype(np.float64)
    if not len(row):
        return out
    n = np.bincount(row, minlength=n_u).astype(np.float64)
    mean = (
        np.stack([np.bincount(row, weights=pos[:, d], minlength=n_u) for d in range(3)], 1) / np.maximum(n, 1)[:, None]
    )
    dist = ((pos - mean[row]) ** 2).sum(1)
    order = np.lexsort((dist, row))
    first = np.r_[True, row[order][1:] != row[order][:-1]]
    uniq = np.full((n_u, 3), -1, np.int64)
    uniq[row[order][first]] = pos[order][first].astype(np.int64)
    return uniq[rows_of]


def _box(centre, box_zyx, shape) -> tuple[slice, ...]:
    out = []
    for c, b, n in zip(centre, box_zyx, shape):
        b = min(int(b), int(n))
        lo = int(np.clip(c - b // 2, 0, n - b))
        out.append(slice(lo, lo + b))
    return tuple(out)


def _deepest(mask: np.ndarray, voxel_nm, window: Optional[tuple[slice, ...]] = None) -> Optional[tuple[int, int, int]]:
    """The voxel of ``mask`` farthest from its border (nm), searched inside ``window`` (slices
    of ``mask``'s shape; None: everywhere); None when the window holds no voxel of ``mask``."""
    if not mask.any():
        return None
    dt = ndimage.distance_transform_edt(mask, sampling=tuple(float(v) for v in voxel_nm))
    if window is not None:
        keep = np.zeros(mask.shape, bool)
        keep[window] = True
        dt = np.where(keep, dt, 0.0)
    if not dt.max() > 0:
        return None
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dt)), mask.shape))


def decide_pairs(
    image: np.ndarray,
    labels: np.ndarray,
    pairs: np.ndarray,
    voxel_nm,
    model,
    inference,
    cfg: FFNAgglomerationConfig,
    predict,
    batch_size: int = 16,
) -> tuple[np.ndarray, dict]:
    """bool per pair row: merge? (see the module doc, steps 2-3). ``image`` (z, y, x, C) model
    input channels and ``labels`` the segments, both at the model's resolution."""
    import dataclasses

    from ffn.inference import Canvas, run_canvases

    icfg = dataclasses.replace(
        inference, min_segment_voxels=1, max_fovs_per_object=cfg.max_fovs_per_flood, concurrent_objects=1
    )
    merge = np.zeros(len(pairs), bool)
    stats = {"pairs": int(len(pairs)), "decided": 0, "merged": 0, "fovs": 0, "no_contact": 0}
    if not len(pairs):
        return merge, stats
    contacts = contact_points(labels, pairs)
    box_zyx = tuple(max(int(b), int(f)) for b, f in zip(cfg.box_zyx, model.fov_zyx))
    jobs = []
    for i, ((a, b), c) in enumerate(zip(pairs[:, :2].astype(np.uint64), contacts)):
        if c[0] < 0:
            stats["no_contact"] += 1
            continue
        box = _box(c, box_zyx, labels.shape)
        lab = labels[box]
        A, B = lab == a, lab == b
        # seeds near the contact, where a FOV centred on them fits the box (network context)
        rel = [int(v) - s.start for v, s in zip(c, box)]
        window = tuple(slice(max(0, r - w), r + w + 1) for r, w in zip(rel, cfg.seed_window_zyx))
        sa, sb = _deepest(A, voxel_nm, window), _deepest(B, voxel_nm, window)
        if sa is None or sb is None:
            stats["no_contact"] += 1
            continue
        jobs.append((i, box, A, B, sa, sb))
    if cfg.decision == "soft":
        merge[:] = _soft_decisions(image, jobs, len(pairs), model, cfg, predict, batch_size, stats)
        stats["merged"] = int(merge.sum())
        return merge, stats
    for k in range(0, len(jobs), max(1, cfg.parallel_floods // 2)):
        chunk = jobs[k : k + max(1, cfg.parallel_floods // 2)]
        canvases = []
        for _, box, _, _, sa, sb in chunk:
            img = image[box]
            ca, cb = Canvas(img, model, icfg), Canvas(img, model, icfg)
            canvases += [(ca, np.asarray([sa])), (cb, np.asarray([sb]))]
        run_canvases(canvases, predict, batch_size)
        for j, (i, _, A, B, _, _) in enumerate(chunk):
            fa, fb = canvases[2 * j][0], canvases[2 * j + 1][0]
            stats["fovs"] += fa.n_fovs + fb.n_fovs
            ra = np.count_nonzero((fa.seg > 0) & B) / max(1, np.count_nonzero(B))
            rb = np.count_nonzero((fb.seg > 0) & A) / max(1, np.count_nonzero(A))
            merge[i] = min(ra, rb) >= cfg.agree_fraction
            stats["decided"] += 1
    stats["merged"] = int(merge.sum())
    return merge, stats


def _soft_decisions(
    image, jobs, n_pairs: int, model, cfg: FFNAgglomerationConfig, predict, batch_size: int, stats: dict
) -> np.ndarray:
    """``decision: soft``: per pair, one FOV centred on each seed (clamped into the box), the seed
    logits pad everywhere but the seed voxel; merge when the mean probability over the other
    segment's voxels of that FOV is >= ``soft_threshold`` from both sides."""
    from ffn.model import PAD_PROB, SEED_PROB, logit

    r = np.asarray(model.radius_zyx)
    xs, owners = [], []
    for i, box, A, B, sa, sb in jobs:
        img = image[box]
        shape = np.asarray(A.shape)
        if np.any(shape < np.asarray(model.fov_zyx)):
            continue
        for seed_pt, other in ((sa, B), (sb, A)):
            c = np.clip(np.asarray(seed_pt), r, shape - 1 - r)
            fov = tuple(slice(int(q - rr), int(q + rr + 1)) for q, rr in zip(c, r))
            seed = np.full(tuple(model.fov_zyx), logit(PAD_PROB), np.float32)
            seed[tuple(np.asarray(seed_pt) - c + r)] = logit(SEED_PROB)
            xs.append(np.concatenate([img[fov], seed[..., None]], axis=-1))
            owners.append((i, other[fov]))
    scores: dict[int, list[float]] = {}
    for k in range(0, len(xs), batch_size):
        out = predict(np.stack(xs[k : k + batch_size]))
        for (i, other), lg in zip(owners[k : k + batch_size], out):
            p = 1.0 / (1.0 + np.exp(-lg))
            scores.setdefault(i, []).append(float(p[other].mean()) if other.any() else 0.0)
    stats["fovs"] += len(xs)
    merge = np.zeros(n_pairs, bool)
    for i, v in scores.items():
        stats["decided"] += 1
        merge[i] = len(v) == 2 and min(v) >= cfg.soft_threshold
    return merge


def join(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``labels`` with every (u, v) row of ``pairs`` joined (union-find; the smaller id survives)."""
    if not len(pairs):
        return labels
    ids = np.unique(labels)
    parent = np.arange(len(ids))
    idx = np.searchsorted(ids, pairs.astype(np.uint64))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in idx:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(x) for x in range(len(ids))])
    return ids[roots][np.searchsorted(ids, labels)]


def segment_ffn_agglomerate(
    boundary4: np.ndarray,
    raw8: np.ndarray,
    mask,
    voxel_nm,
    factor: int,
    stats,
    watershed_cfg,
    cfg: FFNAgglomerationConfig,
    inference,
    spec_and_predict,
) -> tuple[np.ndarray, dict]:
    """uint64 (z, y, x) neurons of one subvolume (full resolution) and a summary dict."""
    from ffn.data import model_resolution
    from ffn.train import stack_channels
    from ffn.watershed import absorb_small, affinities_for, agglomerate_with_graph, fragments_2d

    spec, predict = spec_and_predict
    frags = fragments_2d(np.asarray(boundary4[0], np.float32) / 255.0, watershed_cfg, mask)
    if not frags.any():
        return frags, {"pairs": 0}
    base = watershed_cfg.merge_threshold if cfg.base_threshold is None else cfg.base_threshold
    seg, graph = agglomerate_with_graph(affinities_for(boundary4, watershed_cfg), frags, base, watershed_cfg.scoring)
    cand = graph[(graph[:, 2] >= base) & (graph[:, 2] < base + cfg.band)]
    cand = cand[np.argsort(cand[:, 2], kind="stable")][: cfg.max_pairs]
    f = int(factor)
    z, h, w = raw8.shape
    pad = ((0, 0), (0, -h % f), (0, -w % f))
    image, _, _ = model_resolution(np.pad(raw8, pad, mode="edge"), None, None, f)
    bnd = model_resolution(np.pad(np.asarray(boundary4[0]), pad, mode="edge"), None, None, f)[0]
    c = f // 2
    seg_m = np.pad(seg, pad, mode="edge")[:, c::f, c::f]
    model_nm = (voxel_nm[0], voxel_nm[1] * f, voxel_nm[2] * f)
    chans = stack_channels(spec.model, stats.standardize(image), bnd if "boundary" in spec.model.channels else None)
    merge, summary = decide_pairs(
        chans, seg_m, cand, model_nm, spec.model, inference, cfg, predict, inference.batch_size
    )
    seg = join(seg, cand[merge, :2])
    seg = absorb_small(seg, watershed_cfg.min_size_voxels)
    if mask is not None:
        seg[np.asarray(mask, bool)] = 0
    return seg, summary
