"""``connectome synapses``: the synapse 3D U-Net blockwise, then detection and partners.

1. ``synapses-predict`` (blockwise, resumable): ``raw`` -> ``synapse_prob`` (cleft probability),
   ``synapse_post`` (postsynaptic-side probability) and, for a model with a third output channel,
   ``synapse_pre`` (presynaptic side), uint8 0..255 = 0..1, on the global 3D tile grid of
   :mod:`unet.infer3d` (any block layout gives the same bits).
2. :func:`connectome.synapses.detect.detect_synapses`: threshold + 26-connected components +
   minimum size across block borders, partners from ``segmentation`` voted by ``synapse_post``
   (and ``synapse_pre`` with ``use_pre_channel``), ``WS/synapses.csv``. Threshold and minimum size default to the model's calibrated values
   (``model.json`` ``output``); the stage config or ``--threshold``/``--min-size`` override them.

:func:`predict_arrays` and :func:`detect_arrays` are the same computations on in-memory arrays
(for training-time calibration and benchmarks); the tests check they equal the blockwise stage.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from connectome.blockwise import Block, BlockGrid, OutputSpec, Task
from connectome.config import BlockwiseConfig
from connectome.errors import UserInputError
from connectome.resources import MODEL_WORKER_BYTES
from connectome.synapses.partners import DEFAULT_SHELL_RADIUS_NM
from connectome.workspace import Workspace, open_array

log = logging.getLogger(__name__)

STAGE = "synapses-predict"
PROB = "synapse_prob"
POST = "synapse_post"
PRE = "synapse_pre"
#: the shipped model (package data)
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "unet" / "models" / "synapse"


def default_model() -> Path:
    import os

    return Path(os.environ.get("CONNECTOME_SYNAPSE_MODEL") or DEFAULT_MODEL)


def _default_blockwise() -> BlockwiseConfig:
    return BlockwiseConfig(block_shape_zyx=(32, 512, 512))


@dataclass(frozen=True)
class SynapsesConfig:
    #: block (and chunk) shape of synapse_prob / synapse_post and of the detection passes
    blockwise: BlockwiseConfig = field(default_factory=_default_blockwise)
    #: model directory (None: the shipped one, or $CONNECTOME_SYNAPSE_MODEL); --model overrides
    model: Optional[str] = None
    #: cleft threshold and minimum synapse size (voxels); None: the model's calibrated values
    threshold: Optional[float] = None
    min_size_voxels: Optional[int] = None
    #: synapses.csv lists only synapses with a pre- and a post-synaptic segment (see
    #: connectome.synapses.detect); False keeps every cleft, with 0 for a missing partner
    require_partners: bool = True
    #: partner votes for "pre" from the model's pre-side channel (synapse_pre) instead of 1 - post.
    #: Off: on the validation volumes (seeds 631-633, 641; 214 matched synapses) the shipped model's
    #: pre channel gave partner accuracy 0.930 against 0.939 for 1 - post (see the model card)
    use_pre_channel: bool = False
    #: raw value of missing data (the fill of an aligned volume where a drifted section has no
    #: tissue): such pixels are filled from the nearest tissue before prediction, so the border of
    #: the fill is not taken for a cleft (unet.infer3d); null: off
    no_data_value: Optional[int] = 0
    #: tiles (model voxels, z y x) and margins; empty: the model's recommendation
    tile_zyx: tuple[int, ...] = ()
    margin_zyx: tuple[int, ...] = ()
    #: tiles per model call; test-time augmentation (1, 2 or 4 flips)
    batch_size: int = 1
    tta: int = 1
    #: TensorFlow intra-op threads per worker (0 = TensorFlow's default)
    threads: int = 0

    def __post_init__(self):
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_size_voxels is not None and self.min_size_voxels < 1:
            raise ValueError(f"min_size_voxels must be >= 1, got {self.min_size_voxels}")
        for name in ("tile_zyx", "margin_zyx"):
            v = getattr(self, name)
            if v and (len(v) != 3 or min(v) < 0):
                raise ValueError(f"{name} must be empty or three non-negative integers, got {list(v)}")
        if self.no_data_value is not None and not 0 <= self.no_data_value <= 255:
            raise ValueError(f"no_data_value must be null or in 0..255, got {self.no_data_value}")
        if self.batch_size < 1 or self.tta not in (1, 2, 4) or self.threads < 0:
            raise ValueError("batch_size must be >= 1, tta 1, 2 or 4, threads >= 0")


Config = SynapsesConfig


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    sha256: str
    factor: int
    tile: tuple[int, int, int]
    margin: tuple[int, int, int]
    threshold: float
    min_size_voxels: int
    #: 2 (cleft, post) or 3 (cleft, post, pre)
    channels: int = 2


def _read_spec(path: Path):
    from unet.modeldir import read_model_dir

    return read_model_dir(path, task="synapse", ndim=3, out_channels=(2, 3))


def resolve_model(
    shape_zyx, voxel_size_nm, config: SynapsesConfig, model_dir=None, where: str = "volume"
) -> ResolvedModel:
    """Read and check the model (driver side): weights build, pixel size fits, tiling valid."""
    from unet.infer3d import resolve_tiling
    from unet.modeldir import build_model

    path = Path(model_dir or config.model or default_model()).resolve()
    if not path.exists():
        raise UserInputError(f"--model {path}: not found (train one with `connectome train synapse`)")
    spec = _read_spec(path)
    build_model(spec)
    factor, tile, margin = resolve_tiling(
        spec, path, shape_zyx, voxel_size_nm, config.tile_zyx, config.margin_zyx, where, "synapses"
    )
    out = spec.doc.get("output", {})
    threshold = config.threshold if config.threshold is not None else float(out.get("threshold", 0.5))
    min_size = config.min_size_voxels if config.min_size_voxels is not None else int(out.get("min_size_voxels", 50))
    return ResolvedModel(
        str(path), spec.weights_sha256, factor, tile, margin, threshold, min_size, int(spec.unet.out_channels)
    )


def get_predictor(model_dir: str, sha256: str, batch_size: int, tta: int, threads: int):
    from unet.infer3d import cached_predictor

    return cached_predictor(_read_spec, model_dir, sha256, batch_size, tta, threads)


# ---------------------------------------------------------------------------------------------
# blockwise prediction


@dataclass(frozen=True)
class PredictBlock:
    workspace: str
    model: ResolvedModel
    stats: tuple[float, float, float]
    batch_size: int
    tta: int
    threads: int
    no_data: Optional[int] = None

    def __call__(self, block: Block) -> None:
        from unet.data import IntensityStats
        from unet.infer3d import TileGeometry3D, predict_box3d

        m = self.model
        predictor = get_predictor(m.path, m.sha256, self.batch_size, self.tta, self.threads)
        geom = TileGeometry3D(m.factor, m.tile, m.margin)
        out = predict_box3d(
            open_array(self.workspace, "raw"),
            predictor,
            geom,
            IntensityStats(*self.stats),
            block.write_box.begin_zyx,
            block.write_box.end_zyx,
            m.channels,
            self.no_data,
        )
        for name, channel in zip((PROB, POST, PRE), out):
            open_array(self.workspace, name, mode="r+")[block.write_box.slices] = channel


def plan_predict(workspace: str | Path, config: SynapsesConfig = SynapsesConfig(), model_dir=None) -> Task:
    from unet.data import intensity_stats

    ws = Workspace.open(workspace)
    raw = ws.require_complete("raw", "synapses")
    if not ws.has("segmentation"):
        raise UserInputError(
            f"workspace {ws.path}: has no array 'segmentation' (partners come from it); run `connectome segment` first"
        )
    ws.require_complete("segmentation", "synapses")
    m = resolve_model(ws.shape_zyx, ws.voxel_size_nm, config, model_dir, f"workspace {ws.path}")
    stats = intensity_stats(raw, m.factor)
    halo = (m.margin[0], m.margin[1] * m.factor, m.margin[2] * m.factor)
    grid = BlockGrid(ws.shape_zyx, config.blockwise.block_shape_zyx, halo)
    common = {"from": "raw", "scale": "0..255 = probability 0..1", "model": m.path, "model_sha256": m.sha256}
    outs: tuple[OutputSpec, ...]
    outs = (
        OutputSpec(
            PROB,
            "uint8",
            config.blockwise.block_shape_zyx,
            attrs={
                **common,
                "meaning": "synaptic cleft",
                "model_threshold": m.threshold,
                "model_min_size_voxels": m.min_size_voxels,
                "model_channels": m.channels,
            },
        ),
        OutputSpec(
            POST, "uint8", config.blockwise.block_shape_zyx, attrs={**common, "meaning": "postsynaptic side of a cleft"}
        ),
    )
    if m.channels == 3:
        outs += (
            OutputSpec(
                PRE,
                "uint8",
                config.blockwise.block_shape_zyx,
                attrs={**common, "meaning": "presynaptic side of a cleft"},
            ),
        )
    proc = PredictBlock(
        str(ws.path),
        m,
        (stats.p5, stats.p50, stats.p95),
        config.batch_size,
        config.tta,
        config.threads,
        config.no_data_value,
    )
    fingerprint = {
        "model_sha256": m.sha256,
        "factor": m.factor,
        "tile_zyx": list(m.tile),
        "margin_zyx": list(m.margin),
        "tta": config.tta,
        "intensity": stats.to_json(),
        "no_data_value": config.no_data_value,
    }
    return Task(
        STAGE,
        ws.path,
        grid,
        proc,
        fingerprint,
        outs,
        max_retries=config.blockwise.max_retries,
        bytes_per_voxel=32.0,
        worker_memory_bytes=MODEL_WORKER_BYTES,
    )


def detect_config(workspace: str | Path, config: SynapsesConfig):
    """The detection config: threshold / minimum size from the config, else from synapse_prob's
    attributes (the model's calibrated values); the pre-side signal ``synapse_pre`` when
    ``use_pre_channel`` is on and the model that wrote ``synapse_prob`` has that channel."""
    from connectome.synapses.detect import DetectConfig

    prob = Workspace.open(workspace).array(PROB)
    t = config.threshold if config.threshold is not None else float(prob.attrs.get("model_threshold", 0.5))
    m = (
        config.min_size_voxels
        if config.min_size_voxels is not None
        else int(prob.attrs.get("model_min_size_voxels", 50))
    )
    pre = PRE if config.use_pre_channel and int(prob.attrs.get("model_channels", 2)) == 3 else ""
    return DetectConfig(
        blockwise=config.blockwise,
        threshold=t,
        min_size_voxels=m,
        prob_array=PROB,
        post_array=POST,
        pre_array=pre,
        require_partners=config.require_partners,
    )


# ---------------------------------------------------------------------------------------------
# in-memory versions (calibration, benchmarks, tests)


def predict_arrays(
    raw: np.ndarray, voxel_size_nm, model_dir, config: SynapsesConfig = SynapsesConfig()
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(synapse_prob, synapse_post, synapse_pre) uint8 of a whole in-memory volume: the stage's
    computation; synapse_pre is None for a model without the pre channel."""
    from unet.data import intensity_stats
    from unet.infer3d import Predictor3D, TileGeometry3D, predict_box3d
    from unet.modeldir import build_model

    m = resolve_model(raw.shape, voxel_size_nm, config, model_dir)
    predictor = Predictor3D(build_model(_read_spec(Path(m.path))), config.batch_size, config.tta)
    out = predict_box3d(
        raw,
        predictor,
        TileGeometry3D(m.factor, m.tile, m.margin),
        intensity_stats(raw, m.factor),
        (0, 0, 0),
        raw.shape,
        m.channels,
        config.no_data_value,
    )
    return out[0], out[1], (out[2] if m.channels == 3 else None)


def detect_arrays(
    prob: np.ndarray,
    post: np.ndarray,
    segmentation: np.ndarray,
    threshold: float,
    min_size_voxels: int,
    voxel_size_nm=(40.0, 8.0, 8.0),
    shell_radius_nm: float = DEFAULT_SHELL_RADIUS_NM,
    pre: Optional[np.ndarray] = None,
    require_partners: bool = True,
) -> dict[str, np.ndarray]:
    """The detection + partner rule of :mod:`connectome.synapses.detect` on whole arrays:
    columns synapse_id, z, y, x, pre_segment_id, post_segment_id, score, size_voxels."""
    from scipy import ndimage as ndi

    from connectome.synapses.detect import STRUCTURE
    from connectome.synapses.partners import assign_partners, shell_radius_voxels

    t8 = max(1, int(round(255 * threshold)))
    lab, n = ndi.label(prob >= t8, structure=STRUCTURE)
    size = np.bincount(lab.ravel(), minlength=n + 1)
    keep = np.flatnonzero(size >= min_size_voxels)
    keep = keep[keep != 0]
    remap = np.zeros(n + 1, np.int64)
    remap[keep] = np.arange(1, keep.size + 1)
    clefts = remap[lab]
    k = keep.size
    idx = np.flatnonzero(clefts)
    cl = clefts.ravel()[idx]
    zyx = np.unravel_index(idx, clefts.shape)
    cnt = np.bincount(cl, minlength=k + 1)[1:].astype(np.float64)
    cen = [np.bincount(cl, weights=c, minlength=k + 1)[1:] / np.maximum(cnt, 1) for c in zyx]
    score = np.bincount(cl, weights=prob.ravel()[idx], minlength=k + 1)[1:] / np.maximum(cnt, 1) / 255.0
    partners = assign_partners(clefts, segmentation, post, shell_radius_voxels(shell_radius_nm, voxel_size_nm), pre=pre)
    out = {
        "synapse_id": np.arange(1, k + 1, dtype=np.uint64),
        "z": cen[0],
        "y": cen[1],
        "x": cen[2],
        "pre_segment_id": np.asarray(partners.pre, np.uint64),
        "post_segment_id": np.asarray(partners.post, np.uint64),
        "score": score,
        "size_voxels": cnt.astype(np.int64),
    }
    if require_partners:
        out = {c: v[partners.paired] for c, v in out.items()}
    return out


def read_truth(path: str | Path):
    """(raw, neurons, voxel_size_nm, truth synapse columns) of a ``connectome synth`` folder."""
    from connectome.evaluate import tables
    from connectome.evaluate.inputs import TruthSet

    t = TruthSet.open(path)
    vs = t.voxel_size_nm()
    table = t.table("synapses.csv")
    if table is None:
        raise UserInputError(f"truth {path}: truth/synapses.csv missing")
    return (
        np.asarray(t.array("raw")[:]),
        np.asarray(t.array("neurons")[:]),
        vs,
        tables.read_table(table, tables.SYNAPSES),
    )


def score_detection(
    pred: dict, truth: dict, voxel_size_nm, max_distance_nm: float, seg_to_truth: Optional[dict] = None
) -> dict:
    """Detection F1 and partner accuracy; ``seg_to_truth`` None means the segmentation is the
    truth's own neuron ids (identity map)."""
    from connectome.evaluate.synapses import synapse_metrics

    if seg_to_truth is None:
        ids = np.unique(np.concatenate([pred["pre_segment_id"], pred["post_segment_id"], np.zeros(1, np.uint64)]))
        seg_to_truth = {int(i): int(i) for i in ids}
    return synapse_metrics(pred, truth, voxel_size_nm, max_distance_nm, seg_to_truth)


def write_table_csv(path: str | Path, det: dict) -> None:
    cols = ("synapse_id", "z", "y", "x", "pre_segment_id", "post_segment_id", "score", "size_voxels")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for i in range(len(det["synapse_id"])):
            w.writerow([det[c][i] for c in cols])
