"""``connectome train boundary --init MODEL_DIR --corrections WS/review/segmentation``: fine-tune
the boundary 3D U-Net on a reviewer's dense segmentation corrections.

::

    connectome train boundary --init unet/models/boundary --corrections WS/review/segmentation \\
        [--data SYNTH_DIR ...] --out NEW_MODEL [--steps N] [--config FILE.yaml]

The vessel fine-tuning (:mod:`unet.finetune`) for the boundary model; its box split
(:func:`unet.finetune_common.split_boxes`, every :data:`~unet.finetune_common.HOLDOUT_EVERY`-th box held back)
and replay share (:data:`~unet.finetune_common.REPLAY_FRACTION`) are used as they are.

* Starts from the weights of ``--init`` (a boundary model directory); the architecture, input
  pixel size and inference tiling are the init model's (``model.*`` and
  ``data.input_voxel_size_nm`` of the config are ignored).
* Examples of the corrections: (z, y, x) crops of the workspace's ``raw`` (``WS`` = the folder two
  levels above ``--corrections``) centred on a random voxel of a corrected box. The targets are
  made from the corrected segment ids exactly as :mod:`unet.boundary_data` makes them from a synth
  volume's ``neurons`` (boundary: id 0 or an in-plane neighbour with another id, max-pooled to the
  model grid; affinities: same non-zero id as the predecessor along z, y, x at the model grid,
  computed after the geometric augmentation).
* Loss weights (a second set of four channels of the target): 1 where the target is defined by
  corrected voxels only, 0 elsewhere. An affinity needs both voxels of its pair corrected (at the
  model grid, where the labels are subsampled); a model voxel's boundary needs every raw voxel of
  its ``factor x factor`` block and their four in-plane neighbours corrected (any zoom of the
  crop: every voxel it interpolates from). The voxels of held-back boxes are never corrected
  voxels of a training example.
* Class balance (:func:`class_balanced`, over the corrected examples of each batch, per
  affinity channel): the weights of the disconnected (negative) and connected (positive) pairs
  are rescaled so that the negatives carry :data:`NEGATIVE_SHARE` (0.3) of the channel's weight
  and the positives the rest (the channel's total weight is kept, 0 stays 0). Corrected segment
  ids cover the membranes, so a disconnected pair is only the one-voxel id change (5-12 % of the
  pairs of a dense crop) against 22-35 % in the synth volumes the init model was trained on
  (membranes are id 0 there; normal training, :class:`unet.boundary_train.BoundaryJob`, weights
  nothing, so 0.3 restores about the balance it saw). Unweighted, the BCE learns "connected" and
  the watershed merges (toy workspace, 150 steps: affinity balanced accuracy 0.85 -> 0.66,
  whole-volume adapted Rand error 0.10 -> 0.26); with a share of 0.5 the fine-tuned model
  splits more than the init (variation of information up) where 0.3 improves both. Replay
  examples keep weight 1. The boundary channel is not rebalanced (its soft Dice term is
  balanced already; balancing its BCE too lowered the held-back boundary Dice without helping
  the segmentation).
* Replay: with ``--data`` synth folders, :data:`~unet.finetune_common.REPLAY_FRACTION` of every batch
  comes from them (ordinary boundary examples of :class:`unet.boundary_train.BoundaryJob`,
  weight 1 everywhere; the loss is then exactly the normal training loss).
* Validation: crops tiling the held-back boxes (no augmentation), their corrected voxels only.
  The exported step is chosen by the score of normal training, the mean of the boundary Dice and
  the affinity balanced accuracy (mean of the true-positive and true-negative rates: the rare
  disconnected pairs count as much as the connected ones); the init weights, scored at step 0
  as the baseline, are never exported. The loss beside it is that of training (class-balanced
  as above). At the end the exported model runs through ``predict-boundaries``' inference path
  (:mod:`unet.infer3d`, full resolution) on the held-back boxes: boundary Dice and affinity
  balanced accuracy there, beside the init model's on the same path (the baseline).
* The model card lists the corrections (review folder, item ids, voxel counts, workspace
  identity), the init model (path + weights sha256) and the replay share.

Memory: each corrected box is held at model resolution with a context of half a crop on every
side (about 20 MB per box at the defaults).

Without ``--config`` the fine-tuning defaults of :data:`FINETUNE_DEFAULTS` apply (a lower
learning rate, a short warm-up, crops sized to review boxes, frequent validation); ``--steps``
overrides ``trainer.steps``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from connectome.errors import UserInputError
from unet.boundary_data import CHANNELS, BoundaryVolume
from unet.finetune_common import REPLAY_FRACTION, box_keep, split_boxes

log = logging.getLogger(__name__)

TASK = "boundary"
#: config overrides applied when fine-tuning without --config
FINETUNE_DEFAULTS = {
    "trainer.steps": 150,
    "trainer.learning_rate": 2e-4,
    "trainer.warmup_steps": 10,
    "trainer.validate_every": 25,
    "trainer.checkpoint_every": 25,
    "trainer.log_every": 5,
    # review boxes of segmentation are 8 x 64 x 64 raw voxels (8 x 32 x 32 at the model's 16 nm)
    "data.crop_zyx": [16, 64, 64],
    "data.val_crop_zyx": [16, 64, 64],
}
#: target channels whose corrected-example loss weights are class-balanced (:func:`class_balanced`)
BALANCED_CHANNELS = (1, 2, 3)
#: the share of a balanced channel's loss weight carried by its negative voxels (disconnected
#: pairs): about their share in the synth volumes of normal training (22-35 %)
NEGATIVE_SHARE = 0.3
#: a value interpolated from weights is 1 (defined) only if every source of it is
_DEFINED = 1.0 - 1e-6


# ---------------------------------------------------------------------------------------------
# corrected boxes as boundary volumes


@dataclasses.dataclass
class CorrectedBox:
    """One corrected box at model resolution with its context: ``vol`` (image, boundary target,
    labels) and ``weight`` (its ``image`` is the boundary weight, float32 {0, 1}) are
    :class:`unet.boundary_data.BoundaryVolume` s over the same region; the labels are the
    corrected segment ids renumbered 1.. (0 = corrected to no object) and -1 where not corrected.
    ``lo`` / ``hi``: the box in the region's model voxels."""

    item_id: str
    box: tuple[int, ...]  # z0, y0, x0, z1, y1, x1 (raw voxels)
    vol: BoundaryVolume
    weight: BoundaryVolume
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]


def boundary_weight_full_res(mask: np.ndarray, at_edge=((False, False), (False, False))) -> np.ndarray:
    """(z, y, x) bool: the voxel and its four in-plane neighbours are corrected (what
    :func:`unet.boundary_data.boundary_full_res` looks at). ``at_edge[axis - 1]``: whether the
    region's (low, high) side along y / x is the volume's face, where there is no neighbour
    (counts as corrected); elsewhere a neighbour outside the region counts as not corrected."""
    m = np.asarray(mask, bool)
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)))
    (ylo, yhi), (xlo, xhi) = at_edge
    if ylo:
        p[:, 0, :] = True
    if yhi:
        p[:, -1, :] = True
    if xlo:
        p[:, :, 0] = True
    if xhi:
        p[:, :, -1] = True
    return m & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]


def corrected_box(
    raw, labels, mask, box, factor: int, context_zyx, vs, stats, keep, item_id: str = "", path: Path = Path(".")
) -> CorrectedBox:
    """The :class:`CorrectedBox` of ``box`` (raw voxels) with ``context_zyx`` model voxels around
    it (clipped to the volume; (y, x) on the model grid of the whole volume). ``keep(region)``:
    bool (z, y, x) of the region's voxels whose corrections count (the rest are treated as not
    corrected)."""
    from unet.boundary_data import make_boundary_target
    from unet.data import downsample_mean

    f = int(factor)
    Z, H, W = (int(s) for s in raw.shape)
    z0, y0, x0, z1, y1, x1 = (int(v) for v in box)
    cz, cy, cx = (int(v) for v in context_zyx)
    rz0, rz1 = max(0, z0 - cz), min(Z, z1 + cz)
    ry0, ry1 = max(0, (y0 // f - cy) * f), min(H // f * f, (-(-y1 // f) + cy) * f)
    rx0, rx1 = max(0, (x0 // f - cx) * f), min(W // f * f, (-(-x1 // f) + cx) * f)
    sl = np.s_[rz0:rz1, ry0:ry1, rx0:rx1]
    m = (np.asarray(mask[sl]) == 1) & keep((slice(rz0, rz1), slice(ry0, ry1), slice(rx0, rx1)))
    lab = np.where(m, np.asarray(labels[sl]), 0)
    ids = np.unique(lab[lab != 0])
    lab = np.where(lab == 0, 0, np.searchsorted(ids, lab) + 1).astype(np.int64)  # small ids: same equalities
    z, h, w = lab.shape
    image = (downsample_mean(np.asarray(raw[sl]), f) / 255.0).astype(np.float32)
    boundary = make_boundary_target(lab, f)
    bw = boundary_weight_full_res(m, ((ry0 == 0, ry1 == H), (rx0 == 0, rx1 == W)))
    bw = bw.reshape(z, h // f, f, w // f, f).min(axis=(2, 4)).astype(np.float32)
    lab_m = np.where(m[:, ::f, ::f], lab[:, ::f, ::f], -1).astype(np.int64)
    meta = {"region_zyx": [rz0, ry0, rx0, rz1, ry1, rx1]}
    vol = BoundaryVolume(path, image, boundary, lab_m, tuple(vs), f, stats, meta)
    wvol = BoundaryVolume(path, bw, bw.astype(np.uint8), lab_m, tuple(vs), f, stats, meta)
    lo = (z0 - rz0, y0 // f - ry0 // f, x0 // f - rx0 // f)
    hi = (z1 - rz0, -(-y1 // f) - ry0 // f, -(-x1 // f) - rx0 // f)
    return CorrectedBox(item_id, tuple(int(v) for v in box), vol, wvol, lo, hi)


def weighted_targets(bnd: np.ndarray, bnd_weight: np.ndarray, lab: np.ndarray, margin: int = 1) -> np.ndarray:
    """(z, y, x, 8) float32: the four targets of :func:`unet.boundary_data.targets` (from the
    labels with -1 = not corrected read as 0) and their four loss weights (boundary:
    ``bnd_weight``; affinity: both voxels of the pair corrected)."""
    from unet.boundary_data import affinities_from_labels, targets

    t = targets(bnd, np.maximum(lab, 0), margin)
    aw = affinities_from_labels((lab >= 0).astype(np.int8), margin)  # 1 & 1: both corrected
    w = np.concatenate([np.asarray(bnd_weight, np.float32)[None], aw]).transpose(1, 2, 3, 0)
    return np.concatenate([t, w], axis=-1).astype(np.float32)


def crop_corrected(cb: CorrectedBox, centre, shape_zyx, scale: float = 1.0):
    """Image, boundary target, boundary weight ({0, 1} float32) and labels (with the one-voxel
    margin of :func:`unet.boundary_data.crop_example`) of a crop of a corrected box."""
    from unet.boundary_data import crop_example

    img, bnd, lab = crop_example(cb.vol, centre, shape_zyx, scale)
    w, _, _ = crop_example(cb.weight, centre, shape_zyx, scale)
    return img, bnd, (w >= _DEFINED).astype(np.float32), lab


def class_balanced(y: np.ndarray) -> np.ndarray:
    """``y`` (..., 8) (targets + {0, 1} weights of :func:`weighted_targets`, any leading shape:
    an example or a batch of them) with the weights of each of :data:`BALANCED_CHANNELS` rescaled
    so that its negative voxels (target < 0.5) carry :data:`NEGATIVE_SHARE` of the channel's
    weight and its positive ones the rest; the sum of each channel's weights is kept, a weight 0
    stays 0, and a channel with one class only (or not balanced) is left as it is."""
    out = np.array(y, np.float32, copy=True)
    for c in BALANCED_CHANNELS:
        w, pos = out[..., 4 + c], out[..., c] >= 0.5
        total, n_pos = float(w.sum()), float(w[pos].sum())
        n_neg = total - n_pos
        if n_pos > 0 and n_neg > 0:
            q = NEGATIVE_SHARE
            out[..., 4 + c] = np.where(pos, w * ((1 - q) * total / n_pos), w * (q * total / n_neg))
    return out


def weighted_boundary_loss(y, logits, cfg):
    """The boundary training loss (boundary: BCE + soft Dice of ``cfg.loss``; affinities: BCE x
    ``cfg.affinity_loss_weight``) of target channels 0-3 weighted by channels 4-7 (0 = ignore;
    the BCEs use the weights as they are, the soft Dice only whether they are > 0). With all
    weights 1 it is :meth:`unet.boundary_train.BoundaryJob.loss`."""
    import tensorflow as tf

    from unet.losses import bce, soft_dice_loss

    w = y[..., 4:5]
    total = tf.constant(0.0, logits.dtype)
    if cfg.loss.bce_weight:
        total += cfg.loss.bce_weight * bce(y[..., :1], logits[..., :1], w, cfg.loss.pos_weight)
    if cfg.loss.dice_weight:  # the soft Dice sees the corrected voxels unweighted (it is balanced already)
        mask = tf.cast(w > 0, logits.dtype)
        total += cfg.loss.dice_weight * soft_dice_loss(y[..., :1], logits[..., :1], mask, cfg.loss.dice_smooth)
    if cfg.affinity_loss_weight:
        total += cfg.affinity_loss_weight * bce(y[..., 1:4], logits[..., 1:], weight=y[..., 5:8])
    return total


def _weighted_bce(sums: dict[str, float], c: int) -> float:
    """Mean BCE of channel ``c`` weighted as in training (:func:`class_balanced` for
    :data:`BALANCED_CHANNELS`), from the per-class sums of validation."""
    if c not in BALANCED_CHANNELS:
        return (sums[f"bce_pos{c}"] + sums[f"bce_neg{c}"]) / max(1.0, sums[f"w_pos{c}"] + sums[f"w_neg{c}"])
    shares = {"pos": 1.0 - NEGATIVE_SHARE, "neg": NEGATIVE_SHARE}
    parts = [(shares[k], sums[f"bce_{k}{c}"] / sums[f"w_{k}{c}"]) for k in shares if sums[f"w_{k}{c}"] > 0]
    return sum(q * m for q, m in parts) / sum(q for q, _ in parts) if parts else 0.0


def _jitter(st, rng, j: float):
    from unet.data import IntensityStats

    if not j:
        return st
    shift = float(rng.normal(0, j)) * (st.p95 - st.p5)
    grow = float(np.exp(rng.normal(0, j)))
    return IntensityStats(
        st.p50 + shift - (st.p50 - st.p5) * grow, st.p50 + shift, st.p50 + shift + (st.p95 - st.p50) * grow
    )


def _tiles(lo: int, hi: int, n: int) -> list[int]:
    """Centres of non-overlapping crops of ``n`` covering ``[lo, hi)``, centred on it."""
    k = max(1, -(-(hi - lo) // n))
    start = (lo + hi) // 2 - k * n // 2
    return [start + i * n + n // 2 for i in range(k)]


class BoundaryFinetuneJob:
    """:class:`connectome.training.loop.TrainJob` for fine-tuning the boundary U-Net."""

    #: the mean of boundary Dice and affinity balanced accuracy on the held-back corrected voxels
    #: (the score of normal training, :class:`unet.boundary_train.BoundaryJob`)
    score_key: Optional[str] = "score"

    def __init__(self, cfg, init_spec, train_boxes, val_boxes, replay, fingerprint: dict, fresh: bool = True):
        from unet.boundary_train import BoundaryJob

        self.cfg, self.init_spec = cfg, init_spec
        self.train_boxes, self.val_boxes = list(train_boxes), list(val_boxes)
        self.replay = BoundaryJob(cfg, replay, [], fingerprint) if replay else None
        self._fingerprint = fingerprint
        vz, vy, vx = cfg.data.val_crop_zyx
        self.val_specs = [
            (i, (z, y, x))
            for i, cb in enumerate(self.val_boxes)
            for z in _tiles(cb.lo[0], cb.hi[0], vz)
            for y in _tiles(cb.lo[1], cb.hi[1], vy)
            for x in _tiles(cb.lo[2], cb.hi[2], vx)
        ]
        self._predict: Any = None
        #: a fresh run validates the init weights first (step 0): a baseline, never the exported step
        self._baseline_pending = fresh and cfg.trainer.validate_every > 0

    def fingerprint(self) -> dict:
        return self._fingerprint

    def build_model(self):
        from connectome.training import weights as wio
        from unet.model import build_unet
        from unet.modeldir import load_weights

        model = build_unet(self.cfg.model, name="boundary_unet")
        wio.assign(model.weights, load_weights(self.init_spec))
        return model

    def loss(self, y_true, logits):
        return weighted_boundary_loss(y_true, logits, self.cfg)

    # -- examples
    def corrected_example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        from unet.boundary_data import augment
        from unet.data import adjust_stats

        d = self.cfg.data
        cb = self.train_boxes[int(rng.integers(len(self.train_boxes)))]
        centre = tuple(int(rng.integers(a, b)) for a, b in zip(cb.lo, cb.hi))
        lo, hi = d.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
        img, bnd, bw, lab = crop_corrected(cb, centre, d.crop_zyx, scale)
        # the boundary weight rides along with the boundary target (both are transformed as images)
        img, bnd2, lab, g, noise = augment(
            img, np.stack([bnd, bw], axis=-1), lab, rng, self.cfg.augment, d.section_shift_prob, d.section_shift_px
        )
        st = _jitter(adjust_stats(cb.vol.stats, g, noise), rng, d.stats_jitter)
        return st.standardize(img)[..., None], weighted_targets(bnd2[..., 0], bnd2[..., 1], lab)

    def replay_example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        assert self.replay is not None
        x, y = self.replay.example(rng)
        return x, np.concatenate([y, np.ones_like(y)], axis=-1).astype(np.float32)

    def batch(self, step: int, rank: int, size: int, batch_size: int):
        rng = np.random.default_rng([self.cfg.trainer.seed, step, rank])
        n_replay = int(round(batch_size * REPLAY_FRACTION)) if self.replay else 0
        pairs = [self.replay_example(rng) if i < n_replay else self.corrected_example(rng) for i in range(batch_size)]
        y = np.stack([p[1] for p in pairs]).astype(np.float32)
        if n_replay < batch_size:  # class-balanced weights over the batch's corrected examples
            y[n_replay:] = class_balanced(y[n_replay:])
        return np.stack([p[0] for p in pairs]), y

    # -- validation on the held-back boxes (their corrected voxels only)
    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        import tensorflow as tf

        if self._predict is None:
            self._predict = tf.function(lambda x: tf.sigmoid(model(x, training=False)), reduce_retracing=True)
        keys = "b_w b_pt b_p b_t b_inter b_pred b_true a_tp a_pos a_tn a_neg"
        keys += "".join(f" bce_pos{c} w_pos{c} bce_neg{c} w_neg{c}" for c in range(4))
        sums = {k: 0.0 for k in keys.split()}
        pw = float(self.cfg.loss.pos_weight)
        for i, centre in self.val_specs[shard::num_shards]:
            cb = self.val_boxes[i]
            img, bnd, bw, lab = crop_corrected(cb, centre, self.cfg.data.val_crop_zyx)
            y = weighted_targets(bnd, bw, lab)
            x = cb.vol.stats.standardize(img)[None, ..., None]
            p = np.clip(self._predict(tf.convert_to_tensor(x)).numpy()[0].astype(np.float64), 1e-7, 1 - 1e-7)
            t, w = y[..., :4].astype(np.float64), y[..., 4:].astype(np.float64)
            per = -(pw * t * np.log(p) + (1 - t) * np.log(1 - p))
            for c in range(4):  # per class, for the class-balanced loss of training
                pos = t[..., c] >= 0.5
                sums[f"bce_pos{c}"] += float(np.sum(per[..., c] * w[..., c] * pos))
                sums[f"w_pos{c}"] += float(np.sum(w[..., c] * pos))
                sums[f"bce_neg{c}"] += float(np.sum(per[..., c] * w[..., c] * ~pos))
                sums[f"w_neg{c}"] += float(np.sum(w[..., c] * ~pos))
            sums["b_w"] += float(w[..., 0].sum())
            sums["b_pt"] += float(np.sum(p[..., 0] * t[..., 0] * w[..., 0]))
            sums["b_p"] += float(np.sum(p[..., 0] * w[..., 0]))
            sums["b_t"] += float(np.sum(t[..., 0] * w[..., 0]))
            m = w >= 0.5
            pb, tb = (p >= 0.5) & m, (t >= 0.5) & m
            sums["b_inter"] += float(np.count_nonzero(pb[..., 0] & tb[..., 0]))
            sums["b_pred"] += float(np.count_nonzero(pb[..., 0]))
            sums["b_true"] += float(np.count_nonzero(tb[..., 0]))
            sums["a_tp"] += float(np.count_nonzero(pb[..., 1:] & tb[..., 1:]))
            sums["a_pos"] += float(np.count_nonzero(tb[..., 1:]))
            sums["a_tn"] += float(np.count_nonzero(~pb[..., 1:] & ~tb[..., 1:] & m[..., 1:]))
            sums["a_neg"] += float(np.count_nonzero(~tb[..., 1:] & m[..., 1:]))
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        c = self.cfg
        loss = 0.0
        if c.loss.bce_weight:
            loss += c.loss.bce_weight * _weighted_bce(sums, 0)
        if c.loss.dice_weight:
            s = c.loss.dice_smooth
            loss += c.loss.dice_weight * (1.0 - (2 * sums["b_pt"] + s) / (sums["b_p"] + sums["b_t"] + s))
        if c.affinity_loss_weight:
            mass = [sums[f"w_pos{k}"] + sums[f"w_neg{k}"] for k in (1, 2, 3)]
            aff = sum(m * _weighted_bce(sums, k) for k, m in zip((1, 2, 3), mass))
            loss += c.affinity_loss_weight * aff / max(1.0, sum(mass))
        den = sums["b_pred"] + sums["b_true"]
        dice = 2 * sums["b_inter"] / den if den else 1.0
        tpr = sums["a_tp"] / sums["a_pos"] if sums["a_pos"] else 1.0
        tnr = sums["a_tn"] / sums["a_neg"] if sums["a_neg"] else 1.0
        # the score of unet.boundary_train.BoundaryJob: both classes of the affinities count alike
        score = float("nan") if self._baseline_pending else 0.5 * (dice + 0.5 * (tpr + tnr))
        self._baseline_pending = False
        return {
            "loss": loss,
            "boundary_dice": dice,
            "affinity_tpr": tpr,
            "affinity_tnr": tnr,
            "affinity_balanced_accuracy": 0.5 * (tpr + tnr),
            "weighted_voxels": sums["b_w"],
            "score": score,
        }


def apply_boundary_init(cfg, spec):
    """The config with the init model's architecture, input pixel size and inference tiling."""
    inf = spec.doc.get("inference", {})
    try:
        return dataclasses.replace(
            cfg,
            model=spec.unet,
            data=dataclasses.replace(cfg.data, input_voxel_size_nm=float(spec.voxel_size_nm_yx)),
            inference_tile_zyx=tuple(int(v) for v in inf.get("tile_zyx", cfg.inference_tile_zyx)),
            inference_margin_zyx=tuple(int(v) for v in inf.get("margin_zyx", cfg.inference_margin_zyx)),
        )
    except ValueError as exc:
        raise UserInputError(f"--config: {exc} (with the architecture of --init {spec.path})") from None


def final_validation_boxes(model_dir: Path, raw, vs, labels, mask, boxes, stats) -> dict:
    """Boundary Dice and affinity balanced accuracy on the corrected voxels of ``boxes`` through
    ``predict-boundaries``' inference path (:func:`unet.infer3d.predict_box3d`: global tile grid,
    full resolution, bilinear (y, x) upsampling). The targets and weights are those of training
    (model grid), each raw voxel taking its model voxel's."""
    from unet.boundary import BoundaryConfig, read_spec
    from unet.infer3d import Predictor3D, TileGeometry3D, predict_box3d, resolve_tiling
    from unet.modeldir import build_model

    t0 = time.perf_counter()
    spec = read_spec(Path(model_dir))
    f, tile, margin = resolve_tiling(spec, model_dir, raw.shape, vs, (), (), "final validation", "train boundary")
    predictor = Predictor3D(build_model(spec), 1, 1)
    geom = TileGeometry3D(f, tile, margin)
    keys = ("b_inter", "b_pred", "b_true", "a_tp", "a_pos", "a_tn", "a_neg", "voxels")
    sums = dict.fromkeys(keys, 0)
    for k, b in enumerate(boxes):  # a voxel in several boxes counts once
        cb = corrected_box(raw, labels, mask, b, f, (1, 1, 1), vs, stats, box_keep([b], boxes[:k]))
        z0, y0, x0, z1, y1, x1 = cb.box
        rz0, ry0, rx0 = cb.vol.meta["region_zyx"][:3]
        lab = np.pad(cb.vol.labels, 1, constant_values=-1)  # outside the region: not corrected
        y = weighted_targets(cb.vol.boundary.astype(np.float32), cb.weight.image, lab)
        y = y.repeat(f, axis=1).repeat(f, axis=2)[z0 - rz0 : z1 - rz0, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
        prob = predict_box3d(raw, predictor, geom, stats, b[:3], b[3:], 4, BoundaryConfig().no_data_value)
        p = np.moveaxis(prob, 0, -1)[: y.shape[0], : y.shape[1], : y.shape[2]] >= 128
        t, w = y[..., :4] >= 0.5, y[..., 4:] >= 0.5
        pb, tb = p & w, t & w
        sums["b_inter"] += int(np.count_nonzero(pb[..., 0] & tb[..., 0]))
        sums["b_pred"] += int(np.count_nonzero(pb[..., 0]))
        sums["b_true"] += int(np.count_nonzero(tb[..., 0]))
        sums["a_tp"] += int(np.count_nonzero(pb[..., 1:] & tb[..., 1:]))
        sums["a_pos"] += int(np.count_nonzero(tb[..., 1:]))
        sums["a_tn"] += int(np.count_nonzero(~p[..., 1:] & ~t[..., 1:] & w[..., 1:]))
        sums["a_neg"] += int(np.count_nonzero(~t[..., 1:] & w[..., 1:]))
        sums["voxels"] += int(np.count_nonzero(w[..., 0]))
    den = sums["b_pred"] + sums["b_true"]
    tpr = sums["a_tp"] / sums["a_pos"] if sums["a_pos"] else 1.0
    tnr = sums["a_tn"] / sums["a_neg"] if sums["a_neg"] else 1.0
    return {
        "boundary_dice": round(2 * sums["b_inter"] / den, 5) if den else None,
        "affinity_tpr": round(tpr, 5),
        "affinity_tnr": round(tnr, 5),
        "affinity_balanced_accuracy": round(0.5 * (tpr + tnr), 5),
        "boundary_voxels_scored": sums["voxels"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def write_model_card(model_dir: str | Path) -> Path:
    """The boundary model card (:func:`unet.boundary_train.write_model_card`) with a section on
    the fine-tuning (init model, corrections, replay) and the held-back validation."""
    from unet.boundary_train import write_model_card as boundary_card

    p = Path(model_dir)
    path = boundary_card(p)
    doc = json.loads((p / "model.json").read_text())
    ft, v = doc.get("fine_tuning"), doc.get("validation", {})
    if not ft:
        return path
    c, i = ft["corrections"], ft["init"]
    ws = c.get("workspace") or {}
    vox = c.get("voxels") or {}
    section = [
        "## Fine-tuning on reviewed corrections",
        "",
        f"- Init model: `{i.get('portable_path') or i['path']}` (weights sha256 `{i['weights_sha256']}`).",
        f"- Corrections: `{c['review_dir']}` (import `{c.get('import_id')}`, queue strategy {c.get('strategy')}), "
        f"{len(c['item_ids'])} corrected box(es): {vox.get('corrected')} corrected voxels, "
        f"{vox.get('foreground')} of them in a segment.",
        f"  - trained on: {', '.join(map(str, c['train_item_ids']))}",
        f"  - held back for validation: {', '.join(map(str, c['validation_item_ids']))}",
        f"- Workspace: `{ws.get('path')}` (fingerprint `{ws.get('fingerprint')}`).",
        f"- Replay of the synth folders above: {ft['replay_fraction']:.0%} of each batch when any are given. "
        "Loss weight 0 wherever a target is not defined by corrected voxels alone (an affinity: both voxels "
        "of the pair; the boundary: the voxel block and its in-plane neighbours).",
        *(
            [
                f"- Class balance: in the corrected examples of each batch, the disconnected pairs of each of "
                f"{', '.join(cb['channels'])} carry {cb['negative_share']:.0%} of its loss weight and the connected "
                "ones the rest (disconnected pairs are only a few % of a densely labelled crop, about a quarter of "
                "the synth training data); the other channels and the replay examples are weighted as in normal "
                "training."
            ]
            if (cb := ft.get("class_balance"))
            else []
        ),
        "- Checkpoint choice: the highest mean of boundary Dice and affinity balanced accuracy on the corrected "
        "voxels of the held-back boxes (below); the init weights (step 0) are the baseline, never exported.",
        "",
    ]
    val = []
    crops = v.get("corrected_boxes_crops") or {}
    if crops:
        val.append(
            f"- Held-back boxes, crops at model resolution (step {doc['weights'].get('from_step')}, corrected "
            f"voxels only): loss {crops.get('loss', float('nan')):.4f}, boundary Dice "
            f"{crops.get('boundary_dice', float('nan')):.4f}, affinity balanced accuracy "
            f"{crops.get('affinity_balanced_accuracy', float('nan')):.4f}."
        )
    fin, base = v.get("corrected_boxes") or {}, v.get("corrected_boxes_init") or {}
    if fin:
        val.append(
            f"- Held-back boxes through `predict-boundaries`' inference path (full resolution, corrected voxels "
            f"only): boundary Dice {fin.get('boundary_dice')}, affinity balanced accuracy "
            f"{fin.get('affinity_balanced_accuracy')} (TPR {fin.get('affinity_tpr')}, TNR {fin.get('affinity_tnr')})"
            + (
                f"; the init model there: boundary Dice {base.get('boundary_dice')}, affinity balanced accuracy "
                f"{base.get('affinity_balanced_accuracy')} (TPR {base.get('affinity_tpr')}, TNR "
                f"{base.get('affinity_tnr')})."
                if base
                else "."
            )
        )
    text = path.read_text().replace(
        "trained on synthetic data only, with strong augmentation.",
        "trained on synthetic data with strong augmentation, then fine-tuned on the reviewed corrections above.",
    )
    head, sep, tail = text.partition("## Validation\n\n")
    if not sep:
        head, tail = text.rstrip("\n") + "\n\n", ""
        sep = "## Validation\n\n"
    path.write_text(head + "\n".join(section) + "\n" + sep + "".join(x + "\n" for x in val) + tail)
    return path


def finetune_boundary(
    init_dir,
    corrections_dir,
    data_dirs: Sequence,
    out_dir,
    cfg,
    restart: bool = False,
    overwrite: bool = False,
    command: Optional[Sequence[str]] = None,
) -> dict:
    """Fine-tune the boundary model ``init_dir`` on the segmentation corrections of
    ``corrections_dir`` (+ replay of ``data_dirs``) into ``out_dir`` (atomic export, refused if
    finished unless ``overwrite``); returns a summary."""
    from connectome.training import weights as wio
    from connectome.training.distributed import horovod_session
    from connectome.training.export import check_out_dir, run_summary, staged_model_dir
    from unet.boundary_data import load_boundary_volume
    from unet.boundary_train import _NOT_TRAINING
    from unet.data import intensity_stats, model_factor
    from unet.finetune_common import (
        corrections_record,
        dense_corrections,
        finetune_fingerprint,
        finetuned_doc,
        init_record,
        review_workspace,
        run_finetune,
    )
    from unet.modeldir import read_model_dir, write_model_dir
    from unet.train import _check_folders, _describe, training_record

    out = check_out_dir(out_dir, overwrite)
    if not Path(init_dir).exists():
        raise UserInputError(f"--init {init_dir}: not found (a boundary model directory, e.g. unet/models/boundary)")
    spec = read_model_dir(init_dir, task=TASK, ndim=3, what="--init", out_channels=4)
    corr_dir, ws_path, ws = review_workspace(corrections_dir, "segmentation")
    corr, boxes, ids = dense_corrections(corr_dir, ws, "segmentation", "boundary")
    voxels = corr.meta.get("voxels", {})
    tr, va = split_boxes(len(boxes))
    data = [Path(d) for d in data_dirs]
    _check_folders(data, [])
    cfg = apply_boundary_init(cfg, spec)
    d = cfg.data
    raw = ws.require_complete("raw", "train boundary --corrections")
    vs = tuple(float(v) for v in ws.voxel_size_nm)
    if abs(vs[1] - vs[2]) > 1e-6 * vs[1]:
        raise UserInputError(f"workspace {ws_path}: train boundary needs square pixels, voxel size is {list(vs)} nm")
    factor = model_factor(d.input_voxel_size_nm, vs[1], f"--init {init_dir} for workspace {ws_path}")
    stats = intensity_stats(raw, factor)  # the workspace's, as predict-boundaries uses
    crop_half = [
        max(a * (1 if k == 0 else max(1.0, d.scale_range[1])), b) / 2
        for k, (a, b) in enumerate(zip(d.crop_zyx, d.val_crop_zyx))
    ]
    context = (math.ceil(crop_half[0]) + 2, *(math.ceil(h) + d.section_shift_px + 2 for h in crop_half[1:]))
    val_boxes = [boxes[i] for i in va]

    def box_volume(i: int, keep) -> CorrectedBox:
        return corrected_box(raw, corr.labels, corr.mask, boxes[i], factor, context, vs, stats, keep, ids[i], ws_path)

    train_cb = [box_volume(i, box_keep([], val_boxes)) for i in tr]
    # a voxel in several held-back boxes counts once
    val_cb = [box_volume(i, box_keep([boxes[i]], val_boxes[:k])) for k, i in enumerate(va)]
    record = corrections_record(corr_dir, corr.meta, corr.review, ids, tr, va, voxels=voxels)
    init_rec = init_record(init_dir, spec)
    fingerprint = finetune_fingerprint("boundary-finetune", cfg, _NOT_TRAINING, init_rec, record, data)
    tcfg = cfg.trainer
    summary: dict = {}
    with horovod_session(tcfg.distributed, tcfg.intra_op_threads, tcfg.inter_op_threads) as s:
        replay = [load_boundary_volume(p, d.input_voxel_size_nm, "--data") for p in data]
        fresh = restart or not (out / "train" / "checkpoints" / "checkpoint").is_file()
        job = BoundaryFinetuneJob(cfg, spec, train_cb, val_cb, replay, fingerprint, fresh=fresh)
        what = f"{len(tr)} corrected box(es) ({len(va)} held back) from {init_dir}"
        result, stopped = run_finetune(job, tcfg, out, s, restart, what, ws_path, len(replay))
        if stopped:
            return stopped
        if s.is_root:
            assert result.weights_file is not None
            arrays = wio.load_npz(result.weights_file)
            training = training_record(result, cfg, out, command, [_describe(p) for p in data], [])
            doc = finetuned_doc(spec.doc, arrays, result, training, init_rec, record)
            doc["fine_tuning"]["class_balance"] = {
                "channels": [CHANNELS[c] for c in BALANCED_CHANNELS],
                "negative_share": NEGATIVE_SHARE,
            }
            doc["validation"] = {"corrected_boxes_crops": result.best_metrics or result.last_metrics}
            with staged_model_dir(out) as tmp:
                write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                for key, model_dir in (("corrected_boxes", tmp), ("corrected_boxes_init", spec.path)):
                    doc["validation"][key] = final_validation_boxes(
                        model_dir, raw, vs, corr.labels, corr.mask, val_boxes, stats
                    )
                write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                write_model_card(tmp)
            summary = run_summary(out, result, doc["training"]["seconds"], doc["validation"])
            v, v0 = doc["validation"]["corrected_boxes"], doc["validation"]["corrected_boxes_init"]
            if v.get("boundary_dice") is not None:
                summary["headline"] = (
                    f"; held-back boxes boundary Dice {v['boundary_dice']:.4f} (init {v0['boundary_dice']:.4f}), "
                    f"affinity balanced accuracy {v['affinity_balanced_accuracy']:.4f} "
                    f"(init {v0['affinity_balanced_accuracy']:.4f})"
                )
        s.barrier()
    return summary
