"""``connectome segment``: neuron segmentation over overlapping subvolumes, reconciled into one
globally consistent ``WS/volume.zarr/segmentation`` (uint64, 0 = no object).

Two blockwise tasks, each resumable:

1. ``segment-subvolumes`` (one block per subvolume; the block's write box is the subvolume's
   *core*, its box is the core grown by ``overlap_zyx``): with ``method: watershed`` (the
   default) the learned-boundary segmentation of :mod:`ffn.watershed` (supervoxels from
   ``boundary``, agglomerated by mean affinity); with ``method: ffn`` the FFN canvas
   (:mod:`ffn.inference`) floods the box from its seeds; with ``method: baseline`` the classical
   watershed of :mod:`ffn.baseline` segments it. The local labels are saved to
   ``WS/segment/subvolumes/<block_id>.npz``. Vessel-mask voxels (``vessel_mask`` if the
   workspace has it and ``use_vessel_mask``) are never claimed and seed nothing.
2. ``segment-write``: its driver-only setup matches ids on every overlap and joins them with
   union-find (:mod:`ffn.reconcile`, rule documented there) into relabelling tables
   (``WS/segment/relabel.npz``); each block writes its core, relabelled.

The image is standardised with the volume's percentiles, computed once when planning (recorded
in the fingerprint), so every subvolume sees the same intensities. The network runs at the
voxel size it was trained at; a workspace whose voxel size differs by more than 30 % is refused.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from scipy import ndimage

from connectome.atomic import atomic_write_bytes
from connectome.blockwise import Block, BlockGrid, OutputSpec, Task
from connectome.config import BlockwiseConfig, config_to_dict
from connectome.errors import UserInputError
from connectome.resources import MODEL_WORKER_BYTES
from connectome.workspace import Workspace, open_array
from ffn.agglomerate import FFNAgglomerationConfig
from ffn.inference import InferenceConfig
from ffn.reconcile import MatchRule, NpzSubvolumeStore, Subvolume, subvolume_grid
from ffn.watershed import WatershedConfig

log = logging.getLogger(__name__)

STAGE_SUB, STAGE_WRITE = "segment-subvolumes", "segment-write"
OUT = "segmentation"


def default_model_dir() -> Path:
    return Path(__file__).resolve().parent / "models" / "boundary16"


def _default_blockwise() -> BlockwiseConfig:
    return BlockwiseConfig(block_shape_zyx=(32, 256, 256))


@dataclass(frozen=True)
class SegmentConfig:
    #: "watershed" (learned boundaries: supervoxels + mean-affinity agglomeration; needs the
    #: `boundary` array of `connectome predict-boundaries`), "ffn" (the flood-filling network),
    #: "ffn-agglomerate" (watershed supervoxels whose uncertain pairs the FFN decides by local
    #: floods, ffn.agglomerate), "baseline" (classical watershed on the raw image, for
    #: comparison), or "auto" (the
    #: default): "ffn" when an FFN model is given (--model), else "watershed"
    method: Literal["auto", "watershed", "ffn", "ffn-agglomerate", "baseline"] = "auto"
    #: the learned-boundary segmentation (method watershed)
    watershed: WatershedConfig = field(default_factory=WatershedConfig)
    #: FFN agglomeration of the watershed's supervoxels (method ffn-agglomerate)
    ffn_agglomeration: FFNAgglomerationConfig = field(default_factory=FFNAgglomerationConfig)
    #: FFN inference (thresholds, minimum segment size, seeds, batch)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    #: how far neighbouring subvolumes overlap (voxels, z y x); empty: the method's default, clipped
    #: to the block shape -- watershed and ffn-agglomerate (16, 96, 96): agglomeration needs context
    #: (demo seed 1121: ARAND 0.158 with (8, 48, 48), 0.088 with (16, 96, 96), the same as one
    #: whole-volume run); ffn and baseline (8, 48, 48)
    overlap_zyx: tuple[int, ...] = ()
    #: id matching on the overlaps
    match: MatchRule = field(default_factory=MatchRule)
    #: respect WS/volume.zarr/vessel_mask when present
    use_vessel_mask: bool = True
    #: TensorFlow threads per worker (0 = TensorFlow's default)
    threads: int = 1
    #: network arithmetic: "float32", or "bfloat16" (faster on CPUs/GPUs with bf16 units)
    precision: Literal["float32", "bfloat16"] = "float32"
    #: a model with coarser input pixels than the data (e.g. 16 nm model, 8 nm data) runs on the
    #: area-downsampled image; its labels are upsampled and, with this on, their borders snapped
    #: to the full-resolution membranes (per-section seeded watershed inside the labelled area)
    refine_upsampled: bool = False
    #: give voxels no object claimed (membranes, rejected fragments) to the object across the
    #: lowest image ridge (per-section watershed from the objects; vessel voxels stay 0).
    #: Off by default: on a development synth crop it merged unsegmented axons into dendrites
    #: (ARAND 0.063 -> 0.105); snapping alone changed ARAND by +0.002
    fill_unlabelled: bool = False
    #: subvolume cores = blocks = chunks of the segmentation
    blockwise: BlockwiseConfig = field(default_factory=_default_blockwise)

    def __post_init__(self):
        if self.overlap_zyx and (len(self.overlap_zyx) != 3 or any(int(v) < 0 for v in self.overlap_zyx)):
            raise ValueError(f"overlap_zyx must be empty or three numbers >= 0, got {list(self.overlap_zyx)}")

    @property
    def overlap(self) -> tuple[int, int, int]:
        """The overlap in use: ``overlap_zyx``, or the method's default clipped to the block."""
        if self.overlap_zyx:
            return tuple(int(v) for v in self.overlap_zyx)
        base = (16, 96, 96) if self.method in ("watershed", "ffn-agglomerate") else (8, 48, 48)
        return tuple(min(o, int(b)) for o, b in zip(base, self.blockwise.block_shape_zyx))
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


Config = SegmentConfig

_MODELS: dict = {}


def _predictor(model_dir: str, sha: str, threads: int, precision: str = "float32"):
    key = (model_dir, sha, precision)
    if key not in _MODELS:
        import tensorflow as tf

        from connectome.training.distributed import set_threads

        if threads:
            set_threads(threads, 1)
        from ffn.modeldir import build_model, read_model_dir

        spec = read_model_dir(model_dir)
        if spec.weights_sha256 != sha:
            raise UserInputError(f"{model_dir}: the model changed while the stage was running")
        model = build_model(spec, precision)
        fn = tf.function(lambda x: model(x, training=False)[..., 0], reduce_retracing=True)
        _MODELS.clear()
        _MODELS[key] = (spec, lambda x: fn(tf.convert_to_tensor(x, tf.float32)).numpy())
    return _MODELS[key]


def _store(workspace) -> NpzSubvolumeStore:
    return NpzSubvolumeStore(Path(workspace) / "segment" / "subvolumes")


def _subvolumes(ws: Workspace, config: SegmentConfig) -> dict[str, Subvolume]:
    return {s.subvolume_id: s for s in subvolume_grid(ws.shape_zyx, config.blockwise.block_shape_zyx, config.overlap)}


@dataclass(frozen=True)
class SubvolumeBlock:
    workspace: str
    config: SegmentConfig
    stats: tuple[float, float, float]
    voxel_nm: tuple[float, float, float]
    model_dir: Optional[str]
    sha: Optional[str]
    has_mask: bool
    #: (y, x) downsampling factor from the workspace's pixels to the model's
    factor: int = 1

    def __call__(self, block: Block) -> None:
        from unet.data import IntensityStats

        ws = Workspace.open(self.workspace)
        sub = _subvolumes(ws, self.config)[block.block_id]
        method = self.config.method
        raw8 = np.asarray(open_array(self.workspace, "raw")[sub.box.slices]) if method != "watershed" else None
        mask = np.asarray(open_array(self.workspace, "vessel_mask")[sub.box.slices]) > 0 if self.has_mask else None
        if method == "watershed":
            from ffn.watershed import segment_watershed

            bnd = np.asarray(open_array(self.workspace, "boundary")[(slice(None),) + sub.box.slices])
            labels = segment_watershed(bnd, self.config.watershed, mask=mask)
        elif method == "ffn-agglomerate":
            from ffn.agglomerate import segment_ffn_agglomerate

            bnd = np.asarray(open_array(self.workspace, "boundary")[(slice(None),) + sub.box.slices])
            labels, summary = segment_ffn_agglomerate(
                bnd,
                raw8,
                mask,
                self.voxel_nm,
                self.factor,
                IntensityStats(*self.stats),
                self.config.watershed,
                self.config.ffn_agglomeration,
                self.config.inference,
                _predictor(self.model_dir, self.sha, self.config.threads, self.config.precision),
            )
            log.info("segment %s: FFN agglomeration %s", block.block_id, summary)
        elif method == "baseline":
            from ffn.baseline import BaselineConfig, segment_baseline

            labels = segment_baseline(raw8, BaselineConfig(), vessel_mask=mask)
        else:
            spec_pred = _predictor(self.model_dir, self.sha, self.config.threads, self.config.precision)
            bnd = (
                np.asarray(open_array(self.workspace, "boundary")[(0,) + sub.box.slices])
                if "boundary" in spec_pred[0].model.channels
                else None
            )
            labels = segment_ffn_at(
                raw8, mask, self.voxel_nm, self.factor, IntensityStats(*self.stats), self.config, spec_pred, bnd
            )
        _store(self.workspace).save(sub, np.asarray(labels).astype(np.uint64))


def segment_ffn_at(
    raw8: np.ndarray,
    mask,
    voxel_nm,
    factor: int,
    stats,
    config: SegmentConfig,
    spec_and_predict,
    boundary8: Optional[np.ndarray] = None,
) -> np.ndarray:
    """One subvolume (uint8 raw at the workspace's pixels; ``boundary8`` the uint8 boundary
    channel of ``predict-boundaries`` for a model with a "boundary" input) with the FFN at the
    model's pixels: edge-pad (y, x) to a multiple of ``factor``, area-downsample, standardise the
    raw with ``stats`` (percentiles at the model's pixels), segment, upsample the labels
    (nearest) and, if ``config.refine_upsampled``, snap their borders to the full-resolution image."""
    from ffn.data import model_resolution

    f = int(factor)
    z, h, w = raw8.shape
    pad = ((0, 0), (0, -h % f), (0, -w % f))
    image, _, m = model_resolution(
        np.pad(raw8, pad, mode="edge"), None, None if mask is None else np.pad(mask, pad, mode="edge"), f
    )
    bnd = None if boundary8 is None else model_resolution(np.pad(boundary8, pad, mode="edge"), None, None, f)[0]
    coarse = segment_ffn(
        stats.standardize(image),
        m,
        (voxel_nm[0], voxel_nm[1] * f, voxel_nm[2] * f),
        config.inference,
        spec_and_predict,
        bnd,
    )
    labels = np.repeat(np.repeat(coarse, f, axis=1), f, axis=2)[:, :h, :w] if f > 1 else coarse
    if config.fill_unlabelled or (config.refine_upsampled and f > 1):
        labels = snap_to_membranes(
            raw8, labels, f if (config.refine_upsampled and f > 1) else 0, mask, config.fill_unlabelled
        )
    if mask is not None:
        labels[mask] = 0
    return labels


def snap_to_membranes(
    raw8: np.ndarray, labels: np.ndarray, margin: int, mask=None, fill: bool = False, sigma: float = 1.0
) -> np.ndarray:
    """Per section: each label keeps, as a watershed marker, its pixels farther than ``margin``
    px from any other value (``margin`` = the upsampling factor: the nearest-upsampled borders
    are uncertain by that much), and the rest is re-flooded from the markers over the smoothed
    image inverted (membranes are dark: high ground), so borders land on the full-resolution
    membranes. The flooded area is the labelled one, or with ``fill`` every pixel outside
    ``mask`` (vessels stay 0)."""
    from skimage.segmentation import watershed

    out = np.zeros_like(labels)
    m = int(margin)
    for z in range(labels.shape[0]):
        lab = labels[z]
        if not lab.any():
            continue
        if m:
            lo = ndimage.minimum_filter(lab, size=2 * m + 1, mode="nearest")
            hi = ndimage.maximum_filter(lab, size=2 * m + 1, mode="nearest")
            markers = np.where((lo == hi) & (lab > 0), lab, 0)
        else:
            markers = lab
        area = np.ones(lab.shape, bool) if fill else lab > 0
        if mask is not None:
            area &= ~np.asarray(mask[z], bool)
        elevation = -ndimage.gaussian_filter(raw8[z].astype(np.float32), sigma)
        out[z] = watershed(elevation, markers, mask=area)
    return out


def segment_ffn(
    image: np.ndarray, mask, voxel_nm, cfg: InferenceConfig, spec_and_predict, boundary01: Optional[np.ndarray] = None
) -> np.ndarray:
    """One subvolume with the FFN: seeds, canvas, labels (uint64, 0 = none). ``image`` is the
    standardised raw; ``boundary01`` the boundary probability (models with a boundary input;
    seeds then come from its interior, :func:`ffn.inference.boundary_seeds`)."""
    from ffn.inference import Canvas, boundary_seeds, peak_seeds, run_canvases
    from ffn.train import stack_channels

    spec, predict = spec_and_predict
    if any(s < f for s, f in zip(image.shape, spec.model.fov_zyx)):
        return np.zeros(image.shape, np.uint64)  # a clipped edge subvolume thinner than the FOV
    use_b = "boundary" in spec.model.channels
    canvas = Canvas(stack_channels(spec.model, image, boundary01 if use_b else None), spec.model, cfg, mask)
    seeds = boundary_seeds(boundary01, mask, voxel_nm, cfg) if use_b else peak_seeds(image, mask, voxel_nm, cfg)
    run_canvases([(canvas, seeds)], predict, cfg.batch_size)
    return np.where(canvas.seg > 0, canvas.seg, 0).astype(np.uint64)


def _resolve_model(ws: Workspace, config: SegmentConfig, model_dir) -> tuple[Optional[str], Optional[str], int]:
    if config.method in ("baseline", "watershed"):
        if model_dir:
            raise UserInputError(
                f"--model {model_dir}: method {config.method!r} uses no FFN model (the boundary model "
                "is chosen by `connectome predict-boundaries --model`); drop --model or use "
                "--method ffn"
            )
        if config.method == "watershed":
            from unet.boundary import require_boundary

            require_boundary(ws, "segment --method watershed")
        return None, None, 1
    from ffn.modeldir import build_model, read_model_dir

    path = Path(model_dir) if model_dir else default_model_dir()
    if not model_dir and not (path / "model.json").is_file():
        raise UserInputError(
            "segment: no shipped FFN model in this checkout (ffn/models/boundary16); pass --model DIR "
            "(a directory written by `connectome train ffn`)"
        )
    spec = read_model_dir(path)
    factor = model_pixel_factor(ws, spec, path)
    have_z, want_z = ws.voxel_size_nm[0], spec.voxel_size_nm[0]
    if abs(have_z - want_z) > 0.3 * want_z:
        raise UserInputError(
            f"--model {path}: trained at voxel size {list(spec.voxel_size_nm)} nm, the workspace "
            f"has {list(ws.voxel_size_nm)} nm (z differs by more than 30 %)"
        )
    at_model = (ws.shape_zyx[0], ws.shape_zyx[1] // factor, ws.shape_zyx[2] // factor)
    if any(s < f for s, f in zip(at_model, spec.model.fov_zyx)):
        raise UserInputError(
            f"workspace {ws.path}: volume {list(ws.shape_zyx)} ({list(at_model)} at the model's "
            f"{spec.voxel_size_nm[1]:g} nm pixels) is smaller than the model's field of view "
            f"{list(spec.model.fov_zyx)}"
        )
    if "boundary" in spec.model.channels:
        from unet.boundary import require_boundary

        require_boundary(ws, f"the FFN model {path} (input channels {', '.join(spec.model.channels)})")
    build_model(spec)  # weights: sha256, names, shapes -> exit 2 here, not in a worker
    return str(path.resolve()), spec.weights_sha256, factor


def model_pixel_factor(ws: Workspace, spec, path) -> int:
    """Integer (y, x) factor from the workspace's pixels to the model's (exit 2 if none fits)."""
    from unet.data import model_factor

    if ws.voxel_size_nm[1] != ws.voxel_size_nm[2] or spec.voxel_size_nm[1] != spec.voxel_size_nm[2]:
        raise UserInputError(
            f"--model {path}: y and x pixel sizes must be equal (workspace {list(ws.voxel_size_nm)} "
            f"nm, model {list(spec.voxel_size_nm)} nm)"
        )
    return model_factor(spec.voxel_size_nm[1], ws.voxel_size_nm[1], f"--model {path}", tolerance=0.3)


def resolve_method(config: SegmentConfig, model_dir=None) -> SegmentConfig:
    """``config`` with ``method: auto`` replaced by what it means: "ffn" when ``model_dir`` names
    an FFN model, else "watershed"."""
    import dataclasses

    if config.method != "auto":
        return config
    return dataclasses.replace(config, method="ffn" if model_dir else "watershed")


def plan_subvolumes(workspace, config: SegmentConfig = SegmentConfig(), model_dir=None) -> Task:
    from unet.data import intensity_stats

    config = resolve_method(config, model_dir)
    ws = Workspace.open(workspace)
    raw = ws.require_complete("raw", "segment")
    model, sha, factor = _resolve_model(ws, config, model_dir)
    has_mask = bool(config.use_vessel_mask and ws.has("vessel_mask"))
    if has_mask:
        vm = ws.require_complete("vessel_mask", "segment")
        if all(np.asarray(vm[z]).all() for z in range(vm.shape[0])):
            log.warning("segment: the vessel mask covers the whole volume; the segmentation will be empty")
    stats = intensity_stats(raw, factor)
    try:
        _subvolumes(ws, config)
    except ValueError as exc:
        raise UserInputError(f"segment config: {exc}") from None
    bad = [
        f"{k} {list(v)}"
        for k, v in (("blockwise.block_shape_zyx", config.blockwise.block_shape_zyx), ("overlap_zyx", config.overlap))
        if v[1] % factor or v[2] % factor
    ]
    if bad:
        raise UserInputError(
            f"segment config: {', '.join(bad)}: (y, x) must be multiples of {factor}, the model's "
            f"pixel factor (so subvolumes share one coarse pixel grid)"
        )
    grid = BlockGrid(ws.shape_zyx, config.blockwise.block_shape_zyx)
    proc = SubvolumeBlock(
        str(ws.path), config, (stats.p5, stats.p50, stats.p95), tuple(ws.voxel_size_nm), model, sha, has_mask, factor
    )
    if config.method == "ffn-agglomerate":
        from unet.boundary import require_boundary

        require_boundary(ws, "segment --method ffn-agglomerate")
    boundary_sha = (
        ws.require_complete("boundary", "segment").attrs.get("model_sha256")
        if config.method != "baseline" and ws.has("boundary")
        else None
    )
    fp = {
        "method": config.method,
        "model_sha256": sha,
        "boundary_model_sha256": boundary_sha,
        "watershed": config_to_dict(config.watershed) if config.method in ("watershed", "ffn-agglomerate") else None,
        "ffn_agglomeration": (config_to_dict(config.ffn_agglomeration) if config.method == "ffn-agglomerate" else None),
        "model_factor_yx": factor,
        "precision": config.precision,
        "intensity": stats.to_json(),
        "vessel_mask": has_mask,
        "inference": config_to_dict(config.inference),
        "overlap_zyx": list(config.overlap),
    }
    return Task(
        STAGE_SUB,
        ws.path,
        grid,
        proc,
        fp,
        (),
        max_retries=config.blockwise.max_retries,
        bytes_per_voxel=64.0,
        worker_memory_bytes=MODEL_WORKER_BYTES,
    )


@dataclass(frozen=True)
class Reconcile:
    """Driver-only setup of ``segment-write``: overlaps -> union-find -> relabelling tables."""

    workspace: str
    config: SegmentConfig

    def __call__(self) -> None:
        from ffn.reconcile import (
            canonical_order,
            global_id_offsets,
            join_edges,
            overlapping_pairs,
            pair_edges,
            relabel_tables,
        )

        ws = Workspace.open(self.workspace)
        store = _store(self.workspace)
        subs = canonical_order(_subvolumes(ws, self.config).values())
        offsets, n_ids = global_id_offsets(store, subs)
        edges = [pair_edges(store, a, b, offsets, self.config.match) for a, b in overlapping_pairs(subs)]
        roots = join_edges(n_ids, edges)
        tables = relabel_tables(store, subs, offsets, roots)
        buf = io.BytesIO()
        np.savez(buf, **tables)
        atomic_write_bytes(Path(self.workspace) / "segment" / "relabel.npz", buf.getvalue())
        n_final = int(max((int(t.max()) for t in tables.values() if t.size), default=0))
        log.info(
            "segment: %d subvolumes, %d overlapping pairs, %d merges, %d local ids -> %d objects",
            len(subs),
            len(edges),
            int(sum(e.shape[0] for e in edges)),
            n_ids,
            n_final,
        )


@dataclass(frozen=True)
class WriteBlock:
    workspace: str
    config: SegmentConfig

    def __call__(self, block: Block) -> None:
        from ffn.reconcile import reconciled_core

        ws = Workspace.open(self.workspace)
        sub = _subvolumes(ws, self.config)[block.block_id]
        with np.load(str(Path(self.workspace) / "segment" / "relabel.npz")) as f:
            table = np.array(f[sub.subvolume_id])
        open_array(self.workspace, OUT, mode="r+")[block.write_box.slices] = reconciled_core(
            _store(self.workspace), sub, table
        )


def _subvolumes_digest(workspace) -> str:
    import hashlib

    h = hashlib.sha1()
    for p in sorted((Path(workspace) / "segment" / "subvolumes").glob("*.npz")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def plan_write(workspace, config: SegmentConfig = SegmentConfig(), model_dir=None) -> Task:
    config = resolve_method(config, model_dir)
    ws = Workspace.open(workspace)
    grid = BlockGrid(ws.shape_zyx, config.blockwise.block_shape_zyx)
    out = OutputSpec(
        OUT,
        "uint64",
        tuple(config.blockwise.block_shape_zyx),
        attrs={"from": "raw", "method": config.method, "values": "object id, 0 = no object"},
    )
    fp = {
        "subvolumes": _subvolumes_digest(workspace),
        "match": config_to_dict(config.match),
        "config": config_to_dict(config),
    }
    return Task(
        STAGE_WRITE,
        ws.path,
        grid,
        WriteBlock(str(ws.path), config),
        fp,
        (out,),
        max_retries=config.blockwise.max_retries,
        setup=Reconcile(str(ws.path), config),
    )
