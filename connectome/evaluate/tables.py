"""Reading the CSV tables an evaluation compares, and writing its JSON report atomically.

Tables are read with the csv module into numpy columns. Segment ids are parsed as Python
ints and stored as uint64 (ids up to 2**64-1 survive); coordinates and scores as float64.
A malformed file is a :class:`UserInputError` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from connectome.errors import UserInputError

#: Columns of the tables (extra columns are allowed and ignored). ``id`` = uint64, ``f`` = float.
TILES = {"section": "i", "row": "i", "col": "i", "x": "f", "y": "f"}
SYNAPSES = {"z": "f", "y": "f", "x": "f", "pre_segment_id": "id", "post_segment_id": "id"}
CONNECTIVITY = {"pre_segment_id": "id", "post_segment_id": "id", "synapse_count": "i"}

_DTYPES = {"i": np.int64, "f": np.float64, "id": np.uint64}


def read_table(path: str | Path, columns: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Read the named columns of a CSV file with a header line into numpy arrays."""
    path = Path(path)
    values: dict[str, list] = {name: [] for name in columns}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise UserInputError(
                    f"{path}: missing column(s) {', '.join(missing)} "
                    f"(expected a header with {','.join(columns)}; found {','.join(header) or 'none'})"
                )
            reader.fieldnames = header
            for line, row in enumerate(reader, start=2):
                for name, kind in columns.items():
                    values[name].append(_parse(row.get(name), kind, path, line, name))
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserInputError(f"{path}: not a text CSV file") from None
    return {
        name: np.asarray(vals, dtype=_DTYPES[kind]).reshape(-1)
        for (name, kind), vals in zip(columns.items(), values.values())
    }


def _parse(text, kind: str, path: Path, line: int, column: str):
    text = (text or "").strip()
    try:
        if kind == "f":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        try:
            value = int(text)
        except ValueError:  # "12.0" (a float-typed writer) is accepted where it is exact
            number = float(text)
            if not (number.is_integer() and abs(number) < 2**53):
                raise
            value = int(number)
        if kind == "id" and not 0 <= value < 2**64:
            raise ValueError
        return value
    except ValueError:
        what = "a number" if kind == "f" else "a non-negative integer id" if kind == "id" else "an integer"
        raise UserInputError(f"{path}: line {line}, column '{column}': expected {what}, got {text!r}") from None


def jsonable(value: Any) -> Any:
    """Numpy scalars/arrays to Python; NaN and infinities to None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(jsonable(data), fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
