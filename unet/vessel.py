"""``connectome mask-vessels``: blood-vessel mask with a 2D U-Net, blockwise and resumable.

Two blockwise tasks, each resumable on its own (done-markers in ``WS/blockwise/<stage>/``):

1. ``vessel-prob``: ``raw`` -> ``vessel_prob`` (uint8, 0..255 = probability 0..1) with the
   U-Net on sections downsampled to the model's pixel size (e.g. 4x: 8 nm -> 32 nm), tiled
   on a global grid and upsampled bilinearly (see :mod:`unet.infer`): any block layout and
   any executor give the same bits as one whole-volume run.
2. ``vessel-mask``: ``vessel_prob`` -> ``vessel_mask`` (uint8 {0,1}): threshold, fill holes,
   remove specks, per section, with a (y, x) halo of ``postprocess.max_extent_um`` so the
   decisions equal those of a whole-volume run (argument in :mod:`unet.infer`).

Input intensities are standardised with the percentiles of a sample of ``raw`` sections
(computed once when planning, recorded in the task fingerprint), not per block or tile.
Memory per worker is bounded by the block shape: a block reads its sections in slabs of at
most 8 (+ context) with a margin of one tile, and post-processes one section at a time.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from connectome.blockwise import Block, BlockGrid, OutputSpec, Task
from connectome.config import BlockwiseConfig, config_to_dict
from connectome.errors import UserInputError
from connectome.resources import MODEL_WORKER_BYTES
from connectome.workspace import Workspace, open_array
from unet.infer import PostprocessConfig

log = logging.getLogger(__name__)

STAGE_PROB = "vessel-prob"
STAGE_MASK = "vessel-mask"
PROB = "vessel_prob"
MASK = "vessel_mask"


def _default_blockwise() -> BlockwiseConfig:
    return BlockwiseConfig(block_shape_zyx=(8, 2048, 2048))


@dataclass(frozen=True)
class VesselMaskConfig:
    #: block (and chunk) shape of both outputs; (y, x) best a multiple of the tile core in raw
    #: pixels ((tile_px - 2 margin_px) x factor = 1024 for the shipped model at 8 nm)
    blockwise: BlockwiseConfig = field(default_factory=_default_blockwise)
    #: model directory (None: the shipped model, or $CONNECTOME_VESSEL_MODEL); --model overrides
    model: Optional[str] = None
    #: model input tile and the margin cropped from each side (model pixels); 0 = the model's
    tile_px: int = 0
    margin_px: int = 0
    #: tiles per model call (tiles are large: 1 keeps memory low and costs little speed on CPUs)
    batch_size: int = 1
    #: TensorFlow intra-op threads per worker (0 = TensorFlow's default)
    threads: int = 0
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def __post_init__(self):
        if self.tile_px < 0 or self.margin_px < 0 or self.batch_size < 1 or self.threads < 0:
            raise ValueError("tile_px, margin_px, threads must be >= 0 and batch_size >= 1")


Config = VesselMaskConfig

_PREDICTORS: dict = {}


def get_predictor(model_dir: str, weights_sha256: str, batch_size: int, threads: int):
    """The loaded model, once per process (workers keep it across blocks)."""
    key = (model_dir, weights_sha256, batch_size)
    if key not in _PREDICTORS:
        from connectome.training.distributed import set_threads

        if threads:
            set_threads(threads, 1)
        from unet.infer import Predictor
        from unet.modeldir import build_model, read_model_dir

        spec = read_model_dir(model_dir)
        if spec.weights_sha256 != weights_sha256:
            raise UserInputError(f"{model_dir}: the model changed while the stage was running")
        _PREDICTORS.clear()
        _PREDICTORS[key] = Predictor(build_model(spec), batch_size)
    return _PREDICTORS[key]


@dataclass(frozen=True)
class VesselProbBlock:
    workspace: str
    model_dir: str
    weights_sha256: str
    factor: int
    tile: int
    margin: int
    z_context: int
    stats: tuple[float, float, float]
    batch_size: int
    threads: int

    def __call__(self, block: Block) -> None:
        from unet.data import IntensityStats
        from unet.infer import TileGeometry, predict_box

        predictor = get_predictor(self.model_dir, self.weights_sha256, self.batch_size, self.threads)
        geom = TileGeometry(self.factor, self.tile, self.margin, self.z_context)
        raw = open_array(self.workspace, "raw")
        prob = predict_box(
            raw, predictor, geom, IntensityStats(*self.stats), block.write_box.begin_zyx, block.write_box.end_zyx
        )
        open_array(self.workspace, PROB, mode="r+")[block.write_box.slices] = prob


@dataclass(frozen=True)
class VesselMaskBlock:
    workspace: str
    postprocess: PostprocessConfig
    voxel_yx_nm: float
    halo_yx: int

    def __call__(self, block: Block) -> None:
        from unet.infer import postprocess, read_prob_for_mask

        zh = self.postprocess.z_smooth // 2
        prob, inner = read_prob_for_mask(
            open_array(self.workspace, PROB), block.write_box.begin_zyx, block.write_box.end_zyx, zh, self.halo_yx
        )
        mask = postprocess(prob, self.postprocess, self.voxel_yx_nm, inner, zh)
        open_array(self.workspace, MASK, mode="r+")[block.write_box.slices] = mask


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    sha256: str
    factor: int
    tile: int
    margin: int
    z_context: int
    threshold: float


def resolve_model(ws: Workspace, config: VesselMaskConfig, model_dir: Optional[str | Path]) -> ResolvedModel:
    """Read and check the model directory against the workspace (driver side, before any block).
    Builds the network once so a weights file that does not fit fails here with exit 2."""
    from unet import default_vessel_model
    from unet.data import model_factor
    from unet.modeldir import build_model, read_model_dir

    path = Path(model_dir or config.model or default_vessel_model()).resolve()
    spec = read_model_dir(path)
    build_model(spec)  # weights: sha256, names, shapes
    vz, vy, vx = ws.voxel_size_nm
    if abs(vy - vx) > 1e-6 * vy:
        raise UserInputError(f"workspace {ws.path}: mask-vessels needs square pixels, voxel size is {[vz, vy, vx]} nm")
    factor = model_factor(spec.voxel_size_nm_yx, vy, f"--model {path} for workspace {ws.path}")
    tile, margin = _tiling(config, spec, ws.shape_zyx, factor)
    return ResolvedModel(str(path), spec.weights_sha256, factor, tile, margin, spec.z_context, spec.threshold)


def _tiling(config: VesselMaskConfig, spec, shape_zyx, factor: int) -> tuple[int, int]:
    """Tile and margin (model px). The tile shrinks for volumes smaller than one tile: it depends
    on the volume's shape only, so every block still uses the same global grid."""
    from unet.infer import effective_tile

    tile = config.tile_px or spec.tile_px
    margin = config.margin_px or spec.margin_px
    mult = spec.size_multiple
    if tile % mult or tile <= 2 * margin:
        raise UserInputError(
            f"tile_px {tile} must be a multiple of {mult} (2**depth) and larger than 2 x margin_px ({margin})"
        )
    return effective_tile(tile, margin, shape_zyx[1:], factor, mult), margin


def plan_prob(
    workspace: str | Path, config: VesselMaskConfig = VesselMaskConfig(), model_dir: Optional[str | Path] = None
) -> Task:
    from unet.data import intensity_stats

    ws = Workspace.open(workspace)
    raw = ws.require_complete("raw", "mask-vessels")
    m = resolve_model(ws, config, model_dir)
    stats = intensity_stats(raw, m.factor)
    core_raw = (m.tile - 2 * m.margin) * m.factor
    by, bx = config.blockwise.block_shape_zyx[1:]
    if (by % core_raw or bx % core_raw) and (by < ws.shape_zyx[1] or bx < ws.shape_zyx[2]):
        log.info(
            "block (y, x) %s is not a multiple of the tile core (%d raw px): some tiles are computed twice",
            [by, bx],
            core_raw,
        )
    grid = BlockGrid(
        ws.shape_zyx, config.blockwise.block_shape_zyx, (m.z_context // 2, m.margin * m.factor, m.margin * m.factor)
    )
    out = OutputSpec(
        PROB,
        "uint8",
        tuple(config.blockwise.block_shape_zyx),
        attrs={
            "from": "raw",
            "scale": "0..255 = probability 0..1",
            "model": m.path,
            "model_sha256": m.sha256,
            "model_threshold": m.threshold,
        },
    )
    proc = VesselProbBlock(
        str(ws.path),
        m.path,
        m.sha256,
        m.factor,
        m.tile,
        m.margin,
        m.z_context,
        (stats.p5, stats.p50, stats.p95),
        config.batch_size,
        config.threads,
    )
    fingerprint = {
        "model_sha256": m.sha256,
        "factor": m.factor,
        "tile_px": m.tile,
        "margin_px": m.margin,
        "z_context": m.z_context,
        "intensity": stats.to_json(),
    }
    return Task(
        STAGE_PROB,
        ws.path,
        grid,
        proc,
        fingerprint,
        (out,),
        max_retries=config.blockwise.max_retries,
        bytes_per_voxel=32.0,
        worker_memory_bytes=MODEL_WORKER_BYTES,
    )


def plan_mask(workspace: str | Path, config: VesselMaskConfig = VesselMaskConfig()) -> Task:
    ws = Workspace.open(workspace)
    prob = ws.require_complete(PROB, "mask-vessels")
    vy = ws.voxel_size_nm[1]
    if config.postprocess.threshold is None:
        post = dataclasses.replace(config.postprocess, threshold=float(prob.attrs.get("model_threshold", 0.5)))
        config = dataclasses.replace(config, postprocess=post)
    halo = config.postprocess.extent_px(vy) + 1
    grid = BlockGrid(ws.shape_zyx, config.blockwise.block_shape_zyx, (config.postprocess.z_smooth // 2, halo, halo))
    out = OutputSpec(
        MASK,
        "uint8",
        tuple(config.blockwise.block_shape_zyx),
        attrs={
            "from": PROB,
            "values": "1 = vessel (lumen + wall), 0 = not",
            "postprocess": config_to_dict(config.postprocess),
        },
    )
    proc = VesselMaskBlock(str(ws.path), config.postprocess, vy, halo)
    fingerprint = {
        "postprocess": config_to_dict(config.postprocess),
        "halo_yx": halo,
        "model_sha256": prob.attrs.get("model_sha256"),
    }
    return Task(STAGE_MASK, ws.path, grid, proc, fingerprint, (out,), max_retries=config.blockwise.max_retries)


def predict_array(
    raw: np.ndarray,
    voxel_yx_nm: float,
    model_dir: str | Path,
    config: VesselMaskConfig = VesselMaskConfig(),
    whole: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """In-memory (probability, mask) of a numpy volume: the stage's computation in one piece
    (``whole=False``: the tiled path; ``whole=True``: one model call per section)."""
    from unet.data import intensity_stats, model_factor
    from unet.infer import Predictor, TileGeometry, postprocess_volume, predict_box, predict_volume_whole
    from unet.modeldir import build_model, read_model_dir

    spec = read_model_dir(model_dir)
    predictor = Predictor(build_model(spec), config.batch_size)
    factor = model_factor(spec.voxel_size_nm_yx, voxel_yx_nm, "volume")
    stats = intensity_stats(raw, factor)
    if config.postprocess.threshold is None:
        config = dataclasses.replace(
            config, postprocess=dataclasses.replace(config.postprocess, threshold=spec.threshold)
        )
    tile, margin = _tiling(config, spec, raw.shape, factor)
    if whole:
        prob = predict_volume_whole(raw, predictor, factor, margin, spec.size_multiple, stats, spec.z_context)
    else:
        prob = predict_box(
            raw, predictor, TileGeometry(factor, tile, margin, spec.z_context), stats, (0, 0, 0), raw.shape
        )
    return prob, postprocess_volume(prob, config.postprocess, voxel_yx_nm)
