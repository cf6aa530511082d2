"""``connectome train synapse``: train the synapse 3D U-Net on ``connectome synth`` folders.

::

    connectome train synapse --data DIR [--data DIR ...] --val DIR [--val DIR ...] --out MODEL_DIR \
        [--config synapse_train.yaml] [--steps N] [--restart]
    mpiexec -n 8 --ppn 4 connectome train synapse ...     # data-parallel with Horovod (MPI or Gloo)

Each ``DIR`` holds ``truth.zarr/{raw, neurons, synapse_clefts}`` and ``truth/synapses.csv``.
The network (anisotropy-aware: no pooling along z at the first two levels) sees (z, y, x) crops
at ``data.input_voxel_size_nm`` in (y, x) (area-downsampled by an integer factor) and predicts
three channels: the cleft band, the post-synaptic side and the pre-synaptic side (targets in
:mod:`unet.synapse_data`; ``model.out_channels: 2`` trains the first two only).
Examples are centred on a cleft with probability ``data.positive_fraction``, zoomed in (y, x) by
``data.scale_range`` (calibre variation), flipped/rotated, shifted per section (residual
misalignment) and intensity-augmented (:mod:`unet.augment`, sections as channels).

Validation crops of the held-out ``--val`` volumes are scored every
``trainer.validate_every`` steps (voxel Dice of every channel; the best cleft Dice is kept).
At the end the exported model runs through the real inference path on every validation volume
and the detection rule (threshold + 26-connected components + minimum size) and partner rule
are calibrated there: the (threshold, minimum size) with the best synapse F1 (match within
``match_distance_nm``) are written into ``model.json`` and used by ``connectome synapses``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from connectome.errors import UserInputError
from connectome.training import TrainerConfig
from connectome.training.provenance import portable_path
from unet.augment import AugmentConfig
from unet.data import IntensityStats, adjust_stats
from unet.losses import LossConfig
from unet.model import UNetConfig
from unet.synapse_data import SynapseVolume, augment, crop_example, draw_centre, fill_bands, load_synapse_volume

log = logging.getLogger(__name__)

TASK = "synapse"
CHANNELS = ("cleft", "post", "pre")


@dataclass(frozen=True)
class SynapseDataConfig:
    #: the model's pixel size in (y, x), nm (8 nm data -> factor 2); z is not resampled
    input_voxel_size_nm: float = 16.0
    #: training crop (z, y, x) in model voxels (multiples of the pooling product)
    crop_zyx: tuple[int, int, int] = (16, 80, 80)
    #: random (y, x) zoom of a crop (log-uniform): calibre / pixel-size variation
    scale_range: tuple[float, float] = (0.8, 1.25)
    #: fraction of crops centred (with jitter of +-jitter_zyx) on a cleft voxel
    positive_fraction: float = 0.6
    jitter_zyx: tuple[int, int, int] = (4, 24, 24)
    #: target geometry (see unet.synapse_data)
    cleft_radius_nm: float = 16.0
    post_radius_nm: float = 64.0
    #: residual misalignment: probability of shifting every section by up to this many px
    section_shift_prob: float = 0.2
    section_shift_px: int = 2
    #: aligned-render fill: probability of black no-data bands on the crop's sides, their widest (model px)
    fill_band_prob: float = 0.25
    fill_band_max_px: int = 12
    #: random error added to the standardisation (fraction of the spread)
    stats_jitter: float = 0.05
    val_crop_zyx: tuple[int, int, int] = (16, 128, 128)
    val_crops_per_volume: int = 16

    def __post_init__(self):
        if not self.input_voxel_size_nm > 0:
            raise ValueError("input_voxel_size_nm must be > 0")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {[lo, hi]}")
        if not all(0 <= v <= 1 for v in (self.positive_fraction, self.section_shift_prob, self.fill_band_prob)):
            raise ValueError("positive_fraction, section_shift_prob and fill_band_prob must be in [0, 1]")
        if self.fill_band_max_px < 0:
            raise ValueError("fill_band_max_px must be >= 0")
        if self.cleft_radius_nm < 0 or self.post_radius_nm <= 0:
            raise ValueError("cleft_radius_nm must be >= 0 and post_radius_nm > 0")
        if min(self.crop_zyx) < 2 or min(self.val_crop_zyx) < 2 or self.val_crops_per_volume < 1:
            raise ValueError("crop sizes must be >= 2 and val_crops_per_volume >= 1")


def _default_unet() -> UNetConfig:
    # 16 nm (y, x) x 40 nm (z): pool (y, x) only at the first two levels (-> 64 x 64 x 40 nm, about
    # isotropic), then all three axes; 8 -> 64 filters. Three outputs: cleft, post side, pre side.
    return UNetConfig(
        ndim=3,
        depth=3,
        base_filters=8,
        max_filters=64,
        in_channels=1,
        out_channels=3,
        pool_zyx=((1, 2, 2), (1, 2, 2), (2, 2, 2)),
    )


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(
        steps=3000, batch_size=4, learning_rate=2e-3, warmup_steps=100, checkpoint_every=100, validate_every=250
    )


@dataclass(frozen=True)
class SynapseTrainConfig:
    model: UNetConfig = field(default_factory=_default_unet)
    trainer: TrainerConfig = field(default_factory=_default_trainer)
    data: SynapseDataConfig = field(default_factory=SynapseDataConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(elastic_prob=0.0))
    #: per channel: BCE (positives up-weighted: clefts are ~0.2 % of voxels) + soft Dice
    loss: LossConfig = field(default_factory=lambda: LossConfig(bce_weight=1.0, dice_weight=0.5, pos_weight=3.0))
    #: weight of the post-side (and pre-side) channel's loss relative to the cleft channel's
    post_loss_weight: float = 0.5
    pre_loss_weight: float = 0.5
    #: recommended inference tiling (model voxels, z y x), written into model.json: a core of 32 x 256 x 256
    #: model voxels (= the default block, 32 x 512 x 512 raw voxels) + the margins; ~1 GB per worker
    inference_tile_zyx: tuple[int, int, int] = (40, 304, 304)
    inference_margin_zyx: tuple[int, int, int] = (4, 24, 24)
    #: detection calibration on the validation volumes (best synapse F1)
    calibrate_threshold: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    calibrate_min_size: tuple[int, ...] = (25, 50, 100, 200, 400, 800)
    match_distance_nm: float = 200.0
    weights_dtype: Literal["float16", "float32"] = "float16"
    final_validation: bool = True

    def __post_init__(self):
        m = self.model
        if m.ndim != 3 or m.in_channels != 1 or m.out_channels not in (2, 3):
            raise ValueError(
                "the synapse model is 3D with 1 input and 2 (cleft, post) or 3 (cleft, post, pre) output channels"
            )
        mult = m.size_multiple()
        for name in ("inference_tile_zyx",):
            if any(v % k for v, k in zip(getattr(self, name), mult)):
                raise ValueError(f"{name} must be multiples of {list(mult)} per axis")
        for name in ("crop_zyx", "val_crop_zyx"):
            if any(v % k for v, k in zip(getattr(self.data, name), mult)):
                raise ValueError(f"data.{name} must be multiples of {list(mult)} per axis")
        if any(t <= 2 * p or p < 0 for t, p in zip(self.inference_tile_zyx, self.inference_margin_zyx)):
            raise ValueError("need 0 <= inference_margin_zyx < inference_tile_zyx / 2 per axis")
        if not self.calibrate_threshold or any(not 0 < t < 1 for t in self.calibrate_threshold):
            raise ValueError("calibrate_threshold values must be in (0, 1)")
        if not self.calibrate_min_size or min(self.calibrate_min_size) < 1:
            raise ValueError("calibrate_min_size values must be >= 1")
        if self.post_loss_weight < 0 or self.pre_loss_weight < 0 or not self.match_distance_nm > 0:
            raise ValueError("post_loss_weight and pre_loss_weight must be >= 0 and match_distance_nm > 0")

    @property
    def channels(self) -> tuple[str, ...]:
        return CHANNELS[: self.model.out_channels]


Config = SynapseTrainConfig

_NOT_TRAINING = (
    "trainer",
    "final_validation",
    "calibrate_threshold",
    "calibrate_min_size",
    "match_distance_nm",
    "weights_dtype",
    "inference_tile_zyx",
    "inference_margin_zyx",
)


class SynapseJob:
    """:class:`connectome.training.loop.TrainJob` for the synapse 3D U-Net."""

    score_key = "cleft_dice"

    def __init__(
        self, cfg: SynapseTrainConfig, train: Sequence[SynapseVolume], val: Sequence[SynapseVolume], fingerprint: dict
    ):
        self.cfg = cfg
        self.train, self.val = list(train), list(val)
        self._fingerprint = fingerprint
        rng = np.random.default_rng([cfg.trainer.seed, 7919])
        self.val_specs = []
        for v, vol in enumerate(self.val):
            for i in range(cfg.data.val_crops_per_volume):
                frac = 1.0 if i % 2 == 0 else 0.0
                self.val_specs.append((v, draw_centre(rng, vol, frac, cfg.data.jitter_zyx)))
        self._predict = None

    def fingerprint(self) -> dict:
        return self._fingerprint

    def build_model(self):
        from unet.model import build_unet

        return build_unet(self.cfg.model, name="synapse_unet")

    def loss(self, y_true, logits):
        from unet.losses import combined_loss

        weights = (1.0, self.cfg.post_loss_weight, self.cfg.pre_loss_weight)
        return sum(
            w * combined_loss(y_true[..., i : i + 1], logits[..., i : i + 1], self.cfg.loss)
            for i, w in enumerate(weights[: self.cfg.model.out_channels])
        )

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        vol = self.train[int(rng.integers(len(self.train)))]
        return self.example_from(vol, rng, self.cfg.data.positive_fraction)

    def example_from(
        self, vol: SynapseVolume, rng: np.random.Generator, positive_fraction: float, channels: Optional[int] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One augmented (image, targets) crop of ``vol``: centred on one of ``vol.positives``
        with probability ``positive_fraction``; the first ``channels`` target channels (default:
        the model's outputs)."""
        d = self.cfg.data
        lo, hi = d.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
        centre = draw_centre(rng, vol, positive_fraction, d.jitter_zyx)
        img, tgt = crop_example(vol, centre, d.crop_zyx, scale)
        img, tgt, g, noise = augment(img, tgt, rng, self.cfg.augment, d.section_shift_prob, d.section_shift_px)
        if d.fill_band_prob and d.fill_band_max_px and rng.random() < d.fill_band_prob:
            fill_bands(img, tgt, rng, d.fill_band_max_px)
        st = adjust_stats(vol.stats, g, noise)
        if d.stats_jitter:
            j = d.stats_jitter
            shift = float(rng.normal(0, j)) * (st.p95 - st.p5)
            grow = float(np.exp(rng.normal(0, j)))
            st = IntensityStats(
                st.p50 + shift - (st.p50 - st.p5) * grow, st.p50 + shift, st.p50 + shift + (st.p95 - st.p50) * grow
            )
        return st.standardize(img)[..., None], np.moveaxis(tgt[: channels or self.cfg.model.out_channels], 0, -1)

    def batch(self, step: int, rank: int, size: int, batch_size: int):
        rng = np.random.default_rng([self.cfg.trainer.seed, step, rank])
        pairs = [self.example(rng) for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(np.float32)

    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        import tensorflow as tf

        if self._predict is None:
            self._predict = tf.function(lambda x: tf.sigmoid(model(x, training=False)), reduce_retracing=True)
        sums = {f"{c}_{k}": 0.0 for c in self.cfg.channels for k in ("inter", "pred", "true")}
        for v, centre in self.val_specs[shard::num_shards]:
            vol = self.val[v]
            img, tgt = crop_example(vol, centre, self.cfg.data.val_crop_zyx)
            p = self._predict(tf.convert_to_tensor(vol.stats.standardize(img)[None, ..., None])).numpy()[0]
            for i, c in enumerate(self.cfg.channels):
                pb, tb = p[..., i] >= 0.5, tgt[i] >= 0.5
                sums[f"{c}_inter"] += float(np.count_nonzero(pb & tb))
                sums[f"{c}_pred"] += float(np.count_nonzero(pb))
                sums[f"{c}_true"] += float(np.count_nonzero(tb))
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        out = {}
        for c in self.cfg.channels:
            i, p, t = sums[f"{c}_inter"], sums[f"{c}_pred"], sums[f"{c}_true"]
            out[f"{c}_dice"] = 2 * i / (p + t) if (p + t) else 1.0
            out[f"{c}_precision"] = i / p if p else float("nan")
            out[f"{c}_recall"] = i / t if t else float("nan")
        return out


# ---------------------------------------------------------------------------------------------
# calibration and export


def calibrate(
    model_dir: Path, vols_paths: Sequence[Path], cfg: SynapseTrainConfig
) -> tuple[float, int, list[dict], dict]:
    """Run the exported model on each validation volume (the stage's in-memory path), then pick
    the (threshold, minimum size) with the best pooled synapse F1; returns them and per-volume rows."""
    from connectome.synapses.predict import SynapsesConfig, detect_arrays, predict_arrays, read_truth, score_detection

    use_pre = SynapsesConfig().use_pre_channel  # the partner rule the stage uses by default

    preds = []
    for p in vols_paths:
        raw, neurons, vs, truth = read_truth(p)
        t0 = time.perf_counter()
        prob, post, pre = predict_arrays(raw, vs, model_dir)
        preds.append((p, raw.shape, vs, neurons, truth, prob, post, pre, time.perf_counter() - t0))
    grid = {}
    for t in cfg.calibrate_threshold:
        for m in cfg.calibrate_min_size:
            rows = []
            for _p, _shape, vs, neurons, truth, prob, post, pre, _sec in preds:
                det = detect_arrays(prob, post, neurons, t, m, vs, pre=pre if use_pre else None)
                rows.append(score_detection(det, truth, vs, cfg.match_distance_nm))
            tp = sum(r["n_matched"] for r in rows)
            n = sum(r["n_predicted"] + r["n_true"] for r in rows)
            grid[(t, m)] = (2 * tp / n if n else 0.0, rows)
    best = max(grid, key=lambda k: (grid[k][0], -abs(k[0] - 0.5), -k[1]))
    log.info("detection calibration: best threshold %.2f, min size %d: F1 %.4f", best[0], best[1], grid[best][0])
    out = []
    for (p, shape, _vs, *_rest, sec), row in zip(preds, grid[best][1]):
        out.append(
            {
                "path": portable_path(p),
                "shape_zyx": list(shape),
                "seconds_predict": round(sec, 1),
                **{k: (round(v, 5) if isinstance(v, float) and v == v else v) for k, v in row.items()},
            }
        )
    table = {f"{t:g}/{m}": round(f, 4) for (t, m), (f, _) in grid.items()}
    return float(best[0]), int(best[1]), out, table


def train_synapse(
    data_dirs: Sequence[str | Path],
    out_dir: str | Path,
    cfg: SynapseTrainConfig = SynapseTrainConfig(),
    val_dirs: Sequence[str | Path] = (),
    restart: bool = False,
    command: Optional[Sequence[str]] = None,
    overwrite: bool = False,
) -> dict:
    """Train (or resume) and export ``out_dir/{model.json, weights.npz, MODEL_CARD.md}`` (atomically; a
    finished ``out_dir`` is refused unless ``overwrite``)."""
    from connectome.training import weights as wio
    from connectome.training.distributed import horovod_session
    from connectome.training.export import staged_model_dir
    from connectome.training.loop import run_training
    from unet.modeldir import write_model_dir
    from unet.train import _describe, prepare_run, training_record, unet3d_doc

    data, val, out, fingerprint = prepare_run(
        TASK, cfg, data_dirs, val_dirs, out_dir, _NOT_TRAINING, overwrite=overwrite
    )
    tcfg, d = cfg.trainer, cfg.data
    summary: dict = {}

    def load(p, what):
        return load_synapse_volume(p, d.input_voxel_size_nm, d.cleft_radius_nm, d.post_radius_nm, tcfg.seed, what=what)

    with horovod_session(tcfg.distributed, tcfg.intra_op_threads, tcfg.inter_op_threads) as s:
        mine = data[s.rank :: s.size] if len(data) >= s.size else data
        train = [load(p, "--data") for p in mine]
        vols_val = [load(p, "--val") for p in val]
        if not any(len(v.positives) for v in train):
            raise UserInputError("--data: the training volumes hold no synaptic clefts")
        job = SynapseJob(cfg, train, vols_val, fingerprint)
        if s.is_root:
            log.info(
                "training data: %s",
                ", ".join(f"{v.path.name} {list(v.image.shape)} ({v.synapses} synapses)" for v in train),
            )
        result = run_training(job, tcfg, out / "train", s, restart=restart)
        if result.stopped_by_signal:
            s.barrier()
            return {"stopped": True, "steps": result.steps, "total_steps": tcfg.steps, "model_dir": str(out)}
        if s.is_root:
            arrays = wio.load_npz(result.weights_file)
            doc = {
                **unet3d_doc(TASK, cfg, d.input_voxel_size_nm, train[0].voxel_size_nm, arrays, result),
                "output": {
                    "activation": "sigmoid",
                    "channels": list(cfg.channels),
                    "threshold": 0.5,
                    "min_size_voxels": 50,
                    "meaning": (
                        "channel 0: synaptic cleft (band of +-%g nm); channel 1: postsynaptic side "
                        "(the post neuron within %g nm of the cleft)" % (d.cleft_radius_nm, d.post_radius_nm)
                    )
                    + (
                        "; channel 2: presynaptic side (the pre neuron within %g nm of the cleft)" % d.post_radius_nm
                        if cfg.model.out_channels == 3
                        else ""
                    ),
                },
                "training": training_record(
                    result,
                    cfg,
                    out,
                    command,
                    [{**_describe(p), "synapses": v.synapses} for p, v in zip(mine, train)],
                    [_describe(p) for p in val],
                ),
                "validation": {"crops_at_model_resolution": result.best_metrics or result.last_metrics},
            }
            with staged_model_dir(out) as tmp:  # atomic: a kill never leaves a mixed directory
                write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                if cfg.final_validation and val:
                    t, m, rows, table = calibrate(tmp, val, cfg)
                    doc["output"]["threshold"], doc["output"]["min_size_voxels"] = t, m
                    doc["validation"].update(
                        {
                            "volumes": rows,
                            "f1_by_threshold_and_min_size": table,
                            "match_distance_nm": cfg.match_distance_nm,
                            "calibrated_on_these_volumes": True,
                        }
                    )
                    write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                write_model_card(tmp)
            summary = {
                "model_dir": str(out),
                "steps": result.steps,
                "ranks": result.ranks,
                "seconds": doc["training"]["seconds"],
                "validation": doc["validation"],
            }
        s.barrier()
    return summary


def write_model_card(model_dir: str | Path) -> Path:
    """MODEL_CARD.md generated from model.json (no hand-typed numbers)."""
    import json

    p = Path(model_dir)
    doc = json.loads((p / "model.json").read_text())
    a, t, v, w, o = doc["architecture"], doc["training"], doc.get("validation", {}), doc["weights"], doc["output"]
    c = t["config"]
    lines = [
        "# Synapse model (3D U-Net)",
        "",
        "Predicts, per voxel, the probability of a synaptic cleft and of the postsynaptic side next to it"
        + (" and of the presynaptic side" if "pre" in o["channels"] else "")
        + "; "
        "`connectome synapses` thresholds the cleft channel into synapses (26-connected components, minimum "
        "size, consistent across blocks) and assigns pre/post partners from the segmentation with the "
        + ("post and pre channels" if "pre" in o["channels"] else "post channel")
        + " (connectome/synapses/partners.py).",
        "",
        "## Model",
        "",
        f"- 3D U-Net, {a['depth']} poolings {a['pool_zyx']} (z, y, x), filters {a['base_filters']} -> "
        f"{min(a['base_filters'] * 2 ** a['depth'], a['max_filters'])}, '{a['padding']}' padding, {w['parameters']:,} "
        f"parameters, weights {w['dtype']} ({w['size_bytes'] / 1e6:.2f} MB, sha256 `{w['sha256'][:16]}...`).",
        f"- Input: raw at {doc['input']['voxel_size_nm_yx'][0]:g} nm in (y, x) (area-downsampled), z as acquired; "
        "standardised with the volume's 5/50/95th percentiles.",
        f"- Output: {', '.join(o['channels'])}; detection threshold {o['threshold']:g}, minimum size "
        f"{o['min_size_voxels']} voxels (full resolution)"
        + (" (calibrated on the validation volumes)." if v.get("calibrated_on_these_volumes") else "."),
        f"- Inference: tiles {doc['inference']['tile_zyx']} model voxels with margins {doc['inference']['margin_zyx']} "
        "on a global grid (blockwise == whole volume), bilinear (y, x) upsampling.",
        "",
        "## Training",
        "",
        "```",
        t["command"],
        "```",
        "",
        f"- {t['steps']} steps x {t['ranks']} rank(s) x batch {t['batch_per_rank']} = {t['examples_seen']:,} crops "
        f"{c['data']['crop_zyx']}, peak learning rate {t['peak_learning_rate']:g}; loss per channel BCE "
        f"(positive weight {c['loss']['pos_weight']:g}) + {c['loss']['dice_weight']:g} x soft Dice, post channel "
        f"x {c['post_loss_weight']:g}"
        + (f", pre channel x {c.get('pre_loss_weight', 0.5):g}" if "pre" in o["channels"] else "")
        + ".",
        f"- Wall time {t['seconds'] / 60:.1f} min ({t['runs']} run(s)); TensorFlow {t['versions'].get('tensorflow')}, "
        f"Horovod {t['versions'].get('horovod', '-')}.",
        f"- Augmentation: (y, x) zoom {c['data']['scale_range']}, rotations/flips, section shifts "
        f"(p {c['data']['section_shift_prob']:g}, +-{c['data']['section_shift_px']} px)"
        + (
            f", aligned-render fill bands (p {c['data']['fill_band_prob']:g}, <= {c['data']['fill_band_max_px']} px)"
            if c['data'].get('fill_band_prob')
            else ""
        )
        + ", contrast/brightness/gamma, "
        "illumination, blur, white and correlated noise, section defects.",
        "- Training data (`connectome synth`):",
    ]
    for dd in t["data"]:
        lines.append(
            f"  - seed {dd['seed']}, preset {dd['preset']}, shape {dd['shape_zyx']}, {dd.get('synapses', '?')} synapses"
        )
    lines.append("- Validation data (held-out seeds; used for the checkpoint and the detection calibration):")
    for dd in t["validation_data"]:
        lines.append(f"  - seed {dd['seed']}, preset {dd['preset']}, shape {dd['shape_zyx']}")
    crops = v.get("crops_at_model_resolution") or {}
    lines += ["", "## Validation", ""]
    if crops:
        lines.append(
            f"- Crops at model resolution (step {w.get('from_step')}): cleft Dice "
            f"{crops.get('cleft_dice', float('nan')):.4f}, post Dice {crops.get('post_dice', float('nan')):.4f}"
            + (f", pre Dice {crops['pre_dice']:.4f}" if "pre_dice" in crops else "")
            + "."
        )
    if v.get("volumes"):
        lines += [
            f"- Whole volumes, synapses matched within {v['match_distance_nm']:g} nm, partners with the true "
            "segmentation:",
            "",
            "| volume | shape (z,y,x) | true | predicted | precision | recall | F1 | partner accuracy |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in v["volumes"]:
            lines.append(
                f"| {Path(r['path']).name} | {r['shape_zyx']} | {r['n_true']} | {r['n_predicted']} | "
                f"{r['precision']} | {r['recall']} | {r['f1']} | {r['partner_accuracy']} |"
            )
    test = doc.get("test")
    if test:
        lines += [
            "",
            "## Test (unseen seeds)",
            "",
            f"Seeds never used for training, validation or calibration; synapses matched within "
            f"{test.get('match_distance_nm', 200):g} nm; partners and edges with the given segmentation "
            "(`truth`: the true neurons; `baseline`: `connectome segment --method baseline`).",
            "",
            "```",
            *test["commands"],
            "```",
            "",
            "| volume | segmentation | true | predicted | precision | recall | F1 | partner accuracy | "
            "edge F1 (all) | edges >= 2 synapses | edge F1 (>= 2) | Mvox/s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in test["volumes"]:
            lines.append(
                f"| {r['name']} | {r['segmentation']} | {r.get('n_true')} | {r.get('n_predicted')} | "
                f"{r.get('precision')} | {r.get('recall')} | {r['f1']} | {r['partner_accuracy']} | "
                f"{r.get('edge_f1')} | {r.get('edges_true_min2')} | {r.get('edge_f1_min2')} | "
                f"{r.get('mvox_per_s')} | {r.get('peak_rss_mib')} |"
            )
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- Serial-section EM of neuropil at 4-16 nm pixels (resampled to the model's pixel size by an integer "
        "factor); trained on synthetic data only, with strong augmentation. Check it on a labelled sample of "
        "real data before trusting it.",
        "",
    ]
    path = p / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
