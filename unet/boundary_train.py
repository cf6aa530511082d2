"""``connectome train boundary``: train the boundary 3D U-Net on ``connectome synth`` folders.

::

    connectome train boundary --data DIR [--data DIR ...] --val DIR [--val DIR ...] --out MODEL_DIR \\
        [--config boundary_train.yaml] [--steps N] [--restart]
    mpiexec -n 8 --ppn 4 connectome train boundary ...     # data-parallel with Horovod (MPI or Gloo)

Each ``DIR`` holds ``truth.zarr/{raw, neurons}``. The network (the shared 3D U-Net, anisotropy
aware: no pooling along z at the first two levels) sees (z, y, x) crops at
``data.input_voxel_size_nm`` in (y, x) and predicts four channels: a boundary probability and
the nearest-neighbour affinities along z, y, x (:mod:`unet.boundary_data`). Both kinds are
trained at once so that the segmentation can be built from either and the better one chosen
by measurement (``connectome segment --method watershed``, :mod:`ffn.watershed`).

Augmentation: (y, x) zoom (calibre / pixel-size variation), rotations/flips, per-section shifts
(residual misalignment), contrast/brightness/gamma, illumination, blur, white and correlated
noise, and missing / shifted / blank sections (:mod:`unet.augment`, sections as channels).
Validation crops of the held-out ``--val`` volumes are scored every ``trainer.validate_every``
steps (boundary Dice, affinity accuracy); the best mean of boundary Dice and affinity
balanced accuracy is kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from connectome.training import TrainerConfig
from unet.augment import AugmentConfig
from unet.boundary_data import (
    CHANNELS,
    BoundaryVolume,
    augment,
    crop_example,
    draw_centre,
    load_boundary_volume,
    targets,
)
from unet.data import IntensityStats, adjust_stats
from unet.losses import LossConfig
from unet.model import UNetConfig

log = logging.getLogger(__name__)

TASK = "boundary"


@dataclass(frozen=True)
class BoundaryDataConfig:
    #: the model's pixel size in (y, x), nm (8 nm data -> factor 2); z is not resampled
    input_voxel_size_nm: float = 16.0
    #: training crop (z, y, x) in model voxels (multiples of the pooling product)
    crop_zyx: tuple[int, int, int] = (16, 80, 80)
    #: random (y, x) zoom of a crop (log-uniform): calibre / pixel-size variation
    scale_range: tuple[float, float] = (0.8, 1.25)
    #: residual misalignment: probability of shifting every section by up to this many px
    section_shift_prob: float = 0.3
    section_shift_px: int = 2
    #: random error added to the standardisation (fraction of the spread)
    stats_jitter: float = 0.05
    val_crop_zyx: tuple[int, int, int] = (16, 128, 128)
    val_crops_per_volume: int = 8

    def __post_init__(self):
        if not self.input_voxel_size_nm > 0:
            raise ValueError("input_voxel_size_nm must be > 0")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {[lo, hi]}")
        if not 0 <= self.section_shift_prob <= 1 or self.section_shift_px < 0:
            raise ValueError("section_shift_prob must be in [0, 1] and section_shift_px >= 0")
        if min(self.crop_zyx) < 2 or min(self.val_crop_zyx) < 2 or self.val_crops_per_volume < 1:
            raise ValueError("crop sizes must be >= 2 and val_crops_per_volume >= 1")


def _default_unet() -> UNetConfig:
    # 16 nm (y, x) x 40 nm (z): pool (y, x) only at the first two levels, then all three axes.
    return UNetConfig(
        ndim=3,
        depth=3,
        base_filters=8,
        max_filters=64,
        in_channels=1,
        out_channels=4,
        pool_zyx=((1, 2, 2), (1, 2, 2), (2, 2, 2)),
    )


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(
        steps=3000, batch_size=4, learning_rate=2e-3, warmup_steps=100, checkpoint_every=100, validate_every=250
    )


@dataclass(frozen=True)
class BoundaryTrainConfig:
    model: UNetConfig = field(default_factory=_default_unet)
    trainer: TrainerConfig = field(default_factory=_default_trainer)
    data: BoundaryDataConfig = field(default_factory=BoundaryDataConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(elastic_prob=0.0, defect_prob=0.12))
    #: boundary channel: BCE + soft Dice
    loss: LossConfig = field(default_factory=lambda: LossConfig(bce_weight=1.0, dice_weight=0.5))
    #: weight of the (BCE) loss of the three affinity channels together, relative to the boundary's
    affinity_loss_weight: float = 1.0
    #: recommended inference tiling (model voxels, z y x), written into model.json
    inference_tile_zyx: tuple[int, int, int] = (40, 304, 304)
    inference_margin_zyx: tuple[int, int, int] = (4, 24, 24)
    weights_dtype: Literal["float16", "float32"] = "float16"

    def __post_init__(self):
        m = self.model
        if m.ndim != 3 or m.in_channels != 1 or m.out_channels != len(CHANNELS):
            raise ValueError(
                f"the boundary model is 3D with 1 input and {len(CHANNELS)} output channels ({', '.join(CHANNELS)})"
            )
        mult = m.size_multiple()
        if any(v % k for v, k in zip(self.inference_tile_zyx, mult)):
            raise ValueError(f"inference_tile_zyx must be multiples of {list(mult)} per axis")
        for name in ("crop_zyx", "val_crop_zyx"):
            if any(v % k for v, k in zip(getattr(self.data, name), mult)):
                raise ValueError(f"data.{name} must be multiples of {list(mult)} per axis")
        if any(t <= 2 * p or p < 0 for t, p in zip(self.inference_tile_zyx, self.inference_margin_zyx)):
            raise ValueError("need 0 <= inference_margin_zyx < inference_tile_zyx / 2 per axis")
        if self.affinity_loss_weight < 0:
            raise ValueError("affinity_loss_weight must be >= 0")


Config = BoundaryTrainConfig

_NOT_TRAINING = ("trainer", "weights_dtype", "inference_tile_zyx", "inference_margin_zyx")


class BoundaryJob:
    """:class:`connectome.training.loop.TrainJob` for the boundary 3D U-Net."""

    score_key = "score"

    def __init__(
        self,
        cfg: BoundaryTrainConfig,
        train: Sequence[BoundaryVolume],
        val: Sequence[BoundaryVolume],
        fingerprint: dict,
    ):
        self.cfg = cfg
        self.train, self.val = list(train), list(val)
        self._fingerprint = fingerprint
        rng = np.random.default_rng([cfg.trainer.seed, 7927])
        self.val_specs = [
            (v, draw_centre(rng, vol)) for v, vol in enumerate(self.val) for _ in range(cfg.data.val_crops_per_volume)
        ]
        self._predict = None

    def fingerprint(self) -> dict:
        return self._fingerprint

    def build_model(self):
        from unet.model import build_unet

        return build_unet(self.cfg.model, name="boundary_unet")

    def loss(self, y_true, logits):
        from unet.losses import bce, combined_loss

        total = combined_loss(y_true[..., :1], logits[..., :1], self.cfg.loss)
        if self.cfg.affinity_loss_weight:
            total += self.cfg.affinity_loss_weight * bce(y_true[..., 1:], logits[..., 1:])
        return total

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        d = self.cfg.data
        vol = self.train[int(rng.integers(len(self.train)))]
        lo, hi = d.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
        img, bnd, lab = crop_example(vol, draw_centre(rng, vol), d.crop_zyx, scale)
        img, bnd, lab, g, noise = augment(
            img, bnd, lab, rng, self.cfg.augment, d.section_shift_prob, d.section_shift_px
        )
        st = adjust_stats(vol.stats, g, noise)
        if d.stats_jitter:
            j = d.stats_jitter
            shift = float(rng.normal(0, j)) * (st.p95 - st.p5)
            grow = float(np.exp(rng.normal(0, j)))
            st = IntensityStats(
                st.p50 + shift - (st.p50 - st.p5) * grow, st.p50 + shift, st.p50 + shift + (st.p95 - st.p50) * grow
            )
        return st.standardize(img)[..., None], targets(bnd, lab)

    def batch(self, step: int, rank: int, size: int, batch_size: int):
        rng = np.random.default_rng([self.cfg.trainer.seed, step, rank])
        pairs = [self.example(rng) for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(np.float32)

    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        import tensorflow as tf

        if self._predict is None:
            self._predict = tf.function(lambda x: tf.sigmoid(model(x, training=False)), reduce_retracing=True)
        sums = {k: 0.0 for k in ("b_inter", "b_pred", "b_true", "a_tp", "a_pos", "a_tn", "a_neg")}
        for v, centre in self.val_specs[shard::num_shards]:
            vol = self.val[v]
            img, bnd, lab = crop_example(vol, centre, self.cfg.data.val_crop_zyx)
            tgt = targets(bnd, lab)
            p = self._predict(tf.convert_to_tensor(vol.stats.standardize(img)[None, ..., None])).numpy()[0]
            pb, tb = p[..., 0] >= 0.5, tgt[..., 0] >= 0.5
            sums["b_inter"] += float(np.count_nonzero(pb & tb))
            sums["b_pred"] += float(np.count_nonzero(pb))
            sums["b_true"] += float(np.count_nonzero(tb))
            pa, ta = p[..., 1:] >= 0.5, tgt[..., 1:] >= 0.5
            sums["a_tp"] += float(np.count_nonzero(pa & ta))
            sums["a_pos"] += float(np.count_nonzero(ta))
            sums["a_tn"] += float(np.count_nonzero(~pa & ~ta))
            sums["a_neg"] += float(np.count_nonzero(~ta))
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        dice = 2 * sums["b_inter"] / (sums["b_pred"] + sums["b_true"]) if sums["b_pred"] + sums["b_true"] else 1.0
        tpr = sums["a_tp"] / sums["a_pos"] if sums["a_pos"] else 1.0
        tnr = sums["a_tn"] / sums["a_neg"] if sums["a_neg"] else 1.0
        return {
            "boundary_dice": dice,
            "affinity_tpr": tpr,
            "affinity_tnr": tnr,
            "affinity_balanced_accuracy": 0.5 * (tpr + tnr),
            "score": 0.5 * (dice + 0.5 * (tpr + tnr)),
        }


def train_boundary(
    data_dirs: Sequence[str | Path],
    out_dir: str | Path,
    cfg: BoundaryTrainConfig = BoundaryTrainConfig(),
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
    with horovod_session(tcfg.distributed, tcfg.intra_op_threads, tcfg.inter_op_threads) as s:
        mine = data[s.rank :: s.size] if len(data) >= s.size else data
        train = [load_boundary_volume(p, d.input_voxel_size_nm, "--data") for p in mine]
        vols_val = [load_boundary_volume(p, d.input_voxel_size_nm, "--val") for p in val]
        job = BoundaryJob(cfg, train, vols_val, fingerprint)
        if s.is_root:
            log.info("training data: %s", ", ".join(f"{v.path.name} {list(v.image.shape)}" for v in train))
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
                    "channels": list(CHANNELS),
                    "threshold": 0.5,
                    "meaning": (
                        "channel 0: boundary (membrane or extracellular space) probability; channels "
                        "1-3: affinity of a voxel to its predecessor along z, y, x (same neuron)"
                    ),
                },
                "training": training_record(
                    result, cfg, out, command, [_describe(p) for p in mine], [_describe(p) for p in val]
                ),
                "validation": {"crops_at_model_resolution": result.best_metrics or result.last_metrics},
            }
            with staged_model_dir(out) as tmp:  # atomic: a kill never leaves a mixed directory
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
    p = Path(model_dir)
    doc = json.loads((p / "model.json").read_text())
    a, t, v, w, o = doc["architecture"], doc["training"], doc.get("validation", {}), doc["weights"], doc["output"]
    c = t["config"]
    crops = v.get("crops_at_model_resolution") or {}
    lines = [
        "# Boundary model (3D U-Net)",
        "",
        "Predicts, per voxel, the probability of a cell boundary (membrane or extracellular space) and the "
        "affinities of the voxel to its predecessor along z, y and x. `connectome predict-boundaries` writes them "
        "to `WS/volume.zarr/boundary`; `connectome segment --method watershed` (and the FFN's boundary input "
        "channel) use them.",
        "",
        "## Model",
        "",
        f"- 3D U-Net, {a['depth']} poolings {a['pool_zyx']} (z, y, x), filters {a['base_filters']} -> "
        f"{min(a['base_filters'] * 2 ** a['depth'], a['max_filters'])}, '{a['padding']}' padding, {w['parameters']:,} "
        f"parameters, weights {w['dtype']} ({w['size_bytes'] / 1e6:.2f} MB, sha256 `{w['sha256'][:16]}...`).",
        f"- Input: raw at {doc['input']['voxel_size_nm_yx'][0]:g} nm in (y, x) (area-downsampled), z as acquired; "
        "standardised with the volume's 5/50/95th percentiles.",
        f"- Output channels: {', '.join(o['channels'])} (sigmoid).",
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
        f"{c['data']['crop_zyx']}, peak learning rate {t['peak_learning_rate']:g}; loss: boundary BCE + "
        f"{c['loss']['dice_weight']:g} x soft Dice, affinities BCE x {c['affinity_loss_weight']:g}.",
        f"- Wall time {t['seconds'] / 60:.1f} min ({t['runs']} run(s)); TensorFlow {t['versions'].get('tensorflow')}, "
        f"Horovod {t['versions'].get('horovod', '-')}.",
        f"- Augmentation: (y, x) zoom {c['data']['scale_range']}, rotations/flips, section shifts "
        f"(p {c['data']['section_shift_prob']:g}, +-{c['data']['section_shift_px']} px), contrast "
        f"{c['augment']['contrast_range']}, gamma {c['augment']['gamma_range']}, illumination, blur "
        f"{c['augment']['blur_sigma_range']} px, white and correlated noise, missing/shifted/blank sections "
        f"(p {c['augment']['defect_prob']:g}).",
        "- Training data (`connectome synth`):",
    ]
    for dd in t["data"]:
        lines.append(f"  - seed {dd['seed']}, preset {dd['preset']}, shape {dd['shape_zyx']}")
    lines.append("- Validation data (held-out seeds; used for the checkpoint choice):")
    for dd in t["validation_data"]:
        lines.append(f"  - seed {dd['seed']}, preset {dd['preset']}, shape {dd['shape_zyx']}")
    lines += ["", "## Validation", ""]
    if crops:
        lines.append(
            f"- Crops at model resolution (step {w.get('from_step')}): boundary Dice "
            f"{crops.get('boundary_dice', float('nan')):.4f}, affinity true-positive rate "
            f"{crops.get('affinity_tpr', float('nan')):.4f}, true-negative rate "
            f"{crops.get('affinity_tnr', float('nan')):.4f}."
        )
    test = doc.get("test")
    if test:
        lines += ["", "## Test (unseen seeds)", "", *test.get("text", [])]
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
