"""The synapse table ``WS/synapses.csv``: its columns, a fast checked reader, and the writer.

Columns (``shared/CONTRACT.md``), one row per synapse::

    synapse_id,z,y,x,pre_segment_id,post_segment_id,score[,extra columns...]

* ``synapse_id``, ``pre_segment_id``, ``post_segment_id``: integers in ``0 .. 2**64-1``
  (0 = no segment); ``12.0`` is accepted where it is an exact integer. ``synapse_id`` is unique.
* ``z``, ``y``, ``x``: the synapse location in voxels of ``raw`` (finite; may be fractional).
* ``score``: confidence in ``[0, 1]``.
* Extra columns are allowed and ignored by the reader. The detector
  (:mod:`connectome.synapses.detect`) adds ``size_voxels`` and the partner points
  ``pre_z,pre_y,pre_x,post_z,post_y,post_x`` (voxels; empty where that partner is 0).

Reading: numpy's C parser (``np.loadtxt``) reads a million rows in about half a second. If it
rejects anything, or a value breaks a rule above, the file is read again line by line with the
csv module, which names the first offending line and column (the header is line 1). A bad file
is a :class:`~connectome.errors.UserInputError`; nothing else is raised for bad content.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from connectome.atomic import atomic_open
from connectome.errors import UserInputError

#: the contract's columns, in the order the writer puts them
COLUMNS = ("synapse_id", "z", "y", "x", "pre_segment_id", "post_segment_id", "score")
ID_COLUMNS = ("synapse_id", "pre_segment_id", "post_segment_id")
FLOAT_COLUMNS = ("z", "y", "x", "score")
#: extra columns written by the detector
DETECTOR_COLUMNS = ("size_voxels", "pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x")


@dataclass(frozen=True)
class SynapseTable:
    """The contract columns of a synapse table as numpy arrays (ids uint64, the rest float64)."""

    synapse_id: np.ndarray
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    pre_segment_id: np.ndarray
    post_segment_id: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(self.synapse_id.size)


# ------------------------------------------------------------------------------------ reading
def read_synapse_table(path: str | Path) -> SynapseTable:
    """Read and check ``synapses.csv`` (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: not found (the synapse table is written by `connectome synapses`)")
    header = _read_header(path)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise UserInputError(
            f"{path}: missing column(s) {', '.join(missing)} (expected a header with "
            f"{','.join(COLUMNS)}; found {','.join(header) or 'nothing'})"
        )
    table = _read_fast(path, header)
    if table is None or not _passes_checks(table):
        table = _read_checked(path, header)  # names the first bad line, or accepts what numpy would not
    return table


def _read_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            row = next(csv.reader(fh), [])
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error):
        raise UserInputError(f"{path}: not a text CSV file") from None
    return [h.strip() for h in row]


def _read_fast(path: Path, header: list[str]) -> SynapseTable | None:
    """numpy's C parser; None if it rejects the file (the checked reader then says why)."""
    index = {name: header.index(name) for name in COLUMNS}
    order = sorted(COLUMNS, key=index.__getitem__)
    dtype = np.dtype([(n, np.uint64 if n in ID_COLUMNS else np.float64) for n in order])
    try:
        with warnings.catch_warnings():
            # strict: numpy otherwise parses "-1" or "12.5" as a float and wraps/truncates it (a warning)
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", message=".*input contained no data")  # header-only file
            data = np.loadtxt(
                path,
                delimiter=",",
                skiprows=1,
                usecols=[index[n] for n in order],
                dtype=dtype,
                comments=None,
                quotechar='"',
                encoding="utf-8",
                ndmin=1,
            )
    except (ValueError, UnicodeDecodeError, OSError, Warning):
        return None
    return SynapseTable(**{n: np.ascontiguousarray(data[n]) for n in COLUMNS})


def _passes_checks(t: SynapseTable) -> bool:
    floats = np.stack([t.z, t.y, t.x, t.score]) if len(t) else np.zeros((4, 0))
    return bool(
        np.isfinite(floats).all() and ((t.score >= 0) & (t.score <= 1)).all() and np.unique(t.synapse_id).size == len(t)
    )


def _read_checked(path: Path, header: list[str]) -> SynapseTable:
    """The csv module, line by line, with exact error messages."""
    index = {name: header.index(name) for name in COLUMNS}
    need = max(index.values()) + 1
    cols: dict[str, list] = {n: [] for n in COLUMNS}
    first_line: dict[int, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line (numpy skips them too)
                if len(row) < need:
                    raise UserInputError(f"{path}: line {line}: expected at least {need} fields, got {len(row)}")
                for name in COLUMNS:
                    cols[name].append(_parse(row[index[name]], name, path, line))
                sid = cols["synapse_id"][-1]
                if sid in first_line:
                    raise UserInputError(
                        f"{path}: line {line}, column 'synapse_id': duplicate id {sid} "
                        f"(first on line {first_line[sid]})"
                    )
                first_line[sid] = line
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserInputError(f"{path}: not a readable text CSV file ({exc})") from None
    return SynapseTable(
        **{n: np.asarray(v, dtype=np.uint64 if n in ID_COLUMNS else np.float64).reshape(-1) for n, v in cols.items()}
    )


def _parse(text: str, column: str, path: Path, line: int):
    text = text.strip()
    try:
        if column in ID_COLUMNS:
            try:
                value = int(text)
            except ValueError:
                number = float(text)  # "12.0" from a float-typed writer
                if not (number.is_integer() and abs(number) < 2**53):
                    raise
                value = int(number)
            if not 0 <= value < 2**64:
                raise ValueError
            return value
        real = float(text)
        if not math.isfinite(real) or (column == "score" and not 0.0 <= real <= 1.0):
            raise ValueError
        return real
    except ValueError:
        expected = (
            "an integer id in 0..2**64-1"
            if column in ID_COLUMNS
            else "a number in [0, 1]"
            if column == "score"
            else "a finite number"
        )
        raise UserInputError(f"{path}: line {line}, column '{column}': expected {expected}, got {text!r}") from None


# ------------------------------------------------------------------------------------ writing
def write_synapses_csv(
    path: str | Path,
    synapse_id: Sequence[int],
    zyx: np.ndarray,
    pre: Sequence[int],
    post: Sequence[int],
    score: Sequence[float],
    size_voxels: Sequence[int] | None = None,
    pre_zyx: np.ndarray | None = None,
    post_zyx: np.ndarray | None = None,
) -> Path:
    """Write a synapse table atomically (temporary file + rename), rows in the order given.

    ``zyx``, ``pre_zyx``, ``post_zyx``: (n, 3) voxel coordinates; coordinates are written with
    2 decimals, scores with 4; a partner point that is NaN (no partner) is written empty. With
    ``size_voxels`` / partner points given, the detector's extra columns are added.
    """
    path = Path(path)
    n = len(synapse_id)
    zyx = np.asarray(zyx, np.float64).reshape(n, 3)
    header = list(COLUMNS)
    extra = size_voxels is not None or pre_zyx is not None or post_zyx is not None
    if extra:
        header += list(DETECTOR_COLUMNS)
        size = np.zeros(n, np.int64) if size_voxels is None else np.asarray(size_voxels, np.int64)
        pz = np.full((n, 3), np.nan) if pre_zyx is None else np.asarray(pre_zyx, np.float64).reshape(n, 3)
        qz = np.full((n, 3), np.nan) if post_zyx is None else np.asarray(post_zyx, np.float64).reshape(n, 3)

    def coord(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.2f}"

    with atomic_open(path) as fh:
        fh.write(",".join(header) + "\n")
        ids, pres, posts = (np.asarray(a, np.uint64).tolist() for a in (synapse_id, pre, post))
        scores = np.asarray(score, np.float64).tolist()
        for i in range(n):
            z, y, x = zyx[i].tolist()
            row = f"{ids[i]},{z:.2f},{y:.2f},{x:.2f},{pres[i]},{posts[i]},{scores[i]:.4f}"
            if extra:
                row += f",{int(size[i])}," + ",".join(coord(v) for v in (*pz[i].tolist(), *qz[i].tolist()))
            fh.write(row + "\n")
    return path
