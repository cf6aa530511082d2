"""``connectome predict-boundaries``: the boundary 3D U-Net over the aligned volume, blockwise.

Writes ``WS/volume.zarr/boundary``: uint8 (0..255 = 0..1), channel axis first,
``(4, z, y, x)``, channels named in its ``channels`` attribute:

* 0 ``boundary`` -- probability that the voxel is a cell boundary (membrane, extracellular
  space, vessel);
* 1-3 ``aff_z``, ``aff_y``, ``aff_x`` -- affinity of the voxel to its predecessor along z, y, x
  (the probability that both belong to one neuron).

The model runs on (y, x) area-downsampled tiles on one global 3D tile grid with margins
(:mod:`unet.infer3d`): every voxel's value depends on its one tile only, so any block layout
and executor give the same bits as one whole-volume run (tested). No-data pixels (raw 0: the
fill of an aligned volume where a drifted section has no tissue) are filled from the nearest
tissue of their section first, as in the synapse stage. Resumable like every stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from connectome.blockwise import Block, BlockGrid, OutputSpec, Task
from connectome.config import BlockwiseConfig
from connectome.errors import UserInputError
from connectome.resources import MODEL_WORKER_BYTES
from connectome.workspace import Workspace, open_array

log = logging.getLogger(__name__)

STAGE = "predict-boundaries"
OUT = "boundary"
CHANNELS = ("boundary", "aff_z", "aff_y", "aff_x")
#: the shipped model (package data)
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "boundary"


def default_model() -> Path:
    import os

    return Path(os.environ.get("CONNECTOME_BOUNDARY_MODEL") or DEFAULT_MODEL)


def _default_blockwise() -> BlockwiseConfig:
    return BlockwiseConfig(block_shape_zyx=(32, 512, 512))


@dataclass(frozen=True)
class BoundaryConfig:
    #: block (and chunk) shape of the boundary array (z, y, x)
    blockwise: BlockwiseConfig = field(default_factory=_default_blockwise)
    #: model directory (None: the shipped one, or $CONNECTOME_BOUNDARY_MODEL); --model overrides
    model: Optional[str] = None
    #: raw value of missing data, filled from the nearest tissue before prediction; null: off
    no_data_value: Optional[int] = 0
    #: tiles (model voxels, z y x) and margins; empty: the model's recommendation
    tile_zyx: tuple[int, ...] = ()
    margin_zyx: tuple[int, ...] = ()
    #: tiles per model call; test-time augmentation (1, 2 or 4 flips of y/x; affinities mapped back)
    batch_size: int = 1
    tta: int = 1
    #: TensorFlow intra-op threads per worker (0 = TensorFlow's default)
    threads: int = 0

    def __post_init__(self):
        for name in ("tile_zyx", "margin_zyx"):
            v = getattr(self, name)
            if v and (len(v) != 3 or min(v) < 0):
                raise ValueError(f"{name} must be empty or three non-negative integers, got {list(v)}")
        if self.no_data_value is not None and not 0 <= self.no_data_value <= 255:
            raise ValueError(f"no_data_value must be null or in 0..255, got {self.no_data_value}")
        if self.batch_size < 1 or self.tta != 1 or self.threads < 0:
            raise ValueError(
                "batch_size must be >= 1, tta 1 (flips would move the affinities' predecessor convention), threads >= 0"
            )


Config = BoundaryConfig


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    sha256: str
    factor: int
    tile: tuple[int, int, int]
    margin: tuple[int, int, int]


def read_spec(path: Path):
    from unet.modeldir import read_model_dir

    return read_model_dir(path, task="boundary", ndim=3, out_channels=len(CHANNELS))


def resolve_model(
    shape_zyx, voxel_size_nm, config: BoundaryConfig, model_dir=None, where: str = "volume"
) -> ResolvedModel:
    """Read and check the model (driver side): weights build, pixel size fits, tiling valid."""
    from unet.infer3d import resolve_tiling
    from unet.modeldir import build_model

    path = Path(model_dir or config.model or default_model()).resolve()
    if not path.exists():
        raise UserInputError(f"--model {path}: not found (train one with `connectome train boundary`)")
    spec = read_spec(path)
    build_model(spec)
    factor, tile, margin = resolve_tiling(
        spec, path, shape_zyx, voxel_size_nm, config.tile_zyx, config.margin_zyx, where, "predict-boundaries"
    )
    return ResolvedModel(str(path), spec.weights_sha256, factor, tile, margin)


def get_predictor(model_dir: str, sha256: str, batch_size: int, threads: int):
    from unet.infer3d import cached_predictor

    return cached_predictor(read_spec, model_dir, sha256, batch_size, 1, threads)


@dataclass(frozen=True)
class PredictBlock:
    workspace: str
    model: ResolvedModel
    stats: tuple[float, float, float]
    batch_size: int
    threads: int
    no_data: Optional[int] = None

    def __call__(self, block: Block) -> None:
        from unet.data import IntensityStats
        from unet.infer3d import TileGeometry3D, predict_box3d

        m = self.model
        predictor = get_predictor(m.path, m.sha256, self.batch_size, self.threads)
        out = predict_box3d(
            open_array(self.workspace, "raw"),
            predictor,
            TileGeometry3D(m.factor, m.tile, m.margin),
            IntensityStats(*self.stats),
            block.write_box.begin_zyx,
            block.write_box.end_zyx,
            len(CHANNELS),
            self.no_data,
        )
        open_array(self.workspace, OUT, mode="r+")[(slice(None),) + block.write_box.slices] = out


def plan(workspace: str | Path, config: BoundaryConfig = BoundaryConfig(), model_dir=None) -> Task:
    from unet.data import intensity_stats

    ws = Workspace.open(workspace)
    raw = ws.require_complete("raw", "predict-boundaries")
    m = resolve_model(ws.shape_zyx, ws.voxel_size_nm, config, model_dir, f"workspace {ws.path}")
    stats = intensity_stats(raw, m.factor)
    halo = (m.margin[0], m.margin[1] * m.factor, m.margin[2] * m.factor)
    grid = BlockGrid(ws.shape_zyx, config.blockwise.block_shape_zyx, halo)
    out = OutputSpec(
        OUT,
        "uint8",
        tuple(config.blockwise.block_shape_zyx),
        channels=CHANNELS,
        attrs={
            "from": "raw",
            "scale": "0..255 = probability 0..1",
            "model": m.path,
            "model_sha256": m.sha256,
            "channel_axis": 0,
            "meaning": {
                "boundary": "cell boundary (membrane, extracellular space, vessel)",
                "aff_z": "same neuron as the voxel at z - 1",
                "aff_y": "same neuron as the voxel at y - 1",
                "aff_x": "same neuron as the voxel at x - 1",
            },
        },
    )
    proc = PredictBlock(
        str(ws.path), m, (stats.p5, stats.p50, stats.p95), config.batch_size, config.threads, config.no_data_value
    )
    fingerprint = {
        "model_sha256": m.sha256,
        "factor": m.factor,
        "tile_zyx": list(m.tile),
        "margin_zyx": list(m.margin),
        "intensity": stats.to_json(),
        "no_data_value": config.no_data_value,
    }
    return Task(
        STAGE,
        ws.path,
        grid,
        proc,
        fingerprint,
        (out,),
        max_retries=config.blockwise.max_retries,
        bytes_per_voxel=32.0,
        worker_memory_bytes=MODEL_WORKER_BYTES,
    )


def predict_arrays(
    raw: np.ndarray, voxel_size_nm, model_dir=None, config: BoundaryConfig = BoundaryConfig()
) -> np.ndarray:
    """(4, z, y, x) uint8 boundary + affinities of a whole in-memory volume: the stage's computation."""
    from unet.data import intensity_stats
    from unet.infer3d import Predictor3D, TileGeometry3D, predict_box3d
    from unet.modeldir import build_model

    m = resolve_model(raw.shape, voxel_size_nm, config, model_dir)
    predictor = Predictor3D(build_model(read_spec(Path(m.path))), config.batch_size, 1)
    return predict_box3d(
        raw,
        predictor,
        TileGeometry3D(m.factor, m.tile, m.margin),
        intensity_stats(raw, m.factor),
        (0, 0, 0),
        raw.shape,
        len(CHANNELS),
        config.no_data_value,
    )


def stage_progress(workspace) -> tuple[int, Optional[int]]:
    """(blocks done, blocks in the layout) of the predict-boundaries stage in ``workspace``;
    (0, None) when it has no layout (the array was made some other way)."""
    import json

    from connectome.blockwise.markers import MarkerStore

    markers = MarkerStore(Path(workspace) / "blockwise" / STAGE)
    try:
        grid = json.loads(markers.layout_path.read_text())["grid"]
        total = int(np.prod([-(-int(s) // int(b)) for s, b in zip(grid["shape_zyx"], grid["block_shape_zyx"])]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0, None
    return len(markers.done_ids()), total


def require_boundary(ws: Workspace, what: str = "segment") -> object:
    """The workspace's finished ``boundary`` array, or exit 2 naming the command that makes it."""
    if not ws.has(OUT):
        raise UserInputError(
            f"workspace {ws.path}: has no array '{OUT}' ({what} needs it); run "
            f"`connectome predict-boundaries --workspace {ws.path}` first"
        )
    arr = ws.require_complete(OUT, what)
    done, total = stage_progress(ws.path)
    if total is not None and done < total:
        raise UserInputError(
            f"workspace {ws.path}: array '{OUT}' is unfinished ({done} of {total} blocks of "
            f"predict-boundaries done); rerun `connectome predict-boundaries --workspace {ws.path}` "
            "to finish it"
        )
    if list(arr.attrs.get("channels") or []) != list(CHANNELS):
        raise UserInputError(
            f"workspace {ws.path}: array '{OUT}' has channels {arr.attrs.get('channels')}, "
            f"expected {list(CHANNELS)}; rerun `connectome predict-boundaries --restart`"
        )
    return arr
