"""Review decisions ``WS/review/<target>/decisions.csv``: ``item_id,decision,author,time``.

``decision`` is ``accept`` (the model is right here), ``reject`` (it is wrong) or ``missed``
(something the model missed is here); ``time`` is UTC ISO 8601. Rows are only ever appended:
each decision reads the file, appends one row, writes a temporary file and renames it into
place (under a lock file, so two reviewers never lose each other's rows); a killed writer leaves
the old file intact. A later row for the same item supersedes the earlier one
(:func:`latest_decisions`).
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
from connectome.review.queue import DECISIONS, QUEUE, read_queue, review_dir

COLUMNS = ("item_id", "decision", "author", "time")
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


def decide(
    workspace: str | Path, target: str, item_id: str, decision: str, author: str | None = None, when: str | None = None
) -> dict:
    """Append one decision; exit 2 for an unknown decision or an item not in the queue."""
    from connectome.review.plan import utc_now

    if decision not in DECISION_KINDS:
        raise UserInputError(f"--decision: expected one of {', '.join(DECISION_KINDS)}, got {decision!r}")
    folder = review_dir(workspace, target)
    items = {it.item_id for it in read_queue(folder / QUEUE)}
    if item_id not in items:
        raise UserInputError(f"--item: {item_id!r} is not in {folder / QUEUE} ({len(items)} items)")
    if author is None:
        try:
            author = getpass.getuser()
        except Exception:
            author = "unknown"
    if any(c in author for c in "\r\n"):
        raise UserInputError("--author: must be one line")
    row = {"item_id": item_id, "decision": decision, "author": author, "time": when or utc_now()}
    path = folder / DECISIONS
    with _locked(folder):
        text = path.read_text(encoding="utf-8") if path.is_file() else _row(COLUMNS)
        if text and not text.endswith("\n"):
            text += "\n"
        atomic_write_text(path, text + _row([row[c] for c in COLUMNS]))
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
