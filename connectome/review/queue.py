"""The review queue ``WS/review/<target>/queue.csv``, the review folder and the workspace identity.

Queue columns (``shared/CONTRACT.md``), one row per item, most useful first::

    item_id,target,kind,z0,y0,x0,z1,y1,x1,score,reason

* ``item_id``: unique within the queue (``<target>-<rank>``, e.g. ``vessels-0001``);
* ``target``: ``vessels`` | ``synapses`` | ``segmentation``; ``kind``: what the item is
  (``uncertain-region``, ``detection``, ``missed-candidate``, ``merge-candidate``,
  ``split-candidate``);
* ``z0..x1``: a half-open box in voxels of ``raw`` (a point is a 1-voxel box);
* ``score``: how much reviewing it is expected to help (higher = more; the strategy's measure,
  in [0, 1]); ``reason``: one human-readable line.

``WS/review/<target>/review.json`` records how the queue was made and for which workspace::

    {"format": "connectome-review/1", "target": ..., "strategy": ..., "seed": ..., "box_zyx": [...],
     "count": ..., "items": ..., "created": "2026-...Z",
     "workspace": {"path": "/abs/WS", "shape_zyx": [...], "voxel_size_nm": [...],
                   "raw_config_digest": "...", "fingerprint": "<sha256 of the three>"},
     "inputs": {"vessel_prob": {"config_digest": ...}, ...}}

The *workspace identity* is the absolute path plus a fingerprint of the raw array (shape, voxel
size and its ``connectome_state`` config digest): corrections made on one workspace are never
used with another (:func:`check_identity`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from connectome.atomic import atomic_write_text
from connectome.errors import UserInputError

COLUMNS = ("item_id", "target", "kind", "z0", "y0", "x0", "z1", "y1", "x1", "score", "reason")
TARGETS = ("vessels", "synapses", "segmentation")
FORMAT = "connectome-review/1"
QUEUE, REVIEW_JSON, DECISIONS, POINTS = "queue.csv", "review.json", "decisions.csv", "points.csv"


@dataclass(frozen=True)
class Item:
    item_id: str
    target: str
    kind: str
    box: tuple[int, int, int, int, int, int]  # z0, y0, x0, z1, y1, x1 (half-open)
    score: float
    reason: str

    @property
    def begin_zyx(self) -> tuple[int, int, int]:
        return self.box[:3]

    @property
    def end_zyx(self) -> tuple[int, int, int]:
        return self.box[3:]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(b, e) for b, e in zip(self.box[:3], self.box[3:]))  # type: ignore[return-value]


def review_dir(workspace: str | Path, target: str) -> Path:
    """``WS/review/<target>/`` (not created here)."""
    if target not in TARGETS:
        raise UserInputError(f"--target: expected one of {', '.join(TARGETS)}, got {target!r}")
    return Path(workspace) / "review" / target


def format_queue(items: Iterable[Item]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for it in items:
        w.writerow([it.item_id, it.target, it.kind, *(int(v) for v in it.box), f"{it.score:.6g}", it.reason])
    return buf.getvalue()


def write_queue(path: str | Path, items: Sequence[Item]) -> None:
    """Write the queue atomically (a killed writer leaves the old file as it was)."""
    atomic_write_text(path, format_queue(items))


def read_queue(path: str | Path) -> list[Item]:
    """The queue's items; a :class:`UserInputError` naming the line for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no review queue (run `connectome review plan` first)")
    items, seen = [], set()
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        header = next(r, None)
        if header is None or tuple(header) != COLUMNS:
            raise UserInputError(f"{path}: header must be {','.join(COLUMNS)}, got {','.join(header or [])!r}")
        for n, row in enumerate(r, start=2):
            if len(row) != len(COLUMNS):
                raise UserInputError(f"{path}: line {n}: expected {len(COLUMNS)} columns, got {len(row)}")
            try:
                box = tuple(int(v) for v in row[3:9])
                score = float(row[9])
            except ValueError:
                raise UserInputError(f"{path}: line {n}: z0..x1 must be integers and score a number") from None
            if any(box[k] >= box[k + 3] or box[k] < 0 for k in range(3)):
                raise UserInputError(f"{path}: line {n}: box {list(box)} is empty or negative (z0<z1, y0<y1, x0<x1)")
            if row[0] in seen:
                raise UserInputError(f"{path}: line {n}: duplicate item_id {row[0]!r}")
            seen.add(row[0])
            items.append(Item(row[0], row[1], row[2], box, score, row[10]))  # type: ignore[arg-type]
    return items


# ----------------------------------------------------------------------------- identity
def workspace_identity(ws) -> dict:
    """The workspace's identity: absolute path + a fingerprint of its raw array."""
    raw_digest = ""
    if ws.has("raw"):
        raw_digest = str((ws.array_state("raw") or {}).get("config_digest", ""))
    ident = {
        "path": str(Path(ws.path).resolve()),
        "shape_zyx": [int(s) for s in ws.shape_zyx],
        "voxel_size_nm": [float(v) for v in ws.voxel_size_nm],
        "raw_config_digest": raw_digest,
    }
    blob = json.dumps({k: ident[k] for k in ("shape_zyx", "voxel_size_nm", "raw_config_digest")}, sort_keys=True)
    ident["fingerprint"] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return ident


def check_identity(recorded: object, ws, where: str) -> None:
    """Exit 2 unless ``recorded`` (a review.json's ``workspace``) names the workspace ``ws``."""
    now = workspace_identity(ws)
    if (
        not isinstance(recorded, dict)
        or recorded.get("path") != now["path"]
        or recorded.get("fingerprint") != now["fingerprint"]
    ):
        other = recorded.get("path") if isinstance(recorded, dict) else None
        raise UserInputError(
            f"{where}: made for workspace {other or '(unknown)'} "
            f"(fingerprint {recorded.get('fingerprint') if isinstance(recorded, dict) else None}), "
            f"not {now['path']} (fingerprint {now['fingerprint']}); "
            "plan and correct a review on the workspace it is used with"
        )


def read_review_json(folder: str | Path) -> dict:
    p = Path(folder) / REVIEW_JSON
    if not p.is_file():
        raise UserInputError(f"{p}: not found (run `connectome review plan` first)")
    try:
        meta = json.loads(p.read_text())
        assert isinstance(meta, dict) and meta.get("format") == FORMAT
    except Exception:
        raise UserInputError(f"{p}: not a review record of format {FORMAT}") from None
    return meta
