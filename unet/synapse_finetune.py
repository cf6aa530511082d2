"""``connectome train synapse --init MODEL_DIR --corrections WS/review/synapses``: fine-tune a
synapse model on a reviewer's decisions (issue 23).

::

    connectome train synapse --init unet/models/synapse --corrections WS/review/synapses \
        [--data SYNTH_DIR ...] --out NEW_MODEL [--steps N] [--config FILE.yaml]

A synapse review is decisions, not painted voxels: per queued item ``accept`` / ``reject`` /
``missed`` (``decisions.csv``, the latest row of an item counts) and, for ``missed``, points where
the missed synapses are (``points.csv``). Each decided item becomes sparse cleft labels inside its
box (full resolution; 1 cleft, 0 no cleft, unknown elsewhere) from the model's own
``synapse_prob`` at review time (``p``; ``t`` = the stage's threshold, ``lo`` = ``max(0.05, t -
0.2)``; components are 26-connected, inside the box):

=====================  ==========  ==========================================================
kind                   decision    labels
=====================  ==========  ==========================================================
``detection``          accept      the detection is a synapse and the box is right: cleft =
                                   ``p >= t``, no cleft elsewhere in the box (a 2-pixel ring
                                   around the cleft is left unknown)
``detection``          reject      a false detection: no cleft where ``p >= lo`` (+ 2 pixels)
``missed-candidate``   accept      the model is right, nothing there: as a rejected detection
``missed-candidate``   reject      the sub-threshold signal is a synapse: cleft = ``p >= lo``
any                    missed      (nothing from the decision itself)
=====================  ==========  ==========================================================

and on top, whatever the decision, a cleft at each missed point of the item (``points.csv``):
the ``p >= lo`` component within 3 pixels of it, else the segment interface (the membrane
between two segments of ``segmentation``) within 120 nm in the point's section and its
neighbours, else a disc of 4 pixels (a 2-pixel ring around it unknown).

At the model's resolution a voxel is a cleft where any of its raw voxels is, known where all
are (or it is a cleft), and the cleft is thickened to the training band (``data.cleft_radius_nm``)
exactly as :func:`unet.synapse_data.make_targets` does. The post/pre channels get no labels
from a review (weight 0): with ``--data`` synth folders, :data:`REPLAY_FRACTION` of every batch
replays ordinary synapse examples (all channels, weight 1), so they are kept.

* Starts from the weights of ``--init``; the architecture, input pixel size, inference tiling,
  threshold and minimum size are the init model's.
* Examples of the review: crops of the workspace's ``raw`` centred (with the usual jitter) in a
  decided item's box, augmented as in training.
* Validation: every :data:`HOLDOUT_EVERY`-th decided item (at least one) is held back; the
  weighted cleft BCE on its labelled voxels picks the exported step (the init weights, scored
  at step 0 as the baseline, are never exported). At the end the exported model and the init
  model run through the stage's inference and detection rule on each held-back item's region,
  and the item-level agreement with the decisions is reported (an item "has a synapse" when its
  decision says so; the model "finds" one when a detection lies in the box).
* The model card lists the review (folder, items, decisions, points) and the init model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from connectome.errors import UserInputError
from unet.finetune_common import REPLAY_FRACTION, split_boxes
from unet.synapse_data import SynapseVolume
from unet.synapse_train import SynapseJob

log = logging.getLogger(__name__)

TASK = "synapse"
#: config overrides applied when fine-tuning without --config
FINETUNE_DEFAULTS = {
    "trainer.steps": 400,
    "trainer.learning_rate": 3e-4,
    "trainer.warmup_steps": 20,
    "trainer.validate_every": 50,
    "trainer.checkpoint_every": 50,
    "trainer.log_every": 10,
}
#: in-plane pixels around a cleft (or a rejected signal) whose label is left unknown
RING_PX = 2
#: a missed point takes the sub-threshold component within this many pixels of it
SNAP_PX = 3
#: lateral reach (nm) of the segment interface that stands for a missed cleft
INTERFACE_RADIUS_NM = 120.0
DISC_PX = 4
#: decisions that say "a synapse is in this item's box"
_POSITIVE = {("detection", "accept"), ("missed-candidate", "reject")}


@dataclass
class ReviewedItem:
    item_id: str
    kind: str
    decision: str
    box: tuple[int, int, int, int, int, int]
    points: list
    #: (z, y, x) uint8 over the box: 1 cleft, 0 no cleft, 255 unknown
    labels: np.ndarray

    @property
    def has_synapse(self) -> bool:
        return (self.kind, self.decision) in _POSITIVE or bool(self.points)


def _ring(mask: np.ndarray, px: int = RING_PX) -> np.ndarray:
    if not mask.any():
        return mask
    return ndi.binary_dilation(mask, structure=np.ones((1, 2 * px + 1, 2 * px + 1), bool))


def _components(mask: np.ndarray):
    return ndi.label(mask, structure=np.ones((3, 3, 3), bool))


def point_cleft(p_local, lo: np.ndarray, seg: Optional[np.ndarray], vs) -> np.ndarray:
    """The cleft voxels that stand for a missed synapse at ``p_local`` (box coordinates)."""
    z, y, x = (int(v) for v in p_local)
    lab, n = _components(lo)
    if n:
        zs, ys, xs = (
            slice(max(0, z - 1), z + 2),
            slice(max(0, y - SNAP_PX), y + SNAP_PX + 1),
            slice(max(0, x - SNAP_PX), x + SNAP_PX + 1),
        )
        near = np.unique(lab[zs, ys, xs])
        near = near[near != 0]
        if len(near):
            return np.isin(lab, near)
    shape = lo.shape
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r_px = INTERFACE_RADIUS_NM / float(vs[1])
    near_pt = (np.abs(zz - z) <= 1) & ((yy - y) ** 2 + (xx - x) ** 2 <= r_px**2)
    if seg is not None:
        edge = np.zeros(shape, bool)
        edge[:, 1:] |= seg[:, 1:] != seg[:, :-1]
        edge[:, :-1] |= seg[:, 1:] != seg[:, :-1]
        edge[:, :, 1:] |= seg[:, :, 1:] != seg[:, :, :-1]
        edge[:, :, :-1] |= seg[:, :, 1:] != seg[:, :, :-1]
        cand = edge & near_pt
        if cand.any():
            return cand
    return (np.abs(zz - z) <= 1) & ((yy - y) ** 2 + (xx - x) ** 2 <= DISC_PX**2)


def item_labels(kind: str, decision: str, points, prob_box: np.ndarray, seg_box, t: float, vs) -> np.ndarray:
    """Sparse cleft labels of one decided item (module doc's table), the missed points on top."""
    t8 = max(1, int(round(255 * t)))
    lo8 = max(1, int(round(255 * max(0.05, t - 0.2))))
    hi, lo = prob_box >= t8, prob_box >= lo8
    lab = np.full(prob_box.shape, 255, np.uint8)
    if (kind, decision) == ("detection", "accept"):
        lab[:] = 0
        lab[_ring(hi)] = 255
        lab[hi] = 1
    elif (kind, decision) == ("missed-candidate", "reject"):
        lab[lo] = 1
    elif decision in ("accept", "reject"):  # a rejected detection, or an accepted "nothing here"
        lab[_ring(lo)] = 0
    for p in points:
        c = point_cleft(p, lo, seg_box, vs)
        lab[_ring(c) & (lab != 1)] = 255
        lab[c] = 1
    return lab


def reviewed_items(ws, folder: Path, threshold: float) -> list[ReviewedItem]:
    """Every decided item of the review folder with its labels, in queue order."""
    from connectome.review.decisions import latest_decisions, missed_points
    from connectome.review.queue import QUEUE, check_identity, read_queue, read_review_json

    meta = read_review_json(folder)
    check_identity(meta.get("workspace"), ws, str(folder / "review.json"))
    if meta.get("target") != "synapses":
        raise UserInputError(
            f"--corrections {folder}: a review of {meta.get('target')}; train synapse needs WS/review/synapses"
        )
    items = read_queue(folder / QUEUE)
    ws_path = Path(ws.path)
    latest = latest_decisions(ws_path, "synapses")
    points = missed_points(ws_path, "synapses")
    prob = ws.require_complete("synapse_prob", "train synapse --corrections")
    seg = ws.require_complete("segmentation", "train synapse --corrections") if ws.has("segmentation") else None
    vs = tuple(float(v) for v in ws.voxel_size_nm)
    out = []
    for it in items:
        row = latest.get(it.item_id)
        if row is None:
            continue
        sl = it.slices
        pts = [tuple(int(c) - b for c, b in zip(p, it.begin_zyx)) for p in points.get(it.item_id, [])]
        prob_box = np.asarray(prob[sl])
        seg_box = np.asarray(seg[sl]) if seg is not None else None
        lab = item_labels(it.kind, row["decision"], pts, prob_box, seg_box, threshold, vs)
        out.append(ReviewedItem(it.item_id, it.kind, row["decision"], it.box, pts, lab))
    return out


def item_volume(raw, item: ReviewedItem, factor: int, context_zyx, vs, stats, cleft_radius_nm: float) -> SynapseVolume:
    """A :class:`SynapseVolume` of the item's region (its box + ``context_zyx`` model voxels,
    on the workspace's factor grid) with 6 target channels: cleft, post, pre (0) and their loss
    weights (cleft: where labelled; post, pre: 0)."""
    from unet.data import downsample_mean

    shape = raw.shape
    b0, b1 = np.asarray(item.box[:3]), np.asarray(item.box[3:])
    ctx = np.asarray([context_zyx[0], context_zyx[1] * factor, context_zyx[2] * factor])
    lo = np.maximum(0, b0 - ctx)
    hi = np.minimum(np.asarray(shape), b1 + ctx)
    lo[1:] = lo[1:] // factor * factor
    hi[1:] = lo[1:] + (hi[1:] - lo[1:]) // factor * factor
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    img = downsample_mean(np.asarray(raw[region]), factor) / 255.0
    lab = np.full(tuple(int(v) for v in hi - lo), 255, np.uint8)
    inner = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(b0, b1, lo))
    lab[inner] = item.labels
    z, h, w = lab.shape
    blocks = lab.reshape(z, h // factor, factor, w // factor, factor)
    pos = (blocks == 1).any(axis=(2, 4))
    known = (blocks != 255).all(axis=(2, 4)) | pos
    target = np.zeros((6,) + pos.shape, np.uint8)
    if pos.any():
        sampling = (float(vs[0]), float(vs[1]) * factor, float(vs[2]) * factor)
        band = ndi.distance_transform_edt(~pos, sampling=sampling) <= cleft_radius_nm + 1e-6
        target[0] = band
        known |= band
    target[3] = known
    box_model = np.zeros(pos.shape, bool)
    box_model[
        inner[0],
        inner[1].start // factor : -(-inner[1].stop // factor),
        inner[2].start // factor : -(-inner[2].stop // factor),
    ] = True
    return SynapseVolume(
        Path(item.item_id),
        img.astype(np.float32),
        target,
        vs,
        factor,
        stats,
        {"item_id": item.item_id, "region_begin": [int(v) for v in lo]},
        np.argwhere(box_model).astype(np.int64),
        int(item.has_synapse),
    )


def weighted_synapse_loss(y, logits, cfg):
    """Per channel the combined loss weighted by its weight channel (``y``: 3 targets + 3 weights)."""
    from unet.losses import combined_loss

    weights = (1.0, cfg.post_loss_weight, cfg.pre_loss_weight)
    n = cfg.model.out_channels
    return sum(
        w * combined_loss(y[..., i : i + 1], logits[..., i : i + 1], cfg.loss, weight=y[..., 3 + i : 4 + i])
        for i, w in enumerate(weights[:n])
    )


class SynapseFinetuneJob(SynapseJob):
    """:class:`connectome.training.loop.TrainJob` for fine-tuning the synapse U-Net on a review."""

    #: minus the weighted cleft BCE on the held-back items' labelled voxels
    #: minus the weighted cleft BCE on the held-back items
    score_key: Optional[str] = "score"  # type: ignore[assignment]

    def __init__(self, cfg, init_spec, items, val_items, replay, fingerprint: dict, fresh: bool = True):
        super().__init__(cfg, replay, [], fingerprint)
        self.init_spec = init_spec
        self.items, self.val_items = list(items), list(val_items)
        self.replay = list(replay)
        self._baseline_pending = fresh

    def build_model(self):
        from connectome.training import weights as wio
        from unet.modeldir import load_weights

        model = super().build_model()
        wio.assign(model.weights, load_weights(self.init_spec))
        return model

    def loss(self, y_true, logits):
        return weighted_synapse_loss(y_true, logits, self.cfg)

    def _example(self, rng, replay: bool):
        if replay:
            vol = self.replay[int(rng.integers(len(self.replay)))]
            img, tgt = self.example_from(vol, rng, self.cfg.data.positive_fraction, channels=3)
            return img, np.concatenate([tgt, np.ones_like(tgt)], axis=-1)
        vol = self.items[int(rng.integers(len(self.items)))]
        img, tgt = self.example_from(vol, rng, 1.0, channels=6)
        return img, tgt

    def batch(self, step: int, rank: int, size: int, batch_size: int):
        rng = np.random.default_rng([self.cfg.trainer.seed, step, rank])
        n_replay = int(round(batch_size * REPLAY_FRACTION)) if self.replay else 0
        pairs = [self._example(rng, i < n_replay) for i in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(np.float32)

    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        import tensorflow as tf

        from unet.synapse_data import crop_example

        if self._predict is None:
            self._predict = tf.function(lambda x: tf.sigmoid(model(x, training=False)), reduce_retracing=True)
        predict: Any = self._predict
        sums = {"bce_sum": 0.0, "weight": 0.0, "inter": 0.0, "pred": 0.0, "true": 0.0}
        for vol in self.val_items[shard::num_shards]:
            centre = [int(v) for v in vol.positives[len(vol.positives) // 2]]
            img, tgt = crop_example(vol, centre, self.cfg.data.crop_zyx)
            p = predict(tf.convert_to_tensor(vol.stats.standardize(img)[None, ..., None])).numpy()[0, ..., 0]
            p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
            t, w = tgt[0], tgt[3]
            sums["bce_sum"] += float(np.sum(-(t * np.log(p) + (1 - t) * np.log(1 - p)) * w))
            sums["weight"] += float(w.sum())
            m = w >= 0.5
            pb, tb = (p >= 0.5) & m, (t >= 0.5) & m
            sums["inter"] += float(np.count_nonzero(pb & tb))
            sums["pred"] += float(np.count_nonzero(pb))
            sums["true"] += float(np.count_nonzero(tb))
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["bce_sum"] / max(1.0, sums["weight"])
        n = sums["pred"] + sums["true"]
        score = float("nan") if self._baseline_pending else -loss
        self._baseline_pending = False
        return {"loss": loss, "cleft_dice": 2 * sums["inter"] / n if n else 1.0, "score": score}


def apply_init(cfg, spec):
    """The config with the init model's architecture, input pixel size and inference tiling."""
    data = dataclasses.replace(cfg.data, input_voxel_size_nm=float(spec.voxel_size_nm_yx))
    inf = spec.doc.get("inference", {})
    return dataclasses.replace(
        cfg,
        model=spec.unet,
        data=data,
        inference_tile_zyx=tuple(inf.get("tile_zyx", cfg.inference_tile_zyx)),
        inference_margin_zyx=tuple(inf.get("margin_zyx", cfg.inference_margin_zyx)),
    )


def item_agreement(model_dir: Path, raw, vs, items: Sequence[ReviewedItem], threshold: float, min_size: int) -> dict:
    """Item-level agreement of a model's detections with the decisions of ``items``: each item's
    box plus 32 model voxels of context goes through the stage's inference and detection rule
    (no partners needed); the model "finds" a synapse when a detection's centre lies in the box."""
    from connectome.synapses.predict import detect_arrays, predict_arrays

    tp = fp = fn = tn = 0
    t0 = time.perf_counter()
    for it in items:
        b0, b1 = np.asarray(it.box[:3]), np.asarray(it.box[3:])
        ctx = np.asarray([8, 64, 64])
        lo, hi = np.maximum(0, b0 - ctx), np.minimum(np.asarray(raw.shape), b1 + ctx)
        crop = np.asarray(raw[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))])
        prob, post, pre = predict_arrays(crop, vs, model_dir)
        det = detect_arrays(
            prob, post, np.zeros(prob.shape, np.uint64), threshold, min_size, vs, pre=pre, require_partners=False
        )
        cen = np.stack([det["z"], det["y"], det["x"]], 1) + lo if len(det["z"]) else np.zeros((0, 3))
        found = bool(np.any(np.all((cen >= b0) & (cen < b1), axis=1)))
        want = it.has_synapse
        tp, fp, fn, tn = (
            tp + (found and want),
            fp + (found and not want),
            fn + (want and not found),
            tn + (not (found or want)),
        )
    n = tp + fp + fn + tn
    return {
        "items": n,
        "agreement": round((tp + tn) / n, 4) if n else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def finetune_synapse(
    init_dir,
    corrections_dir,
    data_dirs: Sequence,
    out_dir,
    cfg,
    restart: bool = False,
    overwrite: bool = False,
    command: Optional[Sequence[str]] = None,
) -> dict:
    """Fine-tune ``init_dir`` on the decisions of ``corrections_dir`` (+ replay of ``data_dirs``)
    into ``out_dir`` (atomic export, refused if finished unless ``overwrite``); returns a summary."""
    from connectome.training import weights as wio
    from connectome.training.distributed import horovod_session
    from connectome.training.export import check_out_dir, run_summary, staged_model_dir
    from unet.data import intensity_stats, model_factor
    from unet.finetune_common import (
        corrections_record,
        finetune_fingerprint,
        finetuned_doc,
        init_record,
        review_workspace,
        run_finetune,
    )
    from unet.modeldir import read_model_dir, write_model_dir
    from unet.synapse_data import load_synapse_volume
    from unet.synapse_train import _NOT_TRAINING
    from unet.train import _check_folders, _describe, training_record

    out = check_out_dir(out_dir, overwrite)
    if not Path(init_dir).exists():
        raise UserInputError(f"--init {init_dir}: not found (a synapse model directory, e.g. unet/models/synapse)")
    spec = read_model_dir(init_dir, task=TASK, ndim=3, what="--init", out_channels=(2, 3))
    corr_dir, ws_path, ws = review_workspace(corrections_dir, "synapses")
    threshold = float(spec.doc.get("output", {}).get("threshold", 0.5))
    min_size = int(spec.doc.get("output", {}).get("min_size_voxels", 25))
    review_t = _review_threshold(ws, threshold)
    items = reviewed_items(ws, corr_dir, review_t)
    if len(items) < 2:
        raise UserInputError(
            f"--corrections {corr_dir}: {len(items)} decided item(s); fine-tuning needs at least 2 "
            "(one is held back for validation): decide more with `connectome review open` or `review decide`"
        )
    tr, va = split_boxes(len(items), "decided item(s)")
    data = [Path(d) for d in data_dirs]
    _check_folders(data, [])
    cfg = apply_init(cfg, spec)
    d = cfg.data
    raw = ws.require_complete("raw", "train synapse --corrections")
    vs = tuple(float(v) for v in ws.voxel_size_nm)
    factor = model_factor(d.input_voxel_size_nm, vs[1], f"--init {init_dir} for workspace {ws_path}")
    stats = intensity_stats(raw, factor)  # the workspace's, as the synapses stage uses
    context = (d.crop_zyx[0] // 2 + d.jitter_zyx[0], *(int(c * d.scale_range[1]) // 2 + 4 for c in d.crop_zyx[1:]))
    vols = [item_volume(raw, it, factor, context, vs, stats, d.cleft_radius_nm) for it in items]
    n_dec: dict[str, int] = {}
    for it in items:
        n_dec[it.decision] = n_dec.get(it.decision, 0) + 1
    ids = [it.item_id for it in items]
    meta = _review_meta(corr_dir)
    record = corrections_record(
        corr_dir,
        meta,
        meta,
        ids,
        tr,
        va,
        decisions=n_dec,
        points=sum(len(it.points) for it in items),
        items_with_synapse=sum(it.has_synapse for it in items),
        labelled_voxels={
            "cleft": int(sum(int((it.labels == 1).sum()) for it in items)),
            "no_cleft": int(sum(int((it.labels == 0).sum()) for it in items)),
        },
        review_threshold=review_t,
    )
    init_rec = init_record(init_dir, spec)
    decided = {it.item_id: it.decision for it in items}
    fingerprint = finetune_fingerprint(
        "synapse-finetune", cfg, _NOT_TRAINING, init_rec, record, data, decisions=decided
    )
    tcfg = cfg.trainer
    summary: dict = {}
    with horovod_session(tcfg.distributed, tcfg.intra_op_threads, tcfg.inter_op_threads) as s:
        replay = [
            load_synapse_volume(p, d.input_voxel_size_nm, d.cleft_radius_nm, d.post_radius_nm, tcfg.seed, what="--data")
            for p in data
        ]
        fresh = restart or not (out / "train" / "checkpoints" / "checkpoint").is_file()
        job = SynapseFinetuneJob(
            cfg, spec, [vols[i] for i in tr], [vols[i] for i in va], replay, fingerprint, fresh=fresh
        )
        decided_txt = ", ".join(f"{v} {k}" for k, v in sorted(n_dec.items()))
        what = f"{len(tr)} decided item(s) ({len(va)} held back; {decided_txt}) from {init_dir}"
        result, stopped = run_finetune(job, tcfg, out, s, restart, what, ws_path, len(replay))
        if stopped:
            return stopped
        if s.is_root:
            assert result.weights_file is not None
            arrays = wio.load_npz(result.weights_file)
            training = training_record(result, cfg, out, command, [_describe(p) for p in data], [])
            doc = finetuned_doc(spec.doc, arrays, result, training, init_rec, record)
            doc["validation"] = {"held_back_items_crops": result.best_metrics or result.last_metrics}
            held = [items[i] for i in va]
            with staged_model_dir(out) as tmp:
                write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                if cfg.final_validation:
                    for key, model_dir in (("held_back_items", tmp), ("held_back_items_init", spec.path)):
                        doc["validation"][key] = item_agreement(model_dir, raw, vs, held, threshold, min_size)
                    write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                write_model_card(tmp)
            summary = run_summary(out, result, doc["training"]["seconds"], doc["validation"])
            v, v0 = doc["validation"].get("held_back_items"), doc["validation"].get("held_back_items_init")
            if v and v0:
                summary["headline"] = (
                    f"; held-back items: agreement with the decisions {v['agreement']} (init {v0['agreement']})"
                )
        s.barrier()
    return summary


def _review_meta(folder: Path) -> dict:
    from connectome.review.queue import read_review_json

    return read_review_json(folder)


def _review_threshold(ws, default: float) -> float:
    """The cleft threshold the reviewed ``synapse_prob`` was detected with (the review plan's)."""
    from connectome.review.candidates import _threshold

    t = _threshold(ws)
    return t if t > 0 else default


def write_model_card(model_dir: str | Path) -> Path:
    """The synapse model card (:func:`unet.synapse_train.write_model_card`) with a section on the
    fine-tuning (init model, the review's decisions, replay) and the held-back validation."""
    from unet.synapse_train import write_model_card as synapse_card

    p = Path(model_dir)
    path = synapse_card(p)
    doc = json.loads((p / "model.json").read_text())
    ft, v = doc.get("fine_tuning"), doc.get("validation", {})
    if not ft:
        return path
    c, i = ft["corrections"], ft["init"]
    ws = c.get("workspace") or {}
    dec = ", ".join(f"{n} {k}" for k, n in sorted((c.get("decisions") or {}).items()))
    lines = [
        "",
        "## Fine-tuning on a review",
        "",
        f"- Init model: `{i.get('portable_path') or i['path']}` (weights sha256 `{i['weights_sha256']}`).",
        f"- Review: `{c['review_dir']}` (queue strategy {c.get('strategy')}), {len(c['item_ids'])} decided items "
        f"({dec}; {c.get('points')} missed points; {c.get('items_with_synapse')} items with a synapse), "
        f"{(c.get('labelled_voxels') or {}).get('cleft')} cleft and {(c.get('labelled_voxels') or {}).get('no_cleft')} "
        "no-cleft voxels labelled (unet/synapse_finetune.py says how decisions become labels).",
        f"  - trained on: {', '.join(map(str, c['train_item_ids']))}",
        f"  - held back for validation: {', '.join(map(str, c['validation_item_ids']))}",
        f"- Workspace: `{ws.get('path')}` (fingerprint `{ws.get('fingerprint')}`).",
        f"- Replay of the synth folders above: {ft['replay_fraction']:.0%} of each batch when any are given; "
        "the post/pre channels learn only from the replay.",
        "- Checkpoint choice: the lowest cleft BCE on the labelled voxels of the held-back items; the init "
        "weights (step 0) are the baseline, never exported.",
    ]
    crops = v.get("held_back_items_crops") or {}
    if crops:
        lines.append(
            f"- Held-back items, crops at model resolution (step {doc['weights'].get('from_step')}): cleft BCE "
            f"{crops.get('loss', float('nan')):.4f}, cleft Dice {crops.get('cleft_dice', float('nan')):.4f}."
        )
    for key, who in (("held_back_items", "this model"), ("held_back_items_init", "the init model")):
        r = v.get(key)
        if r:
            lines.append(
                f"- Held-back items through the stage's inference and detection rule, {who}: agreement with the "
                f"decisions {r['agreement']} (found/decided synapse: tp {r['tp']}, fp {r['fp']}, fn {r['fn']}, "
                f"tn {r['tn']})."
            )
    text = path.read_text().rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    from connectome.atomic import atomic_write_text

    atomic_write_text(path, text)
    return path
