"""FFN training with field-of-view (FOV) movement, on the shared data-parallel trainer.

Each batch slot runs its own *episode*, as in google/ffn's training but re-implemented:

1. draw an example centre (equally per object-fraction partition, :mod:`ffn.data`), cut the
   example box (one FOV plus one move ``delta`` in every direction) of the standardised image and
   of the object mask, augment both (flips, (y, x) transpose);
2. the seed (logits over the box) starts at ``logit(0.05)`` with ``logit(0.95)`` at the centre;
3. step 1 trains on the centre FOV; the slot writes the predicted logits back into its seed and,
   for each of the 6 faces of the FOV at ``+/- delta`` from the centre, moves there if the
   largest predicted probability on that face is >= ``move_threshold`` (0.9): later steps train
   on those FOVs with the seed *as the network left it* (so it learns to continue and correct
   its own masks); when no move is left the slot starts a new episode.

Labels are the object mask softened to 0.05 / 0.95; the loss is the mean sigmoid cross-entropy
over the FOV; gradients are clipped (trainer ``grad_clip_norm``). The slots' state depends on
the model's outputs (the job is *stateful*: :mod:`connectome.training.loop` calls
:meth:`FFNJob.observe`); every slot restarts at steps that are multiples of the checkpoint
interval and on resumption, so a run resumed from a periodic checkpoint draws exactly the
examples of an uninterrupted one. Every rank draws its own episodes (seeded by seed, rank, step
and slot): disjoint sampling without coordination.

Validation: a fixed set of episodes from held-out volumes is run by inference (centre FOV, then
the moves it accepts, no gradients) and the final mask over each example box is compared with the
true object mask at probability 0.9: voxel precision, recall and F1 (the checkpoint score).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from connectome.training import TrainerConfig
from connectome.training.provenance import portable_command, portable_path
from ffn.data import CentreSampler, augment, crop, model_resolution
from ffn.model import PAD_PROB, SEED_PROB, FFNModelConfig, logit
from unet.augment import AugmentConfig

#: the 6 moves (axis, sign)
MOVES = tuple((ax, sg) for ax in range(3) for sg in (-1, 1))


@dataclass(frozen=True)
class FFNExampleConfig:
    #: objects smaller than this (voxels, at the model's resolution) give no example centres
    min_object_voxels: int = 1000
    #: centres kept per object-fraction partition (bounded memory)
    max_per_partition: int = 20000
    #: move where the predicted probability on a face reaches this
    move_threshold: float = 0.9
    #: rounds of moves per episode: 1 = the centre FOV and the moves it accepts (google/ffn's
    #: training); more lets the network see (and learn to correct) its own longer floods, as at
    #: inference. The example box grows to fov + 2 * rounds * delta
    episode_rounds: int = 1
    #: at most this many FOVs per episode (breadth first)
    episode_max_fovs: int = 16
    #: soft labels
    label_low: float = 0.05
    label_high: float = 0.95
    #: validation episodes per held-out volume
    val_episodes_per_volume: int = 16
    #: the model's pixel size in (y, x), nm; 0 = the data's own. Data is area-downsampled by the
    #: integer factor model / data pixel (8 nm data, 16 nm model -> factor 2), as at inference
    voxel_size_nm_yx: float = 0.0
    #: probability that an example's sections are shifted by up to ``section_shift_px`` (model
    #: px, independently per section, image only): residual misalignment after `connectome align`
    section_shift_prob: float = 0.5
    section_shift_px: int = 1
    #: segmentation validation: the central box of this size (model voxels, z y x; clipped to the
    #: volume) of every held-out volume is segmented by the canvas, and the pooled adapted Rand
    #: error and VOI against its labels choose the checkpoint (score = -(ARAND + VOI / 4));
    #: (0, 0, 0) = episode F1 only
    val_segment_zyx: tuple[int, int, int] = (12, 64, 64)
    #: canvas thresholds of that validation (the move threshold is ``move_threshold``)
    val_segment_threshold: float = 0.6
    val_min_segment_voxels: int = 200
    #: budget of one segmentation validation (FOVs per volume; an early, still-diffuse network
    #: can flood for long) and per object
    val_segment_max_fovs: int = 20000
    val_segment_max_fovs_per_object: int = 2000
    #: boundary model whose predictions feed a model's "boundary" channel ("" = the shipped
    #: unet/models/boundary); predicted once per volume on its true raw and cached beside it
    #: (``DIR/predictions/boundary-<sha12>.npy``)
    boundary_model: str = ""
    #: robustness of the boundary channel (training only): Gaussian noise of this sigma (in
    #: probability units) and a random gamma in [1/g, g] on the channel before it is mapped to [-1, 1]
    boundary_noise: float = 0.05
    boundary_gamma: float = 1.5

    def __post_init__(self):
        if not 0 < self.move_threshold < 1:
            raise ValueError(f"move_threshold must be in (0, 1), got {self.move_threshold}")
        if not 0 <= self.label_low < self.label_high <= 1:
            raise ValueError("labels need 0 <= label_low < label_high <= 1")
        if self.voxel_size_nm_yx < 0 or not 0 <= self.section_shift_prob <= 1 or self.section_shift_px < 0:
            raise ValueError("voxel_size_nm_yx >= 0, section_shift_prob in [0, 1] and section_shift_px >= 0 required")
        if self.episode_rounds < 1 or self.episode_max_fovs < 1:
            raise ValueError("episode_rounds and episode_max_fovs must be >= 1")
        if self.boundary_noise < 0 or self.boundary_gamma < 1:
            raise ValueError("boundary_noise must be >= 0 and boundary_gamma >= 1")


@dataclass
class TrainingVolume:
    """One labelled volume at the model's resolution: image in [0, 1] (float32), its intensity
    percentiles, labels (int), and its example-centre sampler."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    sampler: CentreSampler
    stats: object = None  # unet.data.IntensityStats of ``image``
    voxel_nm: tuple = (40.0, 8.0, 8.0)  # of ``image`` (the model's input voxels)
    #: boundary probability in [0, 1] at the model's resolution (models with a "boundary" channel)
    boundary: np.ndarray | None = None

    def standardized(self, box: np.ndarray, stats=None) -> np.ndarray:
        return (stats or self.stats).standardize(box)

    def channels(self, model: FFNModelConfig, box=None) -> np.ndarray:
        """(z, y, x, C) model input of ``box`` (slices; None: all), unaugmented."""
        box = box if box is not None else (slice(None),) * 3
        return stack_channels(
            model, self.standardized(self.image[box]), None if self.boundary is None else self.boundary[box]
        )


def stack_channels(model: FFNModelConfig, raw_std: np.ndarray, boundary01: np.ndarray | None) -> np.ndarray:
    """(z, y, x, C) float32 in the model's channel order: "raw" the standardised image,
    "boundary" the boundary probability mapped to [-1, 1]."""
    out = []
    for c in model.channels:
        if c == "raw":
            out.append(np.asarray(raw_std, np.float32))
        else:
            if boundary01 is None:
                raise ValueError("the model takes a boundary channel, but no boundary map was given")
            out.append(2.0 * np.asarray(boundary01, np.float32) - 1.0)
    return np.stack(out, axis=-1)


@dataclass
class _Slot:
    image: np.ndarray | None = None  # example box, the model's input channels (z, y, x, C)
    label: np.ndarray | None = None  # example box, soft labels
    seed: np.ndarray | None = None  # example box, logits
    queue: list = field(default_factory=list)  # (FOV centre in box coordinates, round)
    pos: tuple | None = None  # FOV centre in box coordinates (of the current step)
    round: int = 0  # 0 for the episode's centre FOV, k for the k-th round of moves
    visited: set = field(default_factory=set)
    n_fovs: int = 0


def example_shape(model: FFNModelConfig, ex: FFNExampleConfig) -> tuple[int, int, int]:
    """The example box: one FOV plus ``episode_rounds`` moves in every direction."""
    return tuple(int(f) + 2 * int(d) * ex.episode_rounds for f, d in zip(model.fov_zyx, model.deltas_zyx))


def new_episode(
    vol: TrainingVolume,
    centre,
    model: FFNModelConfig,
    ex: FFNExampleConfig,
    rng: np.random.Generator | None,
    intensity=None,
) -> _Slot:
    """A fresh episode at ``centre``; with ``rng``: flips/transpose, section shifts and (with
    ``intensity``, a :class:`unet.augment.AugmentConfig`) the U-Net's intensity augmentation
    (sections as channels: per-section gain/offset, contrast, gamma, blur, noise, defects)."""
    shape = example_shape(model, ex)
    img = crop(vol.image, centre, shape)
    lab = crop(vol.labels, centre, shape) == vol.labels[tuple(centre)]
    bnd = None if vol.boundary is None else crop(vol.boundary, centre, shape)
    stats = None
    if rng is not None:
        if bnd is None:
            img, lab = augment([img, lab], rng, transpose_xy=model.fov_zyx[1] == model.fov_zyx[2])
        else:
            img, lab, bnd = augment([img, lab, bnd], rng, transpose_xy=model.fov_zyx[1] == model.fov_zyx[2])
            bnd = np.clip(bnd + rng.normal(0.0, ex.boundary_noise, bnd.shape), 0.0, 1.0) if ex.boundary_noise else bnd
            if ex.boundary_gamma > 1:
                bnd = bnd ** float(np.exp(rng.uniform(-np.log(ex.boundary_gamma), np.log(ex.boundary_gamma))))
        if ex.section_shift_px and rng.random() < ex.section_shift_prob:
            img = shift_sections(img, rng, ex.section_shift_px)
        if intensity is not None and getattr(intensity, "enabled", False):
            from unet.augment import intensity_augment
            from unet.data import adjust_stats

            aug, g, noise = intensity_augment(np.moveaxis(img, 0, -1), rng, intensity)
            img = np.ascontiguousarray(np.moveaxis(aug, -1, 0))
            stats = adjust_stats(vol.stats, g, noise)
    img = stack_channels(model, vol.standardized(img, stats), bnd)
    soft = np.where(lab, ex.label_high, ex.label_low).astype(np.float32)
    seed = np.full(shape, logit(PAD_PROB), np.float32)
    mid = tuple(s // 2 for s in shape)
    seed[mid] = logit(SEED_PROB)
    return _Slot(img.astype(np.float32), soft, seed, [(mid, 0)], None, 0, {mid})


def shift_sections(img: np.ndarray, rng: np.random.Generator, max_px: int) -> np.ndarray:
    """Each section (axis 0) moved by its own integer (dy, dx) in [-max_px, max_px] (edge
    values repeat): the misalignment an aligned volume keeps."""
    out = np.empty_like(img)
    pad = int(max_px)
    for z in range(img.shape[0]):
        dy, dx = (int(v) for v in rng.integers(-pad, pad + 1, 2))
        p = np.pad(img[z], pad, mode="edge")
        out[z] = p[pad - dy : pad - dy + img.shape[1], pad - dx : pad - dx + img.shape[2]]
    return out


def fov_slices(pos, fov_zyx) -> tuple[slice, ...]:
    return tuple(slice(p - f // 2, p - f // 2 + f) for p, f in zip(pos, fov_zyx))


def queue_moves(slot: _Slot, logits_fov: np.ndarray, model: FFNModelConfig, ex: FFNExampleConfig) -> None:
    """After a FOV of round < ``episode_rounds``: queue the moves it accepts that stay inside the
    example box and were not visited, up to ``episode_max_fovs`` FOVs per episode."""
    if slot.round >= ex.episode_rounds:
        return
    r = model.radius_zyx
    shape = slot.seed.shape
    for p in accepted_moves(logits_fov, slot.pos, model, ex.move_threshold):
        if p in slot.visited or any(v - rr < 0 or v + rr >= n for v, rr, n in zip(p, r, shape)):
            continue
        if slot.n_fovs + len(slot.queue) >= ex.episode_max_fovs:
            return
        slot.visited.add(p)
        slot.queue.append((p, slot.round + 1))


def accepted_moves(logits_fov: np.ndarray, pos, model: FFNModelConfig, threshold: float) -> list[tuple]:
    """Face-max movement: the moves ``pos +/- delta`` (along one axis) whose face plane of the
    FOV (at ``delta`` from the centre) holds a probability >= ``threshold``."""
    t = logit(threshold)
    r = model.radius_zyx
    out = []
    for ax, sg in MOVES:
        d = model.deltas_zyx[ax]
        idx = [slice(None)] * 3
        idx[ax] = r[ax] + sg * d
        if float(logits_fov[tuple(idx)].max()) >= t:
            new = list(pos)
            new[ax] += sg * d
            out.append(tuple(new))
    return out


class FFNJob:
    """:class:`connectome.training.loop.TrainJob` for the FFN (stateful: FOV movement)."""

    def __init__(
        self,
        model: FFNModelConfig,
        examples: FFNExampleConfig,
        train: Sequence[TrainingVolume],
        val: Sequence[TrainingVolume],
        seed: int,
        reset_every: int,
        fingerprint: dict,
        intensity=None,
    ):
        self.model, self.ex = model, examples
        self.intensity = intensity
        self.train, self.val = list(train), list(val)
        self.seed, self.reset_every = int(seed), max(1, int(reset_every))
        self._fingerprint = fingerprint
        self._slots: list[_Slot] | None = None
        self._last_step: int | None = None
        self._predict = None
        self.score_key = "seg_score" if any(examples.val_segment_zyx) and self.val else "f1"
        vr = np.random.default_rng([self.seed, 987654])
        self.val_specs = [
            (i, v.sampler.draw(vr)) for i, v in enumerate(self.val) for _ in range(examples.val_episodes_per_volume)
        ]

    # --- TrainJob ------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        return self._fingerprint

    def build_model(self):
        from ffn.model import build_model

        return build_model(self.model)

    def loss(self, y_true, logits):
        import tensorflow as tf

        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits))

    def batch(self, step: int, rank: int, size: int, batch_size: int):
        if (
            self._slots is None
            or len(self._slots) != batch_size
            or step % self.reset_every == 0
            or self._last_step != step - 1
        ):
            self._slots = [_Slot() for _ in range(batch_size)]  # start (or resume): fresh episodes
        self._last_step = step
        xs, ys = [], []
        for k, slot in enumerate(self._slots):
            if not slot.queue:
                rng = np.random.default_rng([self.seed, rank, step, k])
                vol = self.train[int(rng.integers(len(self.train)))]
                slot = self._slots[k] = new_episode(
                    vol, vol.sampler.draw(rng), self.model, self.ex, rng, self.intensity
                )
            slot.pos, slot.round = slot.queue.pop(0)
            slot.n_fovs += 1
            sl = fov_slices(slot.pos, self.model.fov_zyx)
            xs.append(np.concatenate([slot.image[sl], slot.seed[sl][..., None]], axis=-1))
            ys.append(slot.label[sl][..., None])
        return np.stack(xs), np.stack(ys)

    def observe(self, step: int, logits: np.ndarray) -> None:
        for slot, lg in zip(self._slots, logits[..., 0]):
            slot.seed[fov_slices(slot.pos, self.model.fov_zyx)] = lg
            queue_moves(slot, lg, self.model, self.ex)

    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        import tensorflow as tf

        if self._predict is None:
            self._predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        sums = {"tp": 0.0, "fp": 0.0, "fn": 0.0}
        t = logit(0.9)
        predict = lambda x: self._predict(tf.convert_to_tensor(x)).numpy()  # noqa: E731
        for i, centre in self.val_specs[shard::num_shards]:
            slot = new_episode(self.val[i], centre, self.model, self.ex, None)
            run_episode(slot, self.model, self.ex, predict)
            pred, true = slot.seed >= t, slot.label > 0.5
            sums["tp"] += float(np.count_nonzero(pred & true))
            sums["fp"] += float(np.count_nonzero(pred & ~true))
            sums["fn"] += float(np.count_nonzero(~pred & true))
        if self.score_key == "seg_score":
            for k in ("both", "truth_pairs", "seg_pairs", "split_n", "merge_n", "n"):
                sums[k] = 0.0
            for vol in self.val[shard::num_shards]:
                for k, v in self.segment_validation(vol, lambda x: predict(x)[..., 0]).items():
                    sums[k] += v
        return sums

    def segment_validation(self, vol: TrainingVolume, predict) -> dict[str, float]:
        """Segment the central ``val_segment_zyx`` box of ``vol`` with the canvas (seeds as in segment,
        face-max moves) and return additive sums of the adapted Rand and VOI terms."""
        from connectome.evaluate.segmentation import Contingency, rand_pair_sums, voi
        from ffn.inference import Canvas, InferenceConfig, run_canvases

        shape = np.minimum(np.asarray(self.ex.val_segment_zyx), vol.image.shape)
        shape = np.maximum(shape, self.model.fov_zyx)
        lo = (np.asarray(vol.image.shape) - shape) // 2
        box = tuple(slice(a, a + n) for a, n in zip(lo, shape))
        image = vol.channels(self.model, box)
        cfg = InferenceConfig(
            move_threshold=self.ex.move_threshold,
            segment_threshold=self.ex.val_segment_threshold,
            min_segment_voxels=self.ex.val_min_segment_voxels,
            batch_size=8,
            max_fovs_per_object=self.ex.val_segment_max_fovs_per_object,
        )
        canvas = Canvas(image, self.model, cfg)
        run_canvases(
            [(canvas, canvas_seeds(vol, box, None, cfg))],
            predict,
            cfg.batch_size,
            max_fovs=self.ex.val_segment_max_fovs,
        )
        table = Contingency.from_labels(vol.labels[box], np.maximum(canvas.seg, 0)).without_truth(0)
        if not table.total:
            return {"both": 0.0, "truth_pairs": 0.0, "seg_pairs": 0.0, "split_n": 0.0, "merge_n": 0.0, "n": 0.0}
        sums = rand_pair_sums(table)
        split, merge = voi(table)
        return {**sums, "split_n": split * sums["n"], "merge_n": merge * sums["n"]}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        tp, fp, fn = sums["tp"], sums["fp"], sums["fn"]
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 1.0
        out = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
        if sums.get("n"):
            from connectome.evaluate.segmentation import adapted_rand_from_sums

            arand = adapted_rand_from_sums(sums)[0]
            arand = 1.0 if arand != arand else arand  # no pairs at all: worst score
            vs, vm = sums["split_n"] / sums["n"], sums["merge_n"] / sums["n"]
            out.update({"arand": arand, "voi_split": vs, "voi_merge": vm, "seg_score": -(arand + (vs + vm) / 4.0)})
        return out


def canvas_seeds(vol: TrainingVolume, box, mask, cfg) -> np.ndarray:
    """Seeds of a validation canvas: boundary-map peaks when the volume has a boundary map,
    else image peaks (as ``connectome segment``)."""
    from ffn.inference import boundary_seeds, peak_seeds

    if vol.boundary is not None:
        return boundary_seeds(vol.boundary[box], mask, vol.voxel_nm, cfg)
    return peak_seeds(vol.standardized(vol.image[box]), mask, vol.voxel_nm, cfg)


def run_episode(slot: _Slot, model: FFNModelConfig, ex: FFNExampleConfig, predict) -> None:
    """Inference on one example box: the centre FOV, then round by round (each round in one
    batch) the moves the FOVs before accept, as in training."""
    while slot.queue:
        batch, slot.queue = slot.queue, []
        x = np.stack(
            [
                np.concatenate(
                    [slot.image[fov_slices(p, model.fov_zyx)], slot.seed[fov_slices(p, model.fov_zyx)][..., None]],
                    axis=-1,
                )
                for p, _ in batch
            ]
        )
        out = predict(x)[..., 0]
        for (p, rnd), lg in zip(batch, out):
            slot.seed[fov_slices(p, model.fov_zyx)] = lg
            slot.pos, slot.round = p, rnd
            slot.n_fovs += 1
            queue_moves(slot, lg, model, ex)


def load_training_volume(
    path,
    model: FFNModelConfig,
    ex: FFNExampleConfig,
    seed: int = 0,
    label: str = "neurons",
    mask: str | None = "vessels",
) -> TrainingVolume:
    """A ``connectome synth`` folder (``truth.zarr``: raw, ``label``, optional ``mask``) as a
    :class:`TrainingVolume` at the model's resolution (``ex.voxel_size_nm_yx``): the image
    area-downsampled (:func:`ffn.data.model_resolution`), labels and mask sampled at the same pixels,
    example centres from the labels. Standardisation (volume percentiles, as the U-Net and
    ``connectome segment``: ``(v - p50) / ((p95 - p5) / 3.29)``) is applied per example, after
    the intensity augmentation."""
    from pathlib import Path

    import zarr

    from connectome.errors import UserInputError
    from unet.data import intensity_stats, model_factor

    path = Path(path)
    try:
        g = zarr.open_group(str(path / "truth.zarr"), mode="r")
        raw, labels = g["raw"], g[label]
    except Exception:  # noqa: BLE001 - any failure to open is the same user error
        raise UserInputError(
            f"--data {path}: expected a `connectome synth` folder with truth.zarr/raw and truth.zarr/{label}"
        ) from None
    vs = tuple(float(v) for v in raw.attrs.get("voxel_size_nm", (40.0, 8.0, 8.0)))
    factor = model_factor(ex.voxel_size_nm_yx, vs[1], f"--data {path}") if ex.voxel_size_nm_yx else 1
    shape = (raw.shape[0], raw.shape[1] // factor, raw.shape[2] // factor)
    ex_shape = example_shape(model, ex)
    if raw.shape != labels.shape or any(s < e for s, e in zip(shape, ex_shape)):
        raise UserInputError(
            f"--data {path}: volume {list(shape)} (at the model's resolution) is smaller than one "
            f"training example {list(ex_shape)} (or raw and {label} differ in shape)"
        )
    stats = intensity_stats(raw, factor)
    raw_np = np.asarray(raw[:])
    image, lab, m = model_resolution(
        raw_np, np.asarray(labels[:]), np.asarray(g[mask][:]) > 0 if mask and mask in g else None, factor
    )
    boundary = None
    if "boundary" in model.channels:
        boundary = model_resolution(predicted_boundary(path, raw_np, vs, ex.boundary_model), None, None, factor)[0]
    sampler = CentreSampler.from_labels(
        lab,
        tuple(r + d for r, d in zip(model.radius_zyx, model.deltas_zyx)),
        ex_shape,
        ex.min_object_voxels,
        m,
        ex.max_per_partition,
        seed,
    )
    return TrainingVolume(path.name, image, lab, sampler, stats, (vs[0], vs[1] * factor, vs[2] * factor), boundary)


def predicted_boundary(path, raw: np.ndarray, voxel_size_nm, model_dir: str = "") -> np.ndarray:
    """uint8 (z, y, x) boundary channel of ``raw`` (a synth folder's true raw) predicted by the
    boundary model (``connectome predict-boundaries``' computation), cached in
    ``path/predictions/boundary-<sha12>.npy``."""
    from pathlib import Path

    from connectome.atomic import atomic_write_bytes
    from unet.boundary import default_model, predict_arrays, read_spec

    mdir = Path(model_dir) if model_dir else default_model()
    sha = read_spec(mdir).weights_sha256[:12]
    cache = Path(path) / "predictions" / f"boundary-{sha}.npy"
    if cache.is_file():
        b = np.load(cache)
        if b.shape == raw.shape:
            return b
    b = predict_arrays(raw, voxel_size_nm, mdir)[0]
    import io

    buf = io.BytesIO()
    np.save(buf, b)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache, buf.getvalue())
    return b


# ---------------------------------------------------------------------------------------------
# `connectome train ffn`


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(
        steps=20000,
        batch_size=4,
        learning_rate=1e-3,
        warmup_steps=200,
        checkpoint_every=250,
        validate_every=1000,
        log_every=50,
        grad_clip_norm=1.0,
    )


def _default_model() -> FFNModelConfig:
    from ffn.model import COMPACT

    return COMPACT


def _default_augment() -> AugmentConfig:
    # the U-Net's intensity augmentation (sections as channels); its geometric fields are unused
    return AugmentConfig()


@dataclass(frozen=True)
class FFNTrainConfig:
    model: FFNModelConfig = field(default_factory=_default_model)
    examples: FFNExampleConfig = field(default_factory=FFNExampleConfig)
    trainer: TrainerConfig = field(default_factory=_default_trainer)
    #: intensity augmentation (unet.augment.AugmentConfig; ``enabled: false`` turns it off)
    augment: AugmentConfig = field(default_factory=_default_augment)


Config = FFNTrainConfig


def train_ffn(
    data_dirs: Sequence,
    out_dir,
    cfg: FFNTrainConfig = FFNTrainConfig(),
    val_dirs: Sequence = (),
    restart: bool = False,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict:
    """Train (or resume) the FFN on ``connectome synth`` folders; export ``out_dir/{model.json,
    weights.npz}`` (atomically; a finished ``out_dir`` is refused unless ``overwrite``). Returns a
    summary on rank 0 (``{"stopped": True, ...}`` after a signal)."""
    import json
    import sys
    import time
    from pathlib import Path

    import zarr

    from connectome.config import config_to_dict
    from connectome.errors import UserInputError
    from connectome.training import weights as wio
    from connectome.training.distributed import horovod_session
    from connectome.training.export import check_out_dir, run_summary, staged_model_dir
    from connectome.training.loop import run_training
    from ffn.modeldir import write_model_dir

    out = check_out_dir(out_dir, overwrite)
    data, val = [Path(d) for d in data_dirs], [Path(d) for d in val_dirs]
    if not data:
        raise UserInputError("--data: give at least one `connectome synth` folder")
    if not val:
        raise UserInputError(
            "--val: give at least one held-out `connectome synth` folder (checkpoints are chosen on it)"
        )
    for d in data + val:
        if not (d / "truth.zarr").is_dir():
            raise UserInputError(f"--data/--val {d}: not a `connectome synth` folder (no truth.zarr)")
    if {d.resolve() for d in data} & {d.resolve() for d in val}:
        raise UserInputError("--val: a validation folder is also a training folder")
    vs = [
        tuple(zarr.open_group(str(d / "truth.zarr"), mode="r")["raw"].attrs.get("voxel_size_nm", (0, 0, 0)))
        for d in data
    ]
    tcfg = cfg.trainer
    # the trainer fingerprints its own (non-resumable) fields: steps etc. may change on resume
    job_cfg = {k: v for k, v in config_to_dict(cfg).items() if k != "trainer"}
    fingerprint = {
        "task": "ffn",
        "config": json.loads(json.dumps(job_cfg, default=str)),
        "data": [str(d.resolve()) for d in data],
        "val": [str(d.resolve()) for d in val],
    }
    summary: dict = {}
    with horovod_session(tcfg.distributed, tcfg.intra_op_threads, tcfg.inter_op_threads) as s:
        mine = data[s.rank :: s.size] if len(data) >= s.size else data
        train = [load_training_volume(d, cfg.model, cfg.examples, tcfg.seed) for d in mine]
        vols_val = [load_training_volume(d, cfg.model, cfg.examples, tcfg.seed) for d in val]
        job = FFNJob(
            cfg.model, cfg.examples, train, vols_val, tcfg.seed, tcfg.checkpoint_every, fingerprint, cfg.augment
        )
        result = run_training(job, tcfg, out / "train", s, restart=restart)
        if result.stopped_by_signal:
            s.barrier()
            return {"stopped": True, "steps": result.steps, "total_steps": tcfg.steps, "model_dir": str(out)}
        if s.is_root:
            arrays = wio.load_npz(result.weights_file)
            doc = {
                "inference": {"move_threshold": cfg.examples.move_threshold},
                "training": {
                    "command": portable_command(list(command or sys.argv)),
                    "ranks": result.ranks,
                    "global_batch": result.global_batch,
                    "steps": result.steps,
                    "seconds_last_run": result.seconds,
                    "examples_per_s_last_run": result.examples_per_s,
                    "data": [portable_path(d) for d in data],
                    "validation_data": [portable_path(d) for d in val],
                    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "config": json.loads(json.dumps(config_to_dict(cfg), default=str)),
                    "rank_weight_digests": result.rank_weight_digests,
                },
                "validation": {
                    "episodes_f1_at_0.9": result.best_metrics or result.last_metrics,
                    "best_step": result.best_step,
                },
            }
            v0 = vs[0]
            if cfg.examples.voxel_size_nm_yx:  # the model's input pixels, not the data's
                v0 = (v0[0], cfg.examples.voxel_size_nm_yx, cfg.examples.voxel_size_nm_yx)
            from ffn.card import write_model_card

            with staged_model_dir(out) as tmp:  # atomic: a kill never leaves a mixed directory
                write_model_dir(tmp, arrays, cfg.model, v0, doc)
                write_model_card(tmp)
            summary = run_summary(out, result, result.seconds, doc["validation"])
        s.barrier()
    return summary
