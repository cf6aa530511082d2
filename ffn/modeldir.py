"""The FFN model directory: ``model.json`` + ``weights.npz`` (+ ``MODEL_CARD.md``, ``train/``).

``model.json``::

    format: "connectome-ffn-model", format_version: 1, task: "ffn"
    architecture:  FFNModelConfig fields (depth, features, fov_zyx, deltas_zyx, channels: the image
                   input channels in order, e.g. ["raw", "boundary"] (absent: ["raw"]), anisotropic)
    input:         voxel_size_nm (z, y, x) it was trained at; normalization (volume percentiles,
                   as the U-Nets: x = (v/255 - p50) / ((p95 - p5) / 3.29))
    inference:     recommended InferenceConfig values (thresholds, minimum segment size)
    weights:       file, sha256, dtype, parameters
    training / validation: provenance and metrics

:func:`read_model_dir` checks everything that can be checked without TensorFlow and raises
:class:`UserInputError` with one line naming the file; :func:`build_model` also checks the
weights against their sha256 and the architecture.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from connectome.errors import UserInputError
from connectome.training.weights import read_model_json, sha256_file
from ffn.model import FFNModelConfig

FORMAT = "connectome-ffn-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.npz"


@dataclass(frozen=True)
class FFNModelSpec:
    path: Path
    model: FFNModelConfig
    voxel_size_nm: tuple[float, float, float]
    inference: dict
    weights_file: Path
    weights_sha256: str
    doc: dict


def read_model_dir(path: str | Path, what: str = "--model") -> FFNModelSpec:
    p = Path(path)
    mj, doc = read_model_json(p, FORMAT, FORMAT_VERSION, "FFN", what)
    try:
        a = doc["architecture"]
        model = FFNModelConfig(
            int(a["depth"]),
            int(a["features"]),
            tuple(int(v) for v in a["fov_zyx"]),
            tuple(int(v) for v in a["deltas_zyx"]),
            tuple(str(c) for c in a.get("channels", ["raw"])),
            bool(a.get("anisotropic", False)),
        )
        vs = tuple(float(v) for v in doc["input"]["voxel_size_nm"])
        wfile, wsha = str(doc["weights"]["file"]), str(doc["weights"]["sha256"])
        inference = dict(doc.get("inference", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"{mj}: incomplete or invalid model description ({type(exc).__name__}: {exc})") from None
    if len(vs) != 3 or not all(v > 0 for v in vs):
        raise UserInputError(f"{mj}: input.voxel_size_nm must be three positive numbers (z, y, x), got {list(vs)}")
    if "/" in wfile or wfile.startswith("."):
        raise UserInputError(f"{mj}: weights.file must be a file name inside the directory, got {wfile!r}")
    if not (p / wfile).is_file():
        raise UserInputError(f"{p / wfile}: weights file missing")
    return FFNModelSpec(p, model, vs, inference, p / wfile, wsha, doc)


def build_model(spec: FFNModelSpec, precision: str = "float32"):
    """The Keras model with the directory's weights; UserInputError if they do not fit."""
    from connectome.training import weights as wio
    from ffn.model import build_model as build

    if sha256_file(spec.weights_file) != spec.weights_sha256:
        raise UserInputError(f"{spec.weights_file}: corrupt or replaced (sha256 differs from {MODEL_JSON})")
    try:
        arrays = wio.load_npz(spec.weights_file)
    except ValueError as exc:
        raise UserInputError(f"{spec.weights_file}: corrupt ({exc})") from None
    model = build(spec.model, precision=precision)
    try:
        wio.assign(model.weights, arrays)
    except ValueError as exc:
        raise UserInputError(f"{spec.weights_file}: does not fit the architecture in {MODEL_JSON} ({exc})") from None
    return model


def write_model_dir(
    path: str | Path,
    arrays: dict[str, np.ndarray],
    model: FFNModelConfig,
    voxel_size_nm,
    doc: dict[str, Any],
    float_dtype: str = "float32",
) -> Path:
    """Write weights then model.json (each atomically); returns the model.json path."""
    from connectome.training import weights as wio

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    wpath = p / WEIGHTS
    wio.save_npz(arrays, wpath, float_dtype=float_dtype)
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": "ffn",
        "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model).items()},
        "input": {
            "voxel_size_nm": [float(v) for v in voxel_size_nm],
            "normalization": {"method": "volume_percentiles", "formula": "x = (v/255 - p50) / ((p95 - p5) / 3.29)"},
        },
    }
    out.update({k: v for k, v in doc.items() if k not in out})
    out["weights"] = {
        "file": WEIGHTS,
        "sha256": sha256_file(wpath),
        "dtype": float_dtype,
        "size_bytes": wpath.stat().st_size,
        "parameters": model.n_parameters(),
    }
    tmp = p / f".{MODEL_JSON}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(out, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    os.replace(tmp, p / MODEL_JSON)
    return p / MODEL_JSON
