"""The self-describing model directory, and its validation.

::

    MODEL_DIR/
      model.json     what the weights are and how to feed them (below)
      weights.npz    variable name -> array (float16 or float32), no pickle
      MODEL_CARD.md  (shipped models) how it was trained and how well it does
      train/         (after `connectome train`) checkpoints, TensorBoard logs, log.jsonl

``model.json``::

    format: "connectome-unet-model", format_version: 1, task: "vessel"
    architecture:  UNetConfig fields (ndim, depth, filters, channels, padding, ...)
    input:         voxel_size_nm_yx (the model's pixel), z_context (sections as channels),
                   downsampling ("area_mean"), normalization (volume percentiles, see unet.data)
    output:        activation "sigmoid", threshold, meaning
    inference:     recommended tile_px / margin_px
    weights:       file, sha256, dtype, parameters
    training:      provenance (command, data folders and seeds, steps, ranks, time, versions)
    validation:    metrics on held-out volumes

:func:`read_model_dir` checks everything that can be checked without TensorFlow and raises
:class:`UserInputError` with one line naming the file; :func:`load_weights` checks the weights
file against its recorded sha256 and the architecture.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from connectome.errors import UserInputError
from connectome.training.weights import read_model_json, sha256_file
from unet.model import UNetConfig

FORMAT = "connectome-unet-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.npz"


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    task: str
    unet: UNetConfig
    voxel_size_nm_yx: float
    z_context: int
    threshold: float
    tile_px: int
    margin_px: int
    weights_file: Path
    weights_sha256: str
    doc: dict

    @property
    def size_multiple(self) -> int:
        return int(self.unet.size_multiple()[-1])


def read_model_dir(
    path: str | Path,
    task: str = "vessel",
    ndim: int = 2,
    what: str = "--model",
    out_channels: int | tuple[int, ...] = 1,
) -> ModelSpec:
    p = Path(path)
    where = f"{what} {p}"
    mj, doc = read_model_json(p, FORMAT, FORMAT_VERSION, "U-Net", what)
    if doc.get("task") != task:
        raise UserInputError(f"{where}: is a {doc.get('task')!r} model; this command needs a {task!r} model")
    try:
        unet = UNetConfig.from_json(doc["architecture"])
        inp, out = doc["input"], doc["output"]
        vs = [float(v) for v in inp["voxel_size_nm_yx"]]
        z_context = int(inp["z_context"])
        threshold = float(out.get("threshold", 0.5))
        inference = doc.get("inference", {})
        tile_px, margin_px = int(inference.get("tile_px", 256)), int(inference.get("margin_px", 32))
        wdoc = doc["weights"]
        wfile, wsha = str(wdoc["file"]), str(wdoc["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"{mj}: incomplete or invalid model description ({type(exc).__name__}: {exc})") from None
    if unet.ndim != ndim:
        raise UserInputError(f"{where}: is a {unet.ndim}D model; this command needs a {ndim}D model")
    if len(vs) != 2 or vs[0] != vs[1] or not vs[0] > 0:
        raise UserInputError(f"{mj}: input.voxel_size_nm_yx must be two equal positive numbers, got {vs}")
    if z_context < 1 or z_context % 2 == 0:
        raise UserInputError(f"{mj}: input.z_context must be a positive odd number, got {z_context}")
    if unet.in_channels != z_context:
        raise UserInputError(
            f"{mj}: the architecture takes {unet.in_channels} input channels but the input stacks {z_context} sections"
        )
    allowed = (out_channels,) if isinstance(out_channels, int) else tuple(out_channels)
    if unet.out_channels not in allowed:
        raise UserInputError(
            f"{mj}: expected {' or '.join(map(str, allowed))} output channel(s), the architecture "
            f"has {unet.out_channels}"
        )
    if not 0 < threshold < 1:
        raise UserInputError(f"{mj}: output.threshold must be in (0, 1), got {threshold}")
    if "/" in wfile or wfile.startswith("."):
        raise UserInputError(f"{mj}: weights.file must be a file name inside the directory, got {wfile!r}")
    wpath = p / wfile
    if not wpath.is_file():
        raise UserInputError(f"{wpath}: weights file missing")
    return ModelSpec(p, task, unet, vs[0], z_context, threshold, tile_px, margin_px, wpath, wsha, doc)


def load_weights(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The weights, checked against the recorded sha256 (no TensorFlow needed)."""
    from connectome.training import weights as wio

    if sha256_file(spec.weights_file) != spec.weights_sha256:
        raise UserInputError(f"{spec.weights_file}: corrupt or replaced (sha256 differs from {MODEL_JSON})")
    try:
        return wio.load_npz(spec.weights_file)
    except ValueError as exc:
        raise UserInputError(f"{spec.weights_file}: corrupt ({exc})") from None


def build_model(spec: ModelSpec):
    """The Keras model with the directory's weights; UserInputError if they do not fit."""
    from connectome.training import weights as wio
    from unet.model import build_unet

    arrays = load_weights(spec)
    model = build_unet(spec.unet)
    try:
        wio.assign(model.weights, arrays)
    except ValueError as exc:
        raise UserInputError(f"{spec.weights_file}: does not fit the architecture in {MODEL_JSON} ({exc})") from None
    return model


def write_model_dir(
    path: str | Path, arrays: dict[str, np.ndarray], doc: dict[str, Any], float_dtype: str = "float16"
) -> Path:
    """Write weights then model.json (each atomically); returns the model.json path."""
    from connectome.training import weights as wio

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    wpath = p / WEIGHTS
    wio.save_npz(arrays, wpath, float_dtype=float_dtype)
    doc = dict(doc)
    doc.update({"format": FORMAT, "format_version": FORMAT_VERSION})
    doc["weights"] = {
        **doc.get("weights", {}),
        "file": WEIGHTS,
        "sha256": sha256_file(wpath),
        "dtype": float_dtype,
        "size_bytes": wpath.stat().st_size,
    }
    ordered = {
        k: doc[k]
        for k in (
            "format",
            "format_version",
            "task",
            "architecture",
            "input",
            "output",
            "inference",
            "weights",
            "training",
            "validation",
        )
        if k in doc
    }
    ordered.update({k: v for k, v in doc.items() if k not in ordered})
    tmp = p / f".{MODEL_JSON}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(ordered, indent=1, default=_json_default) + "\n")
    os.replace(tmp, p / MODEL_JSON)
    return p / MODEL_JSON


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
