"""``connectome train vessel --init MODEL_DIR --corrections WS/review/vessels``: fine-tune a vessel
model on a reviewer's dense corrections (issue 23).

::

    connectome train vessel --init unet/models/vessel --corrections WS/review/vessels \
        [--data SYNTH_DIR ...] --out NEW_MODEL [--steps N] [--config FILE.yaml]

* Starts from the weights of ``--init`` (a vessel model directory); the architecture, input pixel
  size, z context, inference tiling and threshold are the init model's (``model.*`` of the config
  is ignored).
* Training examples of the corrections: tiles of the workspace's ``raw`` (``WS`` = the folder two
  levels above ``--corrections``) centred on a random voxel of a corrected box, with the
  corrected labels as the target and the corrected voxels as the loss weight: a voxel that was
  not corrected (label 255, mask 0) has weight 0 and contributes nothing to the loss (soft at
  model resolution: a model pixel's weight is the corrected fraction of its raw pixels, its
  target the vessel fraction of those).
* Replay: with ``--data`` synth folders, a fraction :data:`REPLAY_FRACTION` of every batch comes
  from them (ordinary vessel examples, weight 1 everywhere) so the model does not forget.
* Validation: every :data:`HOLDOUT_EVERY`-th corrected box (at least one) is held back from
  training; the BCE on its corrected voxels picks the exported step (the init weights, scored at
  step 0 as the baseline, are never exported: a fine-tune returns fine-tuned weights), and at the end
  the exported model runs through ``mask-vessels``' inference path on the workspace and its
  threshold is calibrated on the held-back boxes (full resolution, post-processed).
* The model card lists the corrections (review folder, item ids, voxel counts, workspace
  identity) and the init model (path + weights sha256).

Without ``--config`` the fine-tuning defaults of :data:`FINETUNE_DEFAULTS` apply (a lower
learning rate, a short warm-up, frequent validation); ``--steps`` overrides ``trainer.steps``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from unet.finetune_common import HOLDOUT_EVERY, REPLAY_FRACTION, split_boxes  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

#: config overrides applied when fine-tuning without --config
FINETUNE_DEFAULTS = {
    "trainer.steps": 150,
    "trainer.learning_rate": 2e-4,
    "trainer.warmup_steps": 10,
    "trainer.validate_every": 25,
    "trainer.checkpoint_every": 25,
    "trainer.log_every": 5,
    "data.tile_px": 256,
    "data.val_tile_px": 256,
}


class _CorrectedLabel:
    """``(labels == 1) & (mask == 1)`` (or ``mask`` alone) of the corrections, sliced lazily like
    an array (what :func:`unet.data.take_reflected` needs)."""

    def __init__(self, labels, mask, weight: bool):
        self.labels, self.mask, self.weight = labels, mask, weight
        self.shape = tuple(mask.shape)

    def __getitem__(self, sl):
        m = np.asarray(self.mask[sl]) == 1
        if self.weight:
            return m.astype(np.uint8)
        return (m & (np.asarray(self.labels[sl]) == 1)).astype(np.uint8)


def corrected_target(img_lab_fg: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Target and weight channels ``(…, 2)`` from the corrected-vessel fraction and the corrected
    fraction of each model pixel: target = vessel share of the corrected part (0 where nothing
    was corrected), weight = corrected fraction."""
    t = np.where(w > 1e-6, img_lab_fg / np.maximum(w, 1e-6), 0.0)
    return np.concatenate([np.clip(t, 0, 1), np.clip(w, 0, 1)], axis=-1).astype(np.float32)


def weighted_loss(y, logits, loss_cfg):
    """The combined loss of channel 0 of ``y`` weighted by channel 1 (0 = ignore)."""
    from unet.losses import combined_loss

    return combined_loss(y[..., :1], logits, loss_cfg, weight=y[..., 1:2])


class FinetuneJob:
    """:class:`connectome.training.loop.TrainJob` for fine-tuning the vessel U-Net."""

    #: minus the weighted BCE on the held-back corrected voxels: IoU is degenerate (1.0 for any
    #: model that predicts nothing) on held-back boxes without vessel, which random picks often are
    score_key = "score"

    def __init__(self, cfg, init_spec, corr_vol, corr_weight, boxes, replay, fingerprint: dict, fresh: bool = True):
        from unet.data import intensity_stats, volume_factor

        self.cfg, self.init_spec = cfg, init_spec
        self.corr, self.corr_weight = corr_vol, corr_weight
        self.train_boxes, self.val_boxes = boxes
        self.replay = list(replay)
        self._fingerprint = fingerprint
        vs = cfg.data.input_voxel_size_nm
        self.corr_factor = volume_factor(corr_vol, vs)
        self.corr_stats = intensity_stats(corr_vol.raw, self.corr_factor)
        self.factor = {str(v.path): volume_factor(v, vs) for v in self.replay}
        self.stats = {str(v.path): intensity_stats(v.raw, self.factor[str(v.path)]) for v in self.replay}
        self.val_specs = self._val_specs()
        self._predict = None
        #: a fresh run validates the init weights first (step 0): a baseline, never the exported step
        self._baseline_pending = fresh

    def fingerprint(self) -> dict:
        return self._fingerprint

    def build_model(self):
        from connectome.training import weights as wio
        from unet.model import build_unet
        from unet.modeldir import load_weights

        model = build_unet(self.cfg.model, name="vessel_unet")
        wio.assign(model.weights, load_weights(self.init_spec))
        return model

    def loss(self, y_true, logits):
        return weighted_loss(y_true, logits, self.cfg.loss)

    # -- examples
    def _crop_corrected(self, spec, tile: int):
        from unet.data import crop_example

        d = self.cfg.data
        img, fg = crop_example(self.corr, self.corr_factor, d.z_context, tile, spec)
        _, w = crop_example(self.corr_weight, self.corr_factor, d.z_context, tile, spec)
        return img, corrected_target(fg, w)

    def _corrected_example(self, rng):
        from unet.data import ExampleSpec

        d = self.cfg.data
        z0, y0, x0, z1, y1, x1 = self.train_boxes[int(rng.integers(len(self.train_boxes)))]
        lo, hi = d.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
        spec = ExampleSpec(0, int(rng.integers(z0, z1)), (int(rng.integers(y0, y1)), int(rng.integers(x0, x1))), scale)
        img, y = self._crop_corrected(spec, d.tile_px)
        return img, y, self.corr_stats

    def _replay_example(self, rng):
        from unet.data import crop_example, draw_spec

        d = self.cfg.data
        spec = draw_spec(
            rng,
            self.replay,
            range(len(self.replay)),
            lambda v: self.factor[str(v.path)],
            d.tile_px,
            d.scale_range,
            d.positive_fraction,
        )
        vol = self.replay[spec.volume]
        img, lab = crop_example(vol, self.factor[str(vol.path)], d.z_context, d.tile_px, spec)
        return img, np.concatenate([lab, np.ones_like(lab)], axis=-1), self.stats[str(vol.path)]

    def example(self, rng, replay: bool):
        from unet.augment import geometric_augment, intensity_augment
        from unet.data import IntensityStats, adjust_stats

        d, aug = self.cfg.data, self.cfg.augment
        img, y, stats = self._replay_example(rng) if replay else self._corrected_example(rng)
        img, y = geometric_augment(img, y, rng, aug)
        img, g, noise = intensity_augment(img, rng, aug)
        st = adjust_stats(stats, g, noise)
        if d.stats_jitter:
            j = d.stats_jitter
            shift = float(rng.normal(0, j)) * (st.p95 - st.p5)
            grow = float(np.exp(rng.normal(0, j)))
            st = IntensityStats(
                st.p50 + shift - (st.p50 - st.p5) * grow, st.p50 + shift, st.p50 + shift + (st.p95 - st.p50) * grow
            )
        return st.standardize(img), np.clip(y, 0, 1).astype(np.float32)

    def batch(self, step: int, rank: int, size: int, batch_size: int):
        rng = np.random.default_rng([self.cfg.trainer.seed, step, rank])
        n_replay = int(round(batch_size * REPLAY_FRACTION)) if self.replay else 0
        pairs = [self.example(rng, i < n_replay) for i in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    # -- validation on the held-back boxes (their corrected voxels only)
    def _val_specs(self):
        from unet.data import ExampleSpec

        specs = []
        for z0, y0, x0, z1, y1, x1 in self.val_boxes:
            for z in range(z0, z1, max(1, (z1 - z0) // 4)):
                specs.append(ExampleSpec(0, int(z), ((y0 + y1) // 2, (x0 + x1) // 2), 1.0))
        return specs

    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        import tensorflow as tf

        if self._predict is None:
            self._predict = tf.function(lambda x: tf.sigmoid(model(x, training=False)), reduce_retracing=True)
        sums = {"bce_sum": 0.0, "weight": 0.0, "inter": 0.0, "union": 0.0, "pred": 0.0, "true": 0.0}
        specs = self.val_specs[shard::num_shards]
        for i in range(0, len(specs), 4):
            pairs = [self._crop_corrected(s, self.cfg.data.val_tile_px) for s in specs[i : i + 4]]
            x = np.stack([self.corr_stats.standardize(p[0]) for p in pairs])
            y = np.stack([p[1] for p in pairs])
            p = np.clip(self._predict(tf.convert_to_tensor(x)).numpy().astype(np.float64), 1e-7, 1 - 1e-7)
            t, w = y[..., :1], y[..., 1:2]
            sums["bce_sum"] += float(np.sum(-(t * np.log(p) + (1 - t) * np.log(1 - p)) * w))
            sums["weight"] += float(w.sum())
            m = w >= 0.5
            pb, tb = (p >= 0.5) & m, (t >= 0.5) & m
            sums["inter"] += float(np.count_nonzero(pb & tb))
            sums["union"] += float(np.count_nonzero(pb | tb))
            sums["pred"] += float(np.count_nonzero(pb))
            sums["true"] += float(np.count_nonzero(tb))
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        iou = sums["inter"] / sums["union"] if sums["union"] else 1.0
        dice = 2 * sums["inter"] / (sums["pred"] + sums["true"]) if (sums["pred"] + sums["true"]) else 1.0
        loss = sums["bce_sum"] / max(1.0, sums["weight"])
        score = float("nan") if self._baseline_pending else -loss
        self._baseline_pending = False
        return {"loss": loss, "iou": iou, "dice": dice, "score": score}


def apply_init(cfg, spec):
    """The config with the init model's architecture, input and inference settings."""
    data = dataclasses.replace(cfg.data, input_voxel_size_nm=float(spec.voxel_size_nm_yx), z_context=spec.z_context)
    return dataclasses.replace(
        cfg,
        model=spec.unet,
        data=data,
        inference_tile_px=spec.tile_px,
        inference_margin_px=spec.margin_px,
        threshold=spec.threshold,
    )


def _overlap(p: np.ndarray, t: np.ndarray) -> dict:
    p, t = p != 0, t != 0
    inter, n_p, n_t = int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t))
    union = n_p + n_t - inter
    return {
        "iou": inter / union if union else 1.0,
        "dice": 2 * inter / (n_p + n_t) if n_p + n_t else 1.0,
        "precision": inter / n_p if n_p else float("nan"),
        "recall": inter / n_t if n_t else float("nan"),
    }


def final_validation_boxes(model_dir: Path, raw, voxel_yx_nm: float, labels, mask, boxes, cfg) -> tuple[float, dict]:
    """IoU on the corrected voxels of the held-back boxes through the real inference path
    (whole workspace predicted), per threshold of ``cfg.calibrate_threshold``; the best is used."""
    from unet.infer import postprocess_volume
    from unet.vessel import VesselMaskConfig, predict_array

    t0 = time.perf_counter()
    prob, _ = predict_array(np.asarray(raw[:]), voxel_yx_nm, model_dir, VesselMaskConfig(postprocess=cfg.postprocess))
    seconds = time.perf_counter() - t0
    grid = sorted(set(cfg.calibrate_threshold) | {cfg.threshold})
    table = {}
    for t in grid:
        post = dataclasses.replace(cfg.postprocess, threshold=t)
        pred = postprocess_volume(prob, post, voxel_yx_nm)
        p_all, t_all = [], []
        for z0, y0, x0, z1, y1, x1 in boxes:
            sl = np.s_[z0:z1, y0:y1, x0:x1]
            m = np.asarray(mask[sl]) == 1
            p_all.append(pred[sl][m])
            t_all.append((np.asarray(labels[sl]) == 1)[m])
        table[t] = _overlap(np.concatenate(p_all), np.concatenate(t_all))
    best = max(grid, key=lambda t: (table[t]["iou"], -abs(t - cfg.threshold)))

    def r(x):
        return round(float(x), 5) if x == x else None

    return best, {
        "threshold": best,
        **{k: r(table[best][k]) for k in ("iou", "dice", "precision", "recall")},
        "iou_by_threshold": {f"{t:g}": r(table[t]["iou"]) for t in grid},
        "seconds": round(seconds, 1),
    }


def finetune_vessel(
    init_dir,
    corrections_dir,
    data_dirs: Sequence,
    out_dir,
    cfg,
    restart: bool = False,
    overwrite: bool = False,
    command: Optional[Sequence[str]] = None,
) -> dict:
    """Fine-tune ``init_dir`` on the corrections of ``corrections_dir`` (+ replay of ``data_dirs``)
    into ``out_dir`` (atomic export, refused if finished unless ``overwrite``); returns a summary."""
    from connectome.training import weights as wio
    from connectome.training.distributed import horovod_session
    from connectome.training.export import check_out_dir, run_summary, staged_model_dir
    from unet.data import LabelledVolume, load_synth_volume
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
    from unet.train import _NOT_TRAINING, _check_folders, _describe, training_record, write_model_card

    out = check_out_dir(out_dir, overwrite)
    spec = read_model_dir(init_dir, task="vessel", what="--init")
    corr_dir, ws_path, ws = review_workspace(corrections_dir, "vessels")
    corr, boxes, ids = dense_corrections(corr_dir, ws, "vessels", "vessel")
    tr, va = split_boxes(len(boxes))
    data = [Path(d) for d in data_dirs]
    _check_folders(data, [])
    cfg = apply_init(cfg, spec)
    raw = ws.require_complete("raw", "train vessel --corrections")
    vs = tuple(float(v) for v in ws.voxel_size_nm)
    corr_vol = LabelledVolume(ws_path, raw, _CorrectedLabel(corr.labels, corr.mask, False), vs, {})
    corr_w = LabelledVolume(ws_path, raw, _CorrectedLabel(corr.labels, corr.mask, True), vs, {})
    record = corrections_record(corr_dir, corr.meta, corr.review, ids, tr, va, voxels=corr.meta.get("voxels", {}))
    init_rec = init_record(init_dir, spec)
    fingerprint = finetune_fingerprint("vessel-finetune", cfg, _NOT_TRAINING, init_rec, record, data)
    tcfg = cfg.trainer
    summary: dict = {}
    with horovod_session(tcfg.distributed, tcfg.intra_op_threads, tcfg.inter_op_threads) as s:
        replay = [load_synth_volume(d, seed=tcfg.seed) for d in data]
        fresh = restart or not (out / "train" / "checkpoints" / "checkpoint").is_file()
        job = FinetuneJob(
            cfg,
            spec,
            corr_vol,
            corr_w,
            ([boxes[i] for i in tr], [boxes[i] for i in va]),
            replay,
            fingerprint,
            fresh=fresh,
        )
        what = f"{len(tr)} corrected box(es) ({len(va)} held back) from {init_dir}"
        result, stopped = run_finetune(job, tcfg, out, s, restart, what, ws_path, len(replay))
        if stopped:
            return stopped
        if s.is_root:
            arrays = wio.load_npz(result.weights_file)
            training = training_record(result, cfg, out, command, [_describe(d) for d in data], [])
            doc = finetuned_doc(spec.doc, arrays, result, training, init_rec, record)
            doc["validation"] = {"corrected_boxes_tiles": result.best_metrics or result.last_metrics}
            with staged_model_dir(out) as tmp:
                write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                if cfg.final_validation:
                    threshold, doc["validation"]["corrected_boxes"] = final_validation_boxes(
                        tmp, raw, vs[1], corr.labels, corr.mask, [boxes[i] for i in va], cfg
                    )
                    doc["output"]["threshold"] = threshold
                    doc["validation"]["threshold_calibrated_on_these_boxes"] = True
                    write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                write_model_card(tmp)
            summary = run_summary(out, result, doc["training"]["seconds"], doc["validation"])
            v = doc["validation"].get("corrected_boxes") or {}
            if v.get("iou") is not None:
                summary["headline"] = f"; held-back boxes IoU {v['iou']:.4f} at threshold {v['threshold']:g}"
        s.barrier()
    return summary
