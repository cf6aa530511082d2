"""Plan a review queue: candidates of the target -> a strategy -> ``queue.csv`` + ``review.json``.

Re-planning replaces the queue unless decisions were already made on it (``decisions.csv`` has
rows) or corrections imported: then it refuses unless ``overwrite``, which moves the old queue,
record, decisions and corrections to ``WS/review/<target>/superseded-<time>/`` first.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence, cast

import numpy as np

from connectome.atomic import atomic_write_text
from connectome.errors import UserInputError
from connectome.review import candidates as cand_mod
from connectome.review import strategies
from connectome.review.queue import (
    DECISIONS,
    FORMAT,
    POINTS,
    QUEUE,
    REVIEW_JSON,
    Item,
    review_dir,
    workspace_identity,
    write_queue,
)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decision_rows(folder: Path) -> int:
    p = folder / DECISIONS
    if not p.is_file():
        return 0
    return max(0, sum(1 for line in p.read_text().splitlines() if line.strip()) - 1)


def plan_review(
    workspace: str | Path,
    target: str,
    count: int,
    strategy: str = "uncertainty",
    box_zyx: Sequence[int] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write ``WS/review/<target>/queue.csv`` and ``review.json``; returns the queue's path."""
    from connectome.workspace import Workspace

    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise UserInputError(f"--count: expected a positive integer, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserInputError(f"--seed: expected a non-negative integer, got {seed!r}")
    pick = strategies.get(strategy)
    folder = review_dir(workspace, target)
    ws = Workspace.open(workspace, mode="r")
    box = tuple(int(b) for b in (box_zyx or cand_mod.DEFAULT_BOX[target]))
    if len(box) != 3 or any(b < 1 for b in box):
        raise UserInputError(f"--box: expected three positive integers Z,Y,X, got {list(box)}")
    box = tuple(min(b, s) for b, s in zip(box, ws.shape_zyx))

    queue = folder / QUEUE
    n_dec = _decision_rows(folder)
    has_corr = (folder / "corrections.json").exists() or (folder / POINTS).exists()
    reviewed = queue.exists() and (n_dec or has_corr)
    if reviewed and not overwrite:
        what = f"{n_dec} decisions in {DECISIONS}" if n_dec else "imported corrections or missed points"
        raise UserInputError(
            f"{queue}: already reviewed ({what}); rerun with --overwrite to replace it "
            "(the old queue, decisions and corrections move to superseded-<time>/)"
        )

    cands = cand_mod.CANDIDATES[target](ws, box)
    rng = np.random.default_rng(seed)
    order = pick(cands, int(count), rng)
    picked = [(f"{target}-{rank:04d}", i) for rank, i in enumerate(order, start=1)]
    items = [
        Item(
            item_id,
            target,
            cands.kinds[i],
            cast("tuple[int, int, int, int, int, int]", tuple(int(v) for v in cands.boxes[i])),
            float(cands.scores[i]),
            cands.reason(i),
        )
        for item_id, i in picked
    ]
    # the segment ids each item is about (merge: the pair, split: the segment), for `review apply`
    item_segments = {item_id: cands.item_segments(i) for item_id, i in picked if cands.item_segments(i)}
    if reviewed:  # --overwrite: keep the old review beside the new one
        old = folder / f"superseded-{time.strftime('%Y%m%dT%H%M%S')}"
        old.mkdir(parents=True, exist_ok=False)
        for name in (QUEUE, REVIEW_JSON, DECISIONS, POINTS, "corrections.json", "corrections.zarr"):
            if (folder / name).exists():
                shutil.move(str(folder / name), str(old / name))
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "target": target,
        "strategy": strategy,
        "seed": int(seed),
        "box_zyx": list(box),
        "count": int(count),
        "items": len(items),
        "candidates": len(cands),
        "created": utc_now(),
        "workspace": workspace_identity(ws),
        "inputs": cands.inputs,
    }
    if cands.segments is not None:
        meta["item_segments"] = item_segments
    # the record first, then the queue: a queue is never there without the record that made it
    atomic_write_text(folder / REVIEW_JSON, json.dumps(meta, indent=1) + "\n")
    write_queue(queue, items)
    return queue
