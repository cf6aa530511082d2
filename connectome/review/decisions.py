"""Review decisions ``WS/review/<target>/decisions.csv``: ``item_id,decision,author,time``.

``decision`` is ``accept`` (the model is right here), ``reject`` (it is wrong) or ``missed``
(something the model missed is here); ``time`` is UTC ISO 8601. Rows are only ever appended:
each decision reads the file, appends one row, writes a temporary file and renames it into
place (under a lock file, so two reviewers never lose each other's rows); a killed writer leaves
the old file intact. A later row for the same item supersedes the earlier one
(:func:`latest_decisions`).

A ``missed`` decision may carry a point (where the missed object is, voxels of ``raw``, inside
the item's box): it goes to ``WS/review/<target>/points.csv`` (``item_id,z,y,x,author,time``),
point first, then the decision, both the same way. An item may get several points (several
missed synapses in one box). A point is a statement of its own: it stays when the item is then
accepted or rejected (a reviewer accepts a detection *and* marks a synapse the model missed
beside it); :func:`missed_points` returns every point.
"""

from __future__ import annotations

import csv
import fcntl
import getpass
import io
from contextlib import contextmanager
from pathlib import Path

from connectome.atomic import atomic_write_text
from connectome.errors import UserInputError
from connectome.review.queue import DECISIONS, POINTS, QUEUE, read_queue, review_dir

COLUMNS = ("item_id", "decision", "author", "time")
POINT_COLUMNS = ("item_id", "z", "y", "x", "author", "time")
DECISION_KINDS = ("accept", "reject", "missed")


@contextmanager
def _locked(folder: Path):
    with open(folder / ".decisions.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _row(values) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def author_name(author: str | None) -> str:
    """``author``, or the login name when None; exit 2 unless it is one line."""
    if author is None:
        try:
            author = getpass.getuser()
        except Exception:
            author = "unknown"
    if any(c in author for c in "\r\n"):
        raise UserInputError("--author: must be one line")
    return author


def _append(path: Path, columns, values) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else _row(columns)
    if text and not text.endswith("\n"):
        text += "\n"
    atomic_write_text(path, text + _row(values))


def decide(
    workspace: str | Path,
    target: str,
    item_id: str,
    decision: str,
    author: str | None = None,
    when: str | None = None,
    point=None,
) -> dict:
    """Append one decision (and a missed object's ``point`` z, y, x); exit 2 for an unknown
    decision, an item not in the queue, or a point outside the item's box."""
    from connectome.review.plan import utc_now

    if decision not in DECISION_KINDS:
        raise UserInputError(f"--decision: expected one of {', '.join(DECISION_KINDS)}, got {decision!r}")
    folder = review_dir(workspace, target)
    queue = {it.item_id: it for it in read_queue(folder / QUEUE)}
    if item_id not in queue:
        raise UserInputError(f"--item: {item_id!r} is not in {folder / QUEUE} ({len(queue)} items)")
    if point is not None:
        if decision != "missed":
            raise UserInputError(f"--point: only a 'missed' decision has a point (got {decision!r})")
        try:
            pt = [int(round(float(v))) for v in point]
            assert len(pt) == 3
        except Exception:
            raise UserInputError(f"--point: expected Z,Y,X voxel coordinates, got {point!r}") from None
        box = queue[item_id].box
        if not all(box[k] <= pt[k] < box[k + 3] for k in range(3)):
            raise UserInputError(f"--point: {pt} lies outside item {item_id}'s box {list(box)} (z0,y0,x0,z1,y1,x1)")
        point = pt
    author = author_name(author)
    row = {"item_id": item_id, "decision": decision, "author": author, "time": when or utc_now()}
    with _locked(folder):
        if point is not None:
            _append(folder / POINTS, POINT_COLUMNS, [item_id, *point, row["author"], row["time"]])
            row["point"] = point
        _append(folder / DECISIONS, COLUMNS, [row[c] for c in COLUMNS])
    return row


def read_decisions(workspace: str | Path, target: str) -> list[dict]:
    path = review_dir(workspace, target) / DECISIONS
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        if tuple(r.fieldnames or ()) != COLUMNS:
            raise UserInputError(f"{path}: header must be {','.join(COLUMNS)}")
        return list(r)


def latest_decisions(workspace: str | Path, target: str) -> dict[str, dict]:
    """item_id -> its latest decision row."""
    return {row["item_id"]: row for row in read_decisions(workspace, target)}


def read_points(workspace: str | Path, target: str) -> list[dict]:
    """Every row of ``points.csv`` (z, y, x as ints)."""
    path = review_dir(workspace, target) / POINTS
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        if tuple(r.fieldnames or ()) != POINT_COLUMNS:
            raise UserInputError(f"{path}: header must be {','.join(POINT_COLUMNS)}")
        rows = list(r)
    try:
        for row in rows:
            for k in "zyx":
                row[k] = int(row[k])
    except ValueError:
        raise UserInputError(f"{path}: z, y, x must be integers") from None
    return rows


def missed_points(workspace: str | Path, target: str) -> dict[str, list[tuple[int, int, int]]]:
    """item_id -> the missed points marked in its box (each once, in the order marked)."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for row in read_points(workspace, target):
        pts = out.setdefault(row["item_id"], [])
        if (row["z"], row["y"], row["x"]) not in pts:
            pts.append((row["z"], row["y"], row["x"]))
    return out
