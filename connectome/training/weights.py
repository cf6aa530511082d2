"""Model weights as ``.npz`` files (``variable name -> array``): no pickle, readable without
TensorFlow, checked name by name and shape by shape on load; and digests to prove that
data-parallel ranks hold identical weights."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np


def variables_dict(variables) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for v in variables:
        if v.name in out:
            raise ValueError(f"two variables are named {v.name!r}; give the layers unique names")
        out[v.name] = np.asarray(v.numpy())
    return out


def digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, shapes, dtypes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz(arrays: dict[str, np.ndarray], path: str | Path, float_dtype: str = "float32") -> None:
    """Write atomically (temporary file + rename); floats stored as ``float_dtype``."""
    path = Path(path)
    data = {k: (v.astype(float_dtype) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, **data)
    os.replace(tmp, path)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array; ValueError with the reason if the file is not a valid npz."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ValueError(f"not a readable weights file ({type(exc).__name__}: {exc})") from None


def assign(variables, arrays: dict[str, np.ndarray]) -> None:
    """Set variables from ``arrays``; ValueError naming the first mismatch."""
    variables = list(variables)
    names = [v.name for v in variables]
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in set(names)]
    if missing or extra:
        raise ValueError(f"weights do not match the architecture (missing: {missing[:3]}, unexpected: {extra[:3]})")
    for v in variables:
        a = arrays[v.name]
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(
                f"variable {v.name} has shape {list(a.shape)} in the file but {list(v.shape)} in the architecture"
            )
        v.assign(a.astype(v.dtype.as_numpy_dtype))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_model_json(path: str | Path, fmt: str, version: int, kind: str, what: str = "--model") -> tuple[Path, dict]:
    """``(model.json path, its content)`` of a model directory, or UserInputError naming the
    file: missing directory or file, invalid JSON, another format or format version."""
    import json

    from connectome.errors import UserInputError

    p = Path(path)
    where = f"{what} {p}"
    if not p.exists():
        raise UserInputError(f"{where}: model directory not found")
    if not p.is_dir():
        raise UserInputError(f"{where}: not a directory (expected a model directory with model.json)")
    mj = p / "model.json"
    if not mj.is_file():
        raise UserInputError(f"{where}: no model.json inside (not a connectome model directory)")
    try:
        doc = json.loads(mj.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserInputError(f"{mj}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise UserInputError(f"{mj}: not a connectome {kind} model (format must be {fmt!r})")
    if doc.get("format_version") != version:
        raise UserInputError(
            f"{mj}: format_version {doc.get('format_version')!r} is not supported (expected {version})"
        )
    return mj, doc
