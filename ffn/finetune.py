"""``connectome train ffn --init MODEL_DIR --corrections WS/review/segmentation``: fine-tune the
Flood-Filling Network on a reviewer's dense segmentation corrections.

::

    connectome train ffn --init ffn/models/boundary16 --corrections WS/review/segmentation \\
        [--data SYNTH_DIR ...] --out NEW_MODEL [--steps N] [--config FILE.yaml]

The structure is that of the boundary fine-tuning (:mod:`unet.boundary_finetune`); the box split
(:func:`unet.finetune_common.split_boxes`) and the replay share
(:data:`unet.finetune_common.REPLAY_FRACTION`) are used as they are.

* Starts from the weights of ``--init`` (an FFN model directory); the architecture (with its input
  channels), the input pixel size and the move threshold are the init model's (``model.*``,
  ``examples.voxel_size_nm_yx`` and ``examples.move_threshold`` of the config are ignored);
  ``examples.boundary_model`` defaults to the one the init model was trained with.
* Training volumes of the corrections (:class:`CorrectedVolume`): for each corrected box, the
  workspace's ``raw`` (``WS`` = the folder two levels above ``--corrections``) at the model's
  resolution (:func:`ffn.data.model_resolution`, on the model grid of the whole volume, as
  ``connectome segment`` downsamples), with half an example box (+1) of context on every side
  (edge-padded beyond the volume, as ``segment`` pads), standardised with the workspace's
  percentiles (as ``segment``). For a model with a "boundary" channel: channel 0 of the
  workspace's ``boundary`` array (what ``segment --method ffn`` feeds it) when the workspace has
  one, else the boundary model's prediction (``predicted_boundary``'s computation,
  :func:`unet.boundary.predict_arrays`) on the part of the workspace around the corrected boxes;
  neither possible: exit 2. The truth labels are the corrected segment ids (at the centre pixel of
  each model cell, as :func:`ffn.data.model_resolution` samples labels).
* Episodes (:class:`FFNFinetuneJob`, the episodes of :class:`ffn.train.FFNJob`: FOV movement, the
  network's output fed back as the seed, the same augmentation) are seeded only on corrected
  voxels with a segment id (0 = corrected to no object gives no seed) inside a training box,
  drawn equally per object-fraction partition (:class:`ffn.data.CentreSampler`).
* Loss: the FFN's sigmoid cross-entropy with a **per-voxel weight** (the target carries a second
  channel): 1 on corrected voxels, 0 elsewhere (the context around a box, and the voxels of the
  held-back boxes), averaged per example over its weighted voxels, then over the batch. With
  weight 1 everywhere it is :meth:`ffn.train.FFNJob.loss` exactly. A weight rather than restricted
  targets: the FOV (e.g. 9 x 17 x 17 model voxels) is as large as a review box, so most of every
  FOV lies outside the corrected voxels, where the truth is unknown: calling it "not this object"
  would teach the network to stop at the box's faces.
* Replay: with ``--data`` synth folders, :data:`~unet.finetune_common.REPLAY_FRACTION` of the
  batch slots run ordinary FFN episodes on them (:func:`ffn.train.load_training_volume`, weight 1
  everywhere).
* Validation: episodes (no augmentation) seeded on the corrected voxels of the held-back boxes
  (``examples.val_episodes_per_volume`` per box, fixed), scored on their corrected voxels only:
  voxel precision / recall / F1 of the final mask at 0.9, and the weighted loss of the final
  logits. The F1 picks the exported step (``score``); the init weights, validated at step 0, are
  the baseline (``validation.corrected_boxes_init``), never exported.
* The model card is the FFN card (:mod:`ffn.card`) with a section listing the corrections (review
  folder, item ids trained on / held back, voxel counts, workspace identity), the init model (path
  + weights sha256), the boundary channel's source and the replay share.

Without ``--config`` the fine-tuning defaults of :data:`FINETUNE_DEFAULTS` apply; ``--steps``
overrides ``trainer.steps``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from connectome.errors import UserInputError
from ffn.data import CentreSampler, augment, crop, model_resolution
from ffn.model import FFNModelConfig, logit
from ffn.train import (
    FFNExampleConfig,
    FFNJob,
    TrainingVolume,
    _Slot,
    example_shape,
    fov_slices,
    new_episode,
    run_episode,
)
from unet.finetune_common import REPLAY_FRACTION, box_keep, run_finetune, split_boxes

log = logging.getLogger(__name__)

TASK = "ffn"
#: config overrides applied when fine-tuning without --config
FINETUNE_DEFAULTS = {
    "trainer.steps": 200,
    "trainer.learning_rate": 2e-4,
    "trainer.warmup_steps": 10,
    "trainer.validate_every": 25,
    "trainer.checkpoint_every": 25,
    "trainer.log_every": 5,
    "examples.val_episodes_per_volume": 16,
    # replay (--data): objects as small as the shipped model's training saw (ffn/configs/boundary16.yaml)
    "examples.min_object_voxels": 300,
}
#: the fields of the config a resumed run may change (the loop fingerprints the trainer itself)
_NOT_TRAINING = ("trainer",)
#: probability at which the validation masks are read (as :meth:`ffn.train.FFNJob.validate`)
VAL_THRESHOLD = 0.9


# ---------------------------------------------------------------------------------------------
# corrected boxes as FFN training volumes


@dataclasses.dataclass
class CorrectedVolume(TrainingVolume):
    """A corrected box with its context as an FFN :class:`ffn.train.TrainingVolume` (model
    resolution): ``labels`` the corrected segment ids (0 where not corrected or corrected to no
    object), ``weight`` float32 {0, 1} (1 = corrected), the sampler's centres on the box's
    corrected voxels with an id. ``box``: the box in raw voxels; ``region_zyx``: the region's
    (unclipped) model voxels ``z0, y0, x0, z1, y1, x1``."""

    weight: Any = None
    item_id: str = ""
    box: tuple = ()
    region_zyx: tuple = ()


def corrected_volume(
    raw,
    labels,
    mask,
    boundary8,
    box,
    factor: int,
    model: FFNModelConfig,
    ex: FFNExampleConfig,
    stats,
    vs,
    keep,
    item_id: str = "",
    seed: int = 0,
) -> CorrectedVolume:
    """The :class:`CorrectedVolume` of ``box`` (raw voxels z0, y0, x0, z1, y1, x1).
    ``boundary8(raw_slices)``: the uint8 boundary channel at raw resolution over those slices (None:
    a model without one). ``keep(region)``: bool (z, y, x) of the region's raw voxels whose
    corrections count (the rest are treated as not corrected)."""
    f = int(factor)
    Z, H, W = (int(s) for s in raw.shape)
    M = (Z, H // f, W // f)
    z0, y0, x0, z1, y1, x1 = (int(v) for v in box)
    m0 = (z0, y0 // f, x0 // f)
    m1 = (z1, min(M[1], -(-y1 // f)), min(M[2], -(-x1 // f)))
    half = [s // 2 + 1 for s in example_shape(model, ex)]
    lo = [a - h for a, h in zip(m0, half)]
    hi = [b + h for b, h in zip(m1, half)]
    clo = [max(0, a) for a in lo]
    chi = [min(n, b) for n, b in zip(M, hi)]
    sl = (slice(clo[0], chi[0]), slice(clo[1] * f, chi[1] * f), slice(clo[2] * f, chi[2] * f))
    corrected = (np.asarray(mask[sl]) == 1) & keep(sl)
    image, lab, m = model_resolution(np.asarray(raw[sl]), np.asarray(labels[sl]), corrected, f)
    pad = [(a - b, c - d) for a, b, c, d in zip(clo, lo, hi, chi)]
    image = np.pad(image, pad, mode="edge")
    weight = np.pad(m, pad).astype(np.float32)
    lab = np.where(np.pad(m, pad), np.pad(lab, pad), 0).astype(np.int64)
    bnd = None
    if boundary8 is not None:
        bnd = np.pad(model_resolution(np.asarray(boundary8(sl)), None, None, f)[0], pad, mode="edge")
    inbox = np.zeros(lab.shape, bool)
    inbox[tuple(slice(a - b, c - b) for a, b, c in zip(m0, lo, m1))] = True
    sampler = CentreSampler.from_labels(
        np.where(inbox, lab, 0),
        tuple(r + d for r, d in zip(model.radius_zyx, model.deltas_zyx)),
        example_shape(model, ex),
        1,
        None,
        ex.max_per_partition,
        seed,
    )
    vnm = (float(vs[0]), float(vs[1]) * f, float(vs[2]) * f)
    return CorrectedVolume(
        str(item_id),
        image,
        lab,
        sampler,
        stats,
        vnm,
        bnd,
        weight,
        str(item_id),
        tuple(int(v) for v in box),
        (*lo, *hi),
    )


@dataclasses.dataclass
class _WeightedSlot(_Slot):
    weight: Optional[np.ndarray] = None  # example box, loss weight {0, 1}


def corrected_episode(
    vol: TrainingVolume,
    centre,
    model: FFNModelConfig,
    ex: FFNExampleConfig,
    rng: Optional[np.random.Generator],
    intensity=None,
) -> _WeightedSlot:
    """:func:`ffn.train.new_episode` (the same image, labels, seed and augmentation) with the loss
    weight of the example box beside it: the volume's ``weight`` (a :class:`CorrectedVolume`) or 1
    everywhere, flipped / transposed exactly as the image (its geometric augmentation draws first
    from ``rng``: a copy of ``rng`` replays those draws on the weight)."""
    shape = example_shape(model, ex)
    w_vol = getattr(vol, "weight", None)
    w = np.ones(shape, np.float32) if w_vol is None else crop(w_vol, centre, shape).astype(np.float32)
    twin = copy.deepcopy(rng) if rng is not None else None
    slot = new_episode(vol, centre, model, ex, rng, intensity)
    if twin is not None:
        w = augment([w], twin, transpose_xy=model.fov_zyx[1] == model.fov_zyx[2])[0]
    return _WeightedSlot(**{f.name: getattr(slot, f.name) for f in dataclasses.fields(_Slot)}, weight=w)


def weighted_ffn_loss(y_true, logits):
    """The FFN loss (sigmoid cross-entropy of the soft labels, channel 0 of ``y_true``) weighted
    per voxel by channel 1: per example the mean over its weighted voxels, then the batch mean.
    With weight 1 everywhere it is :meth:`ffn.train.FFNJob.loss`."""
    import tensorflow as tf

    y_true = tf.cast(y_true, logits.dtype)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true[..., :1], logits=logits)
    w = y_true[..., 1:2]
    axes = list(range(1, len(ce.shape)))
    per = tf.reduce_sum(ce * w, axis=axes) / tf.maximum(tf.reduce_sum(w, axis=axes), 1.0)
    return tf.reduce_mean(per)


class FFNFinetuneJob(FFNJob):
    """:class:`connectome.training.loop.TrainJob` for fine-tuning the FFN: the episodes of
    :class:`ffn.train.FFNJob` on corrected boxes (the first :data:`REPLAY_FRACTION` of the batch
    slots on the replay volumes when there are any), targets (soft label, weight)."""

    def __init__(
        self,
        model: FFNModelConfig,
        examples: FFNExampleConfig,
        train: Sequence[CorrectedVolume],
        val: Sequence[CorrectedVolume],
        replay: Sequence[TrainingVolume],
        seed: int,
        reset_every: int,
        fingerprint: dict,
        intensity=None,
        init_spec=None,
        fresh: bool = True,
        validate_every: int = 1,
    ):
        super().__init__(model, examples, train, [], seed, reset_every, fingerprint, intensity)
        self.replay = list(replay)
        self.val_boxes = list(val)
        self.init_spec = init_spec
        #: the F1 on the corrected voxels of the held-back boxes (NaN for the step-0 baseline)
        self.score_key = "score"
        vr = np.random.default_rng([self.seed, 987654])
        self.val_specs = [
            (i, v.sampler.draw(vr))
            for i, v in enumerate(self.val_boxes)
            if len(v.sampler)
            for _ in range(examples.val_episodes_per_volume)
        ]
        #: a fresh run validates the init weights first (step 0): a baseline, never the exported step
        self._baseline_pending = fresh and validate_every > 0

    def build_model(self):
        if self.init_spec is None:
            return super().build_model()
        from ffn.modeldir import build_model

        return build_model(self.init_spec)  # the init's weights (sha256 checked)

    def loss(self, y_true, logits):
        return weighted_ffn_loss(y_true, logits)

    def batch(self, step: int, rank: int, size: int, batch_size: int):
        if (
            self._slots is None
            or len(self._slots) != batch_size
            or step % self.reset_every == 0
            or self._last_step != step - 1
        ):
            self._slots = [_WeightedSlot() for _ in range(batch_size)]  # start (or resume): fresh episodes
        self._last_step = step
        n_replay = int(round(batch_size * REPLAY_FRACTION)) if self.replay else 0
        xs, ys = [], []
        for k, slot in enumerate(self._slots):
            if not slot.queue:
                rng = np.random.default_rng([self.seed, rank, step, k])
                vols = self.replay if k < n_replay else self.train
                vol = vols[int(rng.integers(len(vols)))]
                slot = self._slots[k] = corrected_episode(
                    vol, vol.sampler.draw(rng), self.model, self.ex, rng, self.intensity
                )
            assert isinstance(slot, _WeightedSlot)
            assert slot.image is not None and slot.seed is not None and slot.label is not None
            assert slot.weight is not None
            slot.pos, slot.round = slot.queue.pop(0)
            slot.n_fovs += 1
            sl = fov_slices(slot.pos, self.model.fov_zyx)
            xs.append(np.concatenate([slot.image[sl], slot.seed[sl][..., None]], axis=-1))
            ys.append(np.stack([slot.label[sl], slot.weight[sl]], axis=-1))
        return np.stack(xs), np.stack(ys).astype(np.float32)

    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        import tensorflow as tf

        if self._predict is None:
            self._predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        fn: Any = self._predict
        sums = {"tp": 0.0, "fp": 0.0, "fn": 0.0, "ce": 0.0, "w": 0.0}
        t = logit(VAL_THRESHOLD)
        predict = lambda x: fn(tf.convert_to_tensor(x)).numpy()  # noqa: E731
        for i, centre in self.val_specs[shard::num_shards]:
            slot = corrected_episode(self.val_boxes[i], centre, self.model, self.ex, None)
            run_episode(slot, self.model, self.ex, predict)
            assert slot.seed is not None and slot.label is not None and slot.weight is not None
            w = slot.weight > 0
            pred, true = slot.seed >= t, slot.label > 0.5
            sums["tp"] += float(np.count_nonzero(pred & true & w))
            sums["fp"] += float(np.count_nonzero(pred & ~true & w))
            sums["fn"] += float(np.count_nonzero(~pred & true & w))
            x, y = slot.seed.astype(np.float64), slot.label.astype(np.float64)
            ce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))  # sigmoid cross-entropy
            sums["ce"] += float(np.sum(ce[w]))
            sums["w"] += float(np.count_nonzero(w))
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        tp, fp, fn = sums["tp"], sums["fp"], sums["fn"]
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        score = float("nan") if self._baseline_pending else f1
        self._baseline_pending = False
        return {
            "precision": p,
            "recall": r,
            "f1": f1,
            "loss": sums["ce"] / sums["w"] if sums["w"] else float("nan"),
            "weighted_voxels": sums["w"],
            "score": score,
        }


# ---------------------------------------------------------------------------------------------
# the init model, the boundary channel


def apply_ffn_init(cfg, spec):
    """The config with the init model's architecture, input pixel size and move threshold (and
    its boundary model unless the config names one)."""
    ex = cfg.examples
    init_ex = ((spec.doc.get("training") or {}).get("config") or {}).get("examples") or {}
    if abs(spec.voxel_size_nm[1] - spec.voxel_size_nm[2]) > 1e-6 * spec.voxel_size_nm[1]:
        raise UserInputError(f"--init {spec.path}: needs square input pixels, has {list(spec.voxel_size_nm)} nm")
    try:
        return dataclasses.replace(
            cfg,
            model=spec.model,
            examples=dataclasses.replace(
                ex,
                voxel_size_nm_yx=float(spec.voxel_size_nm[1]),
                move_threshold=float(spec.inference.get("move_threshold", ex.move_threshold)),
                boundary_model=ex.boundary_model or str(init_ex.get("boundary_model") or ""),
            ),
        )
    except ValueError as exc:
        raise UserInputError(f"--config: {exc} (with the init model {spec.path})") from None


def boundary_source(ws, ws_path: Path, raw, vs, boxes, ex: FFNExampleConfig, pad_zyx):
    """``(boundary8(raw_slices), record)``: the uint8 boundary channel the FFN gets (channel 0 of
    the workspace's ``boundary`` array, as ``segment``; else the boundary model's prediction on
    the bounding box of ``boxes`` grown by ``pad_zyx`` raw voxels, as
    :func:`ffn.train.predicted_boundary` computes it); exit 2 when neither is possible."""
    if ws.has("boundary"):
        from unet.boundary import require_boundary

        arr: Any = require_boundary(ws, "train ffn --corrections (the FFN's boundary channel)")
        return (lambda sl: np.asarray(arr[(0, *sl)])), {
            "source": "workspace array 'boundary' (channel 0)",
            "model_sha256": arr.attrs.get("model_sha256"),
        }
    from unet.boundary import default_model, predict_arrays, read_spec

    mdir = Path(ex.boundary_model) if ex.boundary_model else default_model()
    if not (mdir / "model.json").is_file():
        raise UserInputError(
            f"workspace {ws_path}: has no 'boundary' array and the boundary model {mdir} for the FFN's boundary "
            f"channel is missing; run `connectome predict-boundaries --workspace {ws_path}` first"
        )
    b = np.asarray(boxes)
    shape = np.asarray(raw.shape)
    lo = np.maximum(b[:, :3].min(axis=0) - np.asarray(pad_zyx), 0)
    hi = np.minimum(b[:, 3:].max(axis=0) + np.asarray(pad_zyx), shape)
    log.info("predicting the boundary channel of %s with %s (the workspace has no 'boundary' array)", ws_path, mdir)
    pred = predict_arrays(np.asarray(raw[tuple(slice(a, c) for a, c in zip(lo, hi))]), vs, mdir)[0]

    def read(sl) -> np.ndarray:  # the regions of the corrected boxes lie inside the predicted part
        assert all(lo[k] <= s.start and s.stop <= hi[k] for k, s in enumerate(sl)), (sl, lo, hi)
        return pred[tuple(slice(s.start - lo[k], s.stop - lo[k]) for k, s in enumerate(sl))]

    return read, {
        "source": f"predicted by {mdir.resolve()} (the workspace has no 'boundary' array)",
        "model_sha256": read_spec(mdir).weights_sha256,
        "region_zyx": [int(v) for v in (*lo, *hi)],
    }


# ---------------------------------------------------------------------------------------------
# model card


def write_model_card(model_dir: str | Path) -> Path:
    """The FFN model card (:func:`ffn.card.write_model_card`) with a section on the fine-tuning
    (init model, corrections, boundary channel, replay) and the held-back validation."""
    from ffn.card import write_model_card as ffn_card

    p = Path(model_dir)
    path = ffn_card(p)
    doc = json.loads((p / "model.json").read_text())
    ft, v = doc.get("fine_tuning"), doc.get("validation", {})
    if not ft:
        return path
    c, i = ft["corrections"], ft["init"]
    ws, vox, bnd = c.get("workspace") or {}, c.get("voxels") or {}, c.get("boundary") or {}
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
        f"- Boundary channel: {bnd.get('source', 'none (the model has no boundary input)')}"
        + (f", boundary model sha256 `{bnd.get('model_sha256')}`." if bnd.get("model_sha256") else "."),
        f"- Replay of the synth folders above: {ft['replay_fraction']:.0%} of the batch slots when any are given. "
        "Episodes seeded on corrected voxels only; loss weight 0 on every voxel that was not corrected.",
        "- Checkpoint choice: the episode F1 on the corrected voxels of the held-back boxes (below); the init "
        "weights (step 0) are the baseline, never exported.",
        "",
    ]
    m, m0 = v.get("episodes_f1_at_0.9") or {}, v.get("corrected_boxes_init") or {}
    val = [
        f"- Held-back boxes, episodes seeded on their corrected voxels (step {v.get('best_step')}, corrected voxels "
        f"only, at 0.9): precision {m.get('precision', float('nan')):.3f}, recall {m.get('recall', float('nan')):.3f}, "
        f"F1 {m.get('f1', float('nan')):.3f}"
        + (
            f"; the init model there: precision {m0.get('precision', float('nan')):.3f}, recall "
            f"{m0.get('recall', float('nan')):.3f}, F1 {m0.get('f1', float('nan')):.3f}."
            if m0
            else "."
        )
    ]
    lines = path.read_text().splitlines()
    out: list[str] = []
    for line in lines:
        if line.startswith("- Checkpoint of step"):
            out += val
            continue
        if line.startswith("- Validation data (checkpoint choice"):
            line = "- Validation data: the held-back boxes of the corrections (below)."
        if line == "## Validation":
            out += section
        out.append(
            line.replace(
                "Trained on synthetic serial-section EM only;",
                "Trained on synthetic serial-section EM, then fine-tuned on the reviewed corrections above;",
            )
        )
    path.write_text("\n".join(out) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# `connectome train ffn --init --corrections`


def finetune_ffn(
    init_dir,
    corrections_dir,
    data_dirs: Sequence,
    out_dir,
    cfg,
    restart: bool = False,
    overwrite: bool = False,
    command: Optional[Sequence[str]] = None,
) -> dict:
    """Fine-tune the FFN ``init_dir`` on the segmentation corrections of ``corrections_dir``
    (+ replay of ``data_dirs``) into ``out_dir`` (atomic export, refused if finished unless
    ``overwrite``); returns a summary on rank 0 (``{"stopped": True, ...}`` after a signal)."""
    from connectome.config import config_to_dict
    from connectome.training import weights as wio
    from connectome.training.distributed import horovod_session
    from connectome.training.export import check_out_dir, run_summary, staged_model_dir
    from connectome.training.loop import _metrics_at
    from connectome.training.provenance import portable_command, portable_path
    from ffn.modeldir import read_model_dir, write_model_dir
    from ffn.train import load_training_volume
    from unet.data import intensity_stats, model_factor
    from unet.finetune_common import (
        corrections_record,
        dense_corrections,
        fine_tuning_doc,
        finetune_fingerprint,
        init_record,
        review_workspace,
    )

    out = check_out_dir(out_dir, overwrite)
    if not Path(init_dir).exists():
        raise UserInputError(f"--init {init_dir}: not found (an FFN model directory, e.g. ffn/models/boundary16)")
    spec = read_model_dir(init_dir, what="--init")
    corr_dir, ws_path, ws = review_workspace(corrections_dir, "segmentation")
    corr, boxes, ids = dense_corrections(corr_dir, ws, "segmentation", TASK)
    voxels = corr.meta.get("voxels", {})
    tr, va = split_boxes(len(boxes))
    data = [Path(d) for d in data_dirs]
    for d in data:
        if not (d / "truth.zarr").is_dir():
            raise UserInputError(f"--data {d}: not a `connectome synth` folder (no truth.zarr)")
    cfg = apply_ffn_init(cfg, spec)
    model, ex = cfg.model, cfg.examples
    raw = ws.require_complete("raw", "train ffn --corrections")
    vs = tuple(float(v) for v in ws.voxel_size_nm)
    if abs(vs[1] - vs[2]) > 1e-6 * vs[1]:
        raise UserInputError(f"workspace {ws_path}: train ffn needs square pixels, voxel size is {list(vs)} nm")
    factor = model_factor(ex.voxel_size_nm_yx, vs[1], f"--init {init_dir} for workspace {ws_path}")
    stats = intensity_stats(raw, factor)  # the workspace's, as `connectome segment` uses
    half = [s // 2 + 1 for s in example_shape(model, ex)]
    boundary8, bnd_rec = None, None
    if "boundary" in model.channels:
        pad = (half[0] + 2, (half[1] + 2) * factor, (half[2] + 2) * factor)
        boundary8, bnd_rec = boundary_source(ws, ws_path, raw, vs, boxes, ex, pad)
    val_boxes = [boxes[i] for i in va]
    seed = cfg.trainer.seed

    def volume(i: int, keep) -> CorrectedVolume:
        return corrected_volume(
            raw, corr.labels, corr.mask, boundary8, boxes[i], factor, model, ex, stats, vs, keep, ids[i], seed
        )

    train_cv = [volume(i, box_keep([], val_boxes)) for i in tr]
    val_cv = [volume(i, box_keep([boxes[i]], val_boxes[:k])) for k, i in enumerate(va)]  # a voxel counts once
    train_cv = [v for v in train_cv if len(v.sampler)]
    if not train_cv:
        raise UserInputError(
            f"--corrections {corr_dir}: no corrected voxel with a segment id in the training boxes "
            f"({', '.join(ids[i] for i in tr)}): nothing to seed an episode on"
        )
    record = corrections_record(corr_dir, corr.meta, corr.review, ids, tr, va, voxels=voxels, boundary=bnd_rec)
    init_rec = init_record(init_dir, spec)
    fingerprint = finetune_fingerprint(
        "ffn-finetune", cfg, _NOT_TRAINING, init_rec, record, data, boundary=(bnd_rec or {}).get("model_sha256")
    )
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    tcfg = cfg.trainer
    summary: dict = {}
    with horovod_session(tcfg.distributed, tcfg.intra_op_threads, tcfg.inter_op_threads) as s:
        mine = data[s.rank :: s.size] if len(data) >= s.size else data
        replay = [load_training_volume(d, model, ex, seed) for d in mine]
        fresh = restart or not (out / "train" / "checkpoints" / "checkpoint").is_file()
        job: Any = FFNFinetuneJob(  # a TrainJob (its score_key is never None)
            model,
            ex,
            train_cv,
            val_cv,
            replay,
            seed,
            tcfg.checkpoint_every,
            fingerprint,
            cfg.augment,
            spec,
            fresh=fresh,
            validate_every=tcfg.validate_every,
        )
        what = f"{len(train_cv)} corrected box(es) ({len(va)} held back) from {init_dir}"
        result, stopped = run_finetune(job, tcfg, out, s, restart, what, ws_path, len(data))
        if stopped:
            return stopped
        if s.is_root:
            assert result.weights_file is not None
            arrays = wio.load_npz(result.weights_file)
            baseline = {k: v for k, v in _metrics_at(out / "train" / "log.jsonl", 0).items() if k != "score"}
            doc: dict[str, Any] = {
                "inference": json.loads(json.dumps(spec.inference)),
                "training": {
                    "command": portable_command(list(command or sys.argv)),
                    "ranks": result.ranks,
                    "global_batch": result.global_batch,
                    "steps": result.steps,
                    "seconds_last_run": result.seconds,
                    "examples_per_s_last_run": result.examples_per_s,
                    "data": [portable_path(d) for d in data],
                    "validation_data": [portable_path(corr_dir.resolve())],
                    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "config": json.loads(json.dumps(config_to_dict(cfg), default=str)),
                    "rank_weight_digests": result.rank_weight_digests,
                },
                "fine_tuning": fine_tuning_doc(init_rec, record),
                "validation": {
                    "episodes_f1_at_0.9": result.best_metrics or result.last_metrics,
                    "best_step": result.best_step,
                    "corrected_boxes_init": baseline,
                },
            }
            dtype = str((spec.doc.get("weights") or {}).get("dtype") or "float32")
            with staged_model_dir(out) as tmp:  # atomic: a kill never leaves a mixed directory
                write_model_dir(tmp, arrays, model, spec.voxel_size_nm, doc, float_dtype=dtype)
                write_model_card(tmp)
            summary = run_summary(out, result, result.seconds, doc["validation"])
            m = doc["validation"]["episodes_f1_at_0.9"]
            if m.get("f1") is not None:
                f1_0 = baseline.get("f1")
                summary["headline"] = (
                    f"; held-back boxes episode F1 {m['f1']:.4f}"
                    + (f" (init {f1_0:.4f})" if f1_0 is not None and math.isfinite(f1_0) else "")
                    + f", precision {m.get('precision', float('nan')):.4f}, recall {m.get('recall', float('nan')):.4f}"
                )
        s.barrier()
    return summary
