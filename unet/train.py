"""``connectome train vessel``: train the 2D vessel U-Net on ``connectome synth`` folders.

::

    connectome train vessel --data DIR [--data DIR ...] --val DIR [--val DIR ...] --out MODEL_DIR \
        [--config vessel_train.yaml] [--steps N] [--restart]
    horovodrun -np 2 --gloo connectome train vessel ...        # data-parallel, Gloo
    mpiexec -n 8 --ppn 4 connectome train vessel ...           # data-parallel, MPI (PBS)

Each ``DIR`` holds ``truth.zarr`` with ``raw`` (uint8) and ``vessels`` (uint8 0/1) and the
attribute ``voxel_size_nm``. Training examples are tiles of ``data.tile_px`` model pixels
(sections area-downsampled to ``data.input_voxel_size_nm``, ``data.z_context`` sections as
channels) at a random zoom in ``data.scale_range``, centred on a vessel voxel with probability
``data.positive_fraction``, augmented (:mod:`unet.augment`) and standardised with the volume's
intensity percentiles (mapped through the same intensity augmentation). With several ranks
and at least as many ``--data`` folders as ranks, rank r loads folders r, r+N, ... only.

Validation volumes (held-out seeds; a seed that is also in ``--data`` is refused) give a
fixed set of tiles scored every ``trainer.validate_every`` steps (BCE, IoU, Dice at the model's
resolution); the weights with the best tile IoU are exported. At the end the exported model
is run through the real inference path (tiling, upsampling, post-processing) on every
validation volume and its full-resolution IoU is recorded.

``MODEL_DIR`` gets ``model.json`` + ``weights.npz`` (:mod:`unet.modeldir`), a generated
``MODEL_CARD.md``, and ``train/`` (checkpoints, TensorBoard, log.jsonl; see
:mod:`connectome.training.loop`). Killing and rerunning the command resumes from the last
checkpoint; rerunning a finished run only re-exports.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from connectome.config import config_to_dict
from connectome.errors import UserInputError
from connectome.training import TrainerConfig
from connectome.training.provenance import portable_command, portable_path
from unet.augment import AugmentConfig, geometric_augment, intensity_augment
from unet.data import (
    IntensityStats,
    LabelledVolume,
    adjust_stats,
    crop_example,
    draw_spec,
    intensity_stats,
    load_synth_volume,
    validation_specs,
    volume_factor,
)
from unet.infer import PostprocessConfig
from unet.losses import LossConfig
from unet.model import UNetConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VesselDataConfig:
    #: the model's pixel size in (y, x), nm (8 nm data -> factor 2)
    input_voxel_size_nm: float = 16.0
    #: adjacent sections stacked as input channels (odd)
    z_context: int = 3
    #: training tile edge in model pixels (a multiple of 2**depth): 320 x 16 nm = 5 um
    tile_px: int = 320
    #: random zoom: one model pixel = factor * s raw pixels, s log-uniform in this range
    scale_range: tuple[float, float] = (0.6, 1.6)
    #: fraction of examples centred (with jitter) on a vessel voxel
    positive_fraction: float = 0.5
    val_tile_px: int = 512
    val_tiles_per_volume: int = 16
    #: with >= as many --data folders as ranks, each rank loads only its share
    shard_volumes: bool = True
    #: random error added to the standardisation (fraction of the spread)
    stats_jitter: float = 0.05

    def __post_init__(self):
        if not self.input_voxel_size_nm > 0:
            raise ValueError("input_voxel_size_nm must be > 0")
        if self.z_context < 1 or self.z_context % 2 == 0:
            raise ValueError(f"z_context must be a positive odd number, got {self.z_context}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {[lo, hi]}")
        if not 0 <= self.positive_fraction <= 1:
            raise ValueError("positive_fraction must be in [0, 1]")
        if self.tile_px < 8 or self.val_tile_px < 8 or self.val_tiles_per_volume < 1:
            raise ValueError("tile_px and val_tile_px must be >= 8, val_tiles_per_volume >= 1")


def _default_unet() -> UNetConfig:
    # 16 nm input, 5 poolings (bottom at 512 nm/px), 8 -> 128 filters: the 16 nm level resolves the
    # thin outer wall / basal lamina that bounds the vessel label; the deep levels see whole lumens
    return UNetConfig(ndim=2, depth=5, base_filters=8, max_filters=128, in_channels=3)


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(
        steps=2000, batch_size=4, learning_rate=1e-3, warmup_steps=100, checkpoint_every=100, validate_every=200
    )


@dataclass(frozen=True)
class VesselTrainConfig:
    model: UNetConfig = field(default_factory=_default_unet)
    trainer: TrainerConfig = field(default_factory=_default_trainer)
    data: VesselDataConfig = field(default_factory=VesselDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: BCE only by default: a proper scoring rule, so boundary pixels learn their true vessel
    #: fraction and the bilinearly upsampled 0.5 contour lands at sub-pixel accuracy (a Dice
    #: term pulls boundary fractions towards 0.5-0.8 and over-segments, measured on validation)
    loss: LossConfig = field(default_factory=lambda: LossConfig(bce_weight=1.0, dice_weight=0.0))
    #: recommended inference tiling, written into model.json: the margin must cover the
    #: network's effective receptive field (measured on a depth-4 network: a 32 px margin left
    #: seams up to 0.8 in probability across large lumens, 96 px gave the bits of a whole-section
    #: prediction; depth 5 doubles the field)
    inference_tile_px: int = 1024
    inference_margin_px: int = 192
    #: probability threshold written into model.json (see calibrate_threshold)
    threshold: float = 0.5
    #: pick the threshold from this grid that maximises the mean full-resolution IoU on the
    #: validation volumes (held-out seeds) and write that into model.json instead
    calibrate_threshold: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
    #: post-processing used for the final full-volume validation
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    weights_dtype: Literal["float16", "float32"] = "float16"
    #: run the exported model through the inference path on the validation volumes
    final_validation: bool = True

    def __post_init__(self):
        if self.model.ndim != 2:
            raise ValueError("the vessel model is 2D (model.ndim must be 2)")
        if self.model.in_channels != self.data.z_context:
            raise ValueError(
                f"model.in_channels ({self.model.in_channels}) must equal data.z_context ({self.data.z_context})"
            )
        if self.model.out_channels != 1:
            raise ValueError("model.out_channels must be 1")
        mult = self.model.size_multiple()[-1]
        for name in ("inference_tile_px",):
            if getattr(self, name) % mult:
                raise ValueError(f"{name} must be a multiple of {mult} (2**depth)")
        if self.data.tile_px % mult or self.data.val_tile_px % mult:
            raise ValueError(f"data.tile_px and data.val_tile_px must be multiples of {mult} (2**depth)")
        if self.inference_tile_px <= 2 * self.inference_margin_px or self.inference_margin_px < 1:
            raise ValueError("need 1 <= inference_margin_px < inference_tile_px / 2")
        if not 0 < self.threshold < 1 or any(not 0 < t < 1 for t in self.calibrate_threshold):
            raise ValueError("threshold and calibrate_threshold values must be in (0, 1)")


Config = VesselTrainConfig

#: config fields that do not change what is trained (a finished or resumed run may change them)
_NOT_TRAINING = (
    "trainer",
    "final_validation",
    "calibrate_threshold",
    "threshold",
    "postprocess",
    "weights_dtype",
    "inference_tile_px",
    "inference_margin_px",
)


# ---------------------------------------------------------------------------------------------
# the job


class VesselJob:
    """:class:`connectome.training.loop.TrainJob` for the vessel U-Net."""

    score_key = "iou"

    def __init__(
        self, cfg: VesselTrainConfig, train: Sequence[LabelledVolume], val: Sequence[LabelledVolume], fingerprint: dict
    ):
        self.cfg = cfg
        self.train, self.val = list(train), list(val)
        self._fingerprint = fingerprint
        vs = cfg.data.input_voxel_size_nm
        self.factor = {str(v.path): volume_factor(v, vs) for v in self.train + self.val}
        self.stats = {str(v.path): intensity_stats(v.raw, self.factor[str(v.path)]) for v in self.train + self.val}
        self.val_specs = validation_specs(
            self.val, self.factor_of, cfg.data.val_tile_px, cfg.data.val_tiles_per_volume, cfg.trainer.seed
        )
        self._predict = None

    def factor_of(self, vol: LabelledVolume) -> int:
        return self.factor[str(vol.path)]

    def fingerprint(self) -> dict:
        return self._fingerprint

    def build_model(self):
        from unet.model import build_unet

        return build_unet(self.cfg.model, name="vessel_unet")

    def loss(self, y_true, logits):
        from unet.losses import combined_loss

        return combined_loss(y_true, logits, self.cfg.loss)

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        d, aug = self.cfg.data, self.cfg.augment
        spec = draw_spec(
            rng, self.train, range(len(self.train)), self.factor_of, d.tile_px, d.scale_range, d.positive_fraction
        )
        vol = self.train[spec.volume]
        img, lab = crop_example(vol, self.factor_of(vol), d.z_context, d.tile_px, spec)
        img, lab = geometric_augment(img, lab, rng, aug)
        img, g, noise = intensity_augment(img, rng, aug)
        st = adjust_stats(self.stats[str(vol.path)], g, noise)
        if d.stats_jitter:
            j = d.stats_jitter
            spread = st.p95 - st.p5
            shift = float(rng.normal(0, j)) * spread
            grow = float(np.exp(rng.normal(0, j)))
            st = IntensityStats(
                st.p50 + shift - (st.p50 - st.p5) * grow, st.p50 + shift, st.p50 + shift + (st.p95 - st.p50) * grow
            )
        return st.standardize(img), lab

    def batch(self, step: int, rank: int, size: int, batch_size: int):
        rng = np.random.default_rng([self.cfg.trainer.seed, step, rank])
        pairs = [self.example(rng) for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _val_example(self, spec):
        d = self.cfg.data
        vol = self.val[spec.volume]
        img, lab = crop_example(vol, self.factor_of(vol), d.z_context, d.val_tile_px, spec)
        return self.stats[str(vol.path)].standardize(img), lab

    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        import tensorflow as tf

        from unet.losses import np_bce

        if self._predict is None:
            self._predict = tf.function(lambda x: tf.sigmoid(model(x, training=False)), reduce_retracing=True)
        sums = {"bce_sum": 0.0, "pixels": 0.0, "inter": 0.0, "union": 0.0, "pred": 0.0, "true": 0.0}
        specs = self.val_specs[shard::num_shards]
        for i in range(0, len(specs), 4):
            pairs = [self._val_example(s) for s in specs[i : i + 4]]
            x = np.stack([p[0] for p in pairs])
            y = np.stack([p[1] for p in pairs])
            p = self._predict(tf.convert_to_tensor(x)).numpy()
            sums["bce_sum"] += np_bce(y, p) * y.size
            sums["pixels"] += y.size
            pb, tb = p >= 0.5, y >= 0.5
            sums["inter"] += float(np.count_nonzero(pb & tb))
            sums["union"] += float(np.count_nonzero(pb | tb))
            sums["pred"] += float(np.count_nonzero(pb))
            sums["true"] += float(np.count_nonzero(tb))
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        iou = sums["inter"] / sums["union"] if sums["union"] else 1.0
        dice = 2 * sums["inter"] / (sums["pred"] + sums["true"]) if (sums["pred"] + sums["true"]) else 1.0
        return {"loss": sums["bce_sum"] / max(1.0, sums["pixels"]), "iou": iou, "dice": dice}


# ---------------------------------------------------------------------------------------------
# running and exporting


def _read_meta(path: Path) -> dict:
    try:
        return json.loads((path / "synth.json").read_text())
    except (OSError, ValueError):
        return {}


def _check_folders(data: Sequence[Path], val: Sequence[Path]) -> None:
    for flag, dirs in (("--data", data), ("--val", val)):
        for d in dirs:
            if not (d / "truth.zarr" / "zarr.json").is_file():
                what = "not found" if not d.exists() else "no truth.zarr inside (expected a `connectome synth` folder)"
                raise UserInputError(f"{flag} {d}: {what}")
    train_paths = {d.resolve() for d in data}
    train_seeds = {
        (m.get("seed"), m.get("preset"), tuple(m.get("shape_zyx") or ()))
        for m in map(_read_meta, data)
        if m.get("seed") is not None
    }
    for d in val:
        if d.resolve() in train_paths:
            raise UserInputError(f"--val {d}: is also a training folder (--data)")
        m = _read_meta(d)
        if (
            m.get("seed") is not None
            and (m.get("seed"), m.get("preset"), tuple(m.get("shape_zyx") or ())) in train_seeds
        ):
            raise UserInputError(
                f"--val {d}: same synth seed ({m.get('seed')}) as a training folder; validate on a held-out seed"
            )


def _versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import horovod

        out["horovod"] = horovod.__version__
    except ImportError:
        pass
    from connectome import __version__

    out["connectome"] = __version__
    return out


def _git_commit() -> Optional[str]:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _seconds_total(log_path: Path) -> tuple[float, int]:
    """Wall time summed over all runs of a training (killed runs included) and their number."""
    total, runs, start, last = 0.0, 0, None, None
    try:
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "start":
                if start is not None and last is not None:
                    total += last - start
                start, last, runs = rec.get("time"), rec.get("time"), runs + 1
            elif rec.get("time") is not None:
                last = rec["time"]
    except (OSError, ValueError):
        pass
    if start is not None and last is not None:
        total += last - start
    return total, runs


def final_validation(
    model_dir: Path, vols: Sequence[LabelledVolume], cfg: VesselTrainConfig
) -> tuple[float, list[dict]]:
    """Full-resolution scores of the exported model through the real inference path, at the
    threshold from ``cfg.calibrate_threshold`` with the best mean IoU (or ``cfg.threshold``)."""
    import dataclasses

    from connectome.evaluate import mask_overlap
    from unet.infer import postprocess_volume
    from unet.vessel import VesselMaskConfig, predict_array

    probs, seconds = [], []
    for v in vols:
        t0 = time.perf_counter()
        prob, _ = predict_array(v.raw, v.voxel_size_nm[1], model_dir, VesselMaskConfig(postprocess=cfg.postprocess))
        probs.append(prob)
        seconds.append(time.perf_counter() - t0)
    grid = sorted(set(cfg.calibrate_threshold)) or [cfg.threshold]
    table = {}
    for t in grid:
        post = dataclasses.replace(cfg.postprocess, threshold=t)
        table[t] = [mask_overlap(postprocess_volume(p, post, v.voxel_size_nm[1]), v.label) for p, v in zip(probs, vols)]
        log.info("validation threshold %.2f: IoU %s", t, ", ".join(f"{s['iou']:.4f}" for s in table[t]))
    best = max(grid, key=lambda t: (float(np.mean([s["iou"] for s in table[t]])), -abs(t - 0.5)))
    out = []
    for v, scores, sec in zip(vols, table[best], seconds):

        def r(x):
            return round(x, 5) if x == x else None

        out.append(
            {
                "path": str(v.path),
                "seed": v.meta.get("seed"),
                "preset": v.meta.get("preset"),
                "shape_zyx": list(v.raw.shape),
                "threshold": best,
                "iou": r(scores["iou"]),
                "dice": r(scores["dice"]),
                "precision": r(scores["precision"]),
                "recall": r(scores["recall"]),
                "iou_by_threshold": {f"{t:g}": r(table[t][len(out)]["iou"]) for t in grid},
                "seconds": round(sec, 1),
            }
        )
    return best, out


def train_vessel(
    data_dirs: Sequence[str | Path],
    out_dir: str | Path,
    cfg: VesselTrainConfig = VesselTrainConfig(),
    val_dirs: Sequence[str | Path] = (),
    restart: bool = False,
    command: Optional[Sequence[str]] = None,
    overwrite: bool = False,
) -> dict:
    """Train (or resume), export ``out_dir/{model.json, weights.npz, MODEL_CARD.md}``; returns a summary
    on rank 0 (``{"stopped": True, ...}`` when a signal stopped it: nothing is exported then). A
    finished ``out_dir`` is refused unless ``overwrite``; the export replaces it atomically."""
    from connectome.training import weights as wio
    from connectome.training.distributed import horovod_session
    from connectome.training.export import run_summary, staged_model_dir
    from connectome.training.loop import run_training
    from unet.modeldir import write_model_dir

    data, val, out, fingerprint = prepare_run(
        "vessel", cfg, data_dirs, val_dirs, out_dir, _NOT_TRAINING, overwrite=overwrite
    )
    tcfg = cfg.trainer
    summary: dict = {}
    with horovod_session(tcfg.distributed, tcfg.intra_op_threads, tcfg.inter_op_threads) as s:
        mine = data[s.rank :: s.size] if cfg.data.shard_volumes and len(data) >= s.size else data
        train = [load_synth_volume(d, seed=tcfg.seed) for d in mine]
        vols_val = [load_synth_volume(d, seed=tcfg.seed) for d in val]
        job = VesselJob(cfg, train, vols_val, fingerprint)
        if s.is_root:
            log.info(
                "training data: %s",
                ", ".join(f"{v.path.name} {list(v.raw.shape)} (factor {job.factor_of(v)})" for v in train),
            )
        result = run_training(job, tcfg, out / "train", s, restart=restart)
        if result.stopped_by_signal:
            s.barrier()
            return {"stopped": True, "steps": result.steps, "total_steps": tcfg.steps, "model_dir": str(out)}
        if s.is_root:
            arrays = wio.load_npz(result.weights_file)
            doc = {
                "task": "vessel",
                "architecture": cfg.model.to_json(),
                "input": {
                    "voxel_size_nm_yx": [cfg.data.input_voxel_size_nm] * 2,
                    "z_context": cfg.data.z_context,
                    "channels": f"{cfg.data.z_context} adjacent sections centred on the predicted one "
                    "(mirrored at the volume faces)",
                    "downsampling": "area_mean by the integer factor model_px / data_px",
                    "normalization": {
                        "method": "volume_percentiles",
                        "formula": "x = (v/255 - p50) / ((p95 - p5) / 3.29)",
                        "percentiles_of": "up to 16 evenly spaced sections, central 2048 px "
                        "crops, at the model's resolution",
                    },
                    "trained_on_voxel_size_nm": sorted({tuple(v.voxel_size_nm) for v in train})[0],
                },
                "output": {
                    "activation": "sigmoid",
                    "threshold": cfg.threshold,
                    "meaning": "probability that the pixel belongs to a blood vessel (lumen + wall)",
                },
                "inference": {"tile_px": cfg.inference_tile_px, "margin_px": cfg.inference_margin_px},
                "weights": {
                    "parameters": int(sum(int(np.prod(a.shape)) for a in arrays.values())),
                    "from_step": result.best_step if result.best_step is not None else result.steps,
                },
                "training": training_record(
                    result, cfg, out, command, [_describe(d) for d in data], [_describe(d) for d in val]
                ),
                "validation": {"tiles_at_model_resolution": result.best_metrics or result.last_metrics},
            }
            with staged_model_dir(out) as tmp:  # atomic: a kill never leaves a mixed directory
                write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                if cfg.final_validation and vols_val:
                    threshold, doc["validation"]["volumes"] = final_validation(tmp, vols_val, cfg)
                    doc["output"]["threshold"] = threshold
                    doc["validation"]["threshold_calibrated_on_these_volumes"] = bool(cfg.calibrate_threshold)
                    ious = [v["iou"] for v in doc["validation"]["volumes"]]
                    doc["validation"]["mean_iou"] = round(float(np.mean(ious)), 5)
                    write_model_dir(tmp, arrays, doc, float_dtype=cfg.weights_dtype)
                write_model_card(tmp)
            summary = run_summary(out, result, doc["training"]["seconds"], doc["validation"])
        s.barrier()
    return summary


def training_record(
    result, cfg, out: Path, command: Optional[Sequence[str]], data: list[dict], val: list[dict]
) -> dict:
    """The ``training`` section of a U-Net model.json: command, ranks, batch, steps, wall time over
    all runs, data, versions, config and the per-rank weight digests."""
    tcfg = cfg.trainer
    seconds, runs = _seconds_total(out / "train" / "log.jsonl")
    return {
        "command": _command_line(command),
        "ranks": result.ranks,
        "batch_per_rank": tcfg.batch_size,
        "global_batch": result.global_batch,
        "steps": result.steps,
        "examples_seen": result.steps * result.global_batch,
        "peak_learning_rate": tcfg.learning_rate * tcfg.lr_scale(result.ranks),
        "seconds": round(seconds, 1),
        "runs": runs,
        "examples_per_s_last_run": result.examples_per_s,
        "data": data,
        "validation_data": val,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "config": config_to_dict(cfg),
        "rank_weight_digests": result.rank_weight_digests,
    }


def prepare_run(
    task: str, cfg, data_dirs, val_dirs, out_dir, not_training: Sequence[str], overwrite: bool = False
) -> tuple[list[Path], list[Path], Path, dict]:
    """Checked ``--data`` / ``--val`` / ``--out`` of a 3D U-Net training run and its fingerprint
    (the config without the fields that may change on resumption). A finished ``--out`` is refused
    first (before the data are read) unless ``overwrite``."""
    from connectome.training.export import check_out_dir

    data = [Path(d) for d in data_dirs]
    val = [Path(d) for d in val_dirs]
    out = check_out_dir(out_dir, overwrite)
    if not data:
        raise UserInputError("--data: give at least one `connectome synth` folder")
    _check_folders(data, val)
    fingerprint = {
        "task": task,
        "config": {k: v for k, v in config_to_dict(cfg).items() if k not in not_training},
        "data": [str(p.resolve()) for p in data],
        "val": [str(p.resolve()) for p in val],
    }
    return data, val, out, fingerprint


def unet3d_doc(task: str, cfg, input_voxel_nm: float, trained_on_voxel_nm, arrays: dict, result) -> dict:
    """The ``task``, ``architecture``, ``input``, ``inference`` and ``weights`` sections of a 3D
    U-Net model.json (raw input area-downsampled in (y, x), volume-percentile standardisation)."""
    return {
        "task": task,
        "architecture": cfg.model.to_json(),
        "input": {
            "voxel_size_nm_yx": [input_voxel_nm] * 2,
            "z_context": 1,
            "channels": "one: the raw volume (z, y, x), (y, x) area-downsampled",
            "downsampling": "area_mean in (y, x) by the integer factor model_px / data_px; z kept",
            "normalization": {"method": "volume_percentiles", "formula": "x = (v/255 - p50) / ((p95 - p5) / 3.29)"},
            "trained_on_voxel_size_nm": list(trained_on_voxel_nm),
        },
        "inference": {
            "tile_zyx": list(cfg.inference_tile_zyx),
            "margin_zyx": list(cfg.inference_margin_zyx),
            "tile_px": int(cfg.inference_tile_zyx[1]),
            "margin_px": int(cfg.inference_margin_zyx[1]),
        },
        "weights": {
            "parameters": int(sum(int(np.prod(a.shape)) for a in arrays.values())),
            "from_step": result.best_step if result.best_step is not None else result.steps,
        },
    }


def _command_line(command: Optional[Sequence[str]]) -> str:
    """The training command as the model card records it (paths relative to the repository root)."""
    return portable_command(list(command or sys.argv))


def _describe(d: Path) -> dict:
    m = _read_meta(d)
    return {
        "path": portable_path(d),
        "seed": m.get("seed"),
        "preset": m.get("preset"),
        "shape_zyx": m.get("shape_zyx"),
        "voxel_size_nm": m.get("voxel_size_nm"),
        "generator": m.get("generator"),
    }


def record_test(
    model_dir: str | Path, volumes: Sequence[dict], commands: Sequence[str], notes: Sequence[str] = ()
) -> Path:
    """Add test results (``volumes``: seed, preset, shape_zyx, iou, dice, precision, recall of
    volumes never used for training or validation, and the ``commands`` that produced them) and
    free-text ``notes`` on how the model was made to ``model.json``, and regenerate
    ``MODEL_CARD.md``; the weights are not touched."""
    p = Path(model_dir)
    doc = json.loads((p / "model.json").read_text())
    doc["test"] = {"volumes": [dict(v) for v in volumes], "commands": list(commands)}
    if notes:
        doc["notes"] = list(notes)
    tmp = p / f".model.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, p / "model.json")
    return write_model_card(p)


def write_model_card(model_dir: str | Path) -> Path:
    """MODEL_CARD.md generated from model.json (numbers are never typed in by hand)."""
    p = Path(model_dir)
    doc = json.loads((p / "model.json").read_text())
    a, t, v, w = doc["architecture"], doc["training"], doc.get("validation", {}), doc["weights"]
    lines = [
        "# Vessel mask model (2D U-Net)",
        "",
        "Predicts, per section, the probability that a pixel belongs to a blood vessel (lumen + wall) in "
        "serial-section EM; `connectome mask-vessels` thresholds it, fills holes and removes specks.",
        "",
        "## Model",
        "",
        f"- 2D U-Net, {a['depth']} poolings, filters {a['base_filters']} -> "
        f"{min(a['base_filters'] * 2 ** a['depth'], a['max_filters'])}, {a['convs_per_level']} 3x3 convs per level, "
        f"'{a['padding']}' padding, {a['upsampling']} upsampling, norm: {a['norm']}, {w['parameters']:,} parameters, "
        f"weights stored as {w['dtype']} ({w['size_bytes'] / 1e6:.2f} MB, sha256 `{w['sha256'][:16]}...`).",
        f"- Input: {doc['input']['z_context']} adjacent sections as channels, area-downsampled to "
        f"{doc['input']['voxel_size_nm_yx'][0]:g} nm pixels (factor {round(doc['input']['voxel_size_nm_yx'][0] / 8)} "
        "for 8 nm data), standardised with the volume's "
        "5/50/95th intensity percentiles. Output: sigmoid probability, threshold "
        f"{doc['output']['threshold']:g}"
        + (" (chosen on the validation volumes)." if v.get("threshold_calibrated_on_these_volumes") else "."),
        f"- Inference: tiles of {doc['inference']['tile_px']} model px, {doc['inference']['margin_px']} px cropped per "
        "side, global tile grid (blockwise output == whole-volume output), bilinear upsampling.",
        "",
        "## Training",
        "",
        "```",
        t["command"],
        "```",
        "",
        f"- {t['steps']} steps, {t['ranks']} rank(s) x batch {t['batch_per_rank']} (global {t['global_batch']}), "
        f"{t['examples_seen']:,} examples, peak learning rate {t['peak_learning_rate']:g} (Adam, warm-up + cosine), "
        f"loss: BCE x {t['config']['loss']['bce_weight']:g} + soft Dice x {t['config']['loss']['dice_weight']:g}.",
        f"- Wall time {t['seconds'] / 60:.1f} min on {t['host']} ({t['runs']} run(s)); TensorFlow "
        f"{t['versions'].get('tensorflow')}, Horovod {t['versions'].get('horovod', '-')}.",
        "- Training data (`connectome synth`):",
    ]
    for d in t["data"]:
        lines.append(
            f"  - seed {d['seed']}, preset {d['preset']}, shape {d['shape_zyx']}, voxel {d['voxel_size_nm']} nm"
        )
    lines.append("- Validation data (held-out seeds):")
    for d in t["validation_data"]:
        lines.append(f"  - seed {d['seed']}, preset {d['preset']}, shape {d['shape_zyx']}")
    synth = [d for d in t["data"] + t["validation_data"] if d.get("seed") is not None and d.get("shape_zyx")]
    if synth:
        lines += ["", "Regenerate the data folders (the paths in the command above) with:", "", "```"]
        for d in synth:
            shape = ",".join(str(v) for v in d["shape_zyx"])
            lines.append(f"connectome synth {d['path']} --preset {d['preset']} --seed {d['seed']} --shape {shape}")
        lines.append("```")
    ft = doc.get("fine_tuning")
    if ft:
        c, i = ft["corrections"], ft["init"]
        ws = c.get("workspace") or {}
        lines += [
            "",
            "## Fine-tuning on reviewed corrections",
            "",
            f"- Init model: `{i.get('portable_path') or i['path']}` (weights sha256 `{i['weights_sha256']}`).",
            f"- Corrections: `{c['review_dir']}` (import `{c.get('import_id')}`, queue strategy "
            f"{c.get('strategy')}), {len(c['item_ids'])} corrected box(es): "
            f"{c.get('voxels', {}).get('corrected')} corrected voxels, "
            f"{c.get('voxels', {}).get('foreground')} of them vessel.",
            f"  - trained on: {', '.join(map(str, c['train_item_ids']))}",
            f"  - held back for validation: {', '.join(map(str, c['validation_item_ids']))}",
            f"- Workspace: `{ws.get('path')}` (fingerprint `{ws.get('fingerprint')}`).",
            f"- Replay of the synth folders above: {ft['replay_fraction']:.0%} of each batch when any are "
            "given; voxels not corrected (255) carry no loss.",
        ]
        cb = v.get("corrected_boxes")
        if cb:
            lines.append(
                f"- Held-back boxes through the inference path (corrected voxels, threshold "
                f"{cb['threshold']:g}): IoU {cb['iou']}, precision {cb['precision']}, recall {cb['recall']}."
            )
    lines += ["", "## Validation", ""]
    tiles = v.get("tiles_at_model_resolution") or v.get("corrected_boxes_tiles") or {}
    if tiles:
        lines.append(
            f"- Validation tiles at model resolution (best step {w.get('from_step')}): IoU {tiles.get('iou', 0):.4f}, "
            f"Dice {tiles.get('dice', 0):.4f}, BCE {tiles.get('loss', 0):.4f}."
        )
    if v.get("volumes"):
        lines += [
            "- Full volumes through `mask-vessels`' inference path (full resolution, post-processed):",
            "",
            "| seed | preset | shape (z,y,x) | IoU | Dice | precision | recall |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in v["volumes"]:
            lines.append(
                f"| {r['seed']} | {r['preset']} | {r['shape_zyx']} | {r['iou']:.4f} | {r['dice']:.4f} | "
                f"{r['precision']} | {r['recall']} |"
            )
        lines.append("")
        lines.append(f"Mean IoU: {v.get('mean_iou')}")
    test = doc.get("test")
    if test:
        lines += [
            "",
            "## Test (unseen seeds)",
            "",
            "Volumes whose seeds were used neither for training nor for choosing the checkpoint or the "
            "threshold, through the real command line (full resolution, post-processed):",
            "",
            "```",
            *test["commands"],
            "```",
            "",
            "| seed | preset | shape (z,y,x) | IoU | Dice | precision | recall |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in test["volumes"]:
            lines.append(
                f"| {r['seed']} | {r['preset']} | {r['shape_zyx']} | {r['iou']:.4f} | {r['dice']:.4f} | "
                f"{r['precision']:.4f} | {r['recall']:.4f} |"
            )
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- Serial-section EM of neuropil at 4-16 nm pixels (the input is resampled to "
        f"{doc['input']['voxel_size_nm_yx'][0]:g} nm by an integer factor; factors more than ~30% off are refused).",
        "- Trained on synthetic data only, with strong augmentation (zoom "
        f"{'-'.join(f'{z:g}' for z in t['config']['data']['scale_range'])}, flips/rotations, elastic, "
        "contrast/brightness/gamma, illumination, blur, white and correlated noise, section defects) for "
        "robustness to imaging that differs; check it on a labelled sample of real data before trusting it.",
        "- Vessel = lumen + endothelial wall (+ red blood cells). Lumens much wider than the fill-holes extent "
        "of the post-processing (6 um by default) rely on the network alone.",
        "",
        "Retrain with the command above (on the same synth seeds) to reproduce comparable metrics; "
        "`model.json` holds the full config and provenance.",
        "",
    ]
    path = p / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
