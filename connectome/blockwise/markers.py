"""Done-markers: which blocks of a stage are finished, so an interrupted stage resumes.

Stored in the workspace under ``WS/blockwise/<stage>/``::

    layout.json         the block grid + the stage's fingerprint (config, inputs) at first run
    done/<block_id>     one small JSON file per finished block (run id, seconds, attempts)
    runs.jsonl          one line per run: blocks total / already done / processed / failed

A marker is written only after the block's output chunks are on disk, and both are written
atomically (temporary file + rename), so a block is either done (marker present, data complete)
or not done (recomputed on resume). A changed layout or config is detected by comparing
``layout.json``; mixing old markers with a new layout is refused unless the caller restarts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from connectome.atomic import atomic_write_text  # noqa: F401 - re-exported
from connectome.errors import UserInputError


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = sorted(set(old) | set(new))
        out: list[str] = []
        for k in keys:
            out += _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


class MarkerStore:
    """Done-markers of one stage in one workspace."""

    def __init__(self, stage_dir: str | Path):
        self.dir = Path(stage_dir)
        self.done_dir = self.dir / "done"
        self.layout_path = self.dir / "layout.json"

    def prepare(self, layout: Mapping[str, Any], restart: bool = False) -> int:
        """Check (or record) the layout. Returns how many blocks are already done.

        Raises :class:`UserInputError` if markers from a different layout/config exist and
        ``restart`` is False; with ``restart`` the old markers are discarded.
        """
        layout = json.loads(json.dumps(layout))
        if self.layout_path.exists() and not restart:
            try:
                old = json.loads(self.layout_path.read_text())
            except (OSError, ValueError):
                old = None
            if old != layout:
                changed = _diff_keys(old or {}, layout) or ["layout"]
                raise UserInputError(
                    f"{self.dir}: stage '{layout.get('stage')}' was started with a different block layout "
                    f"or config (changed: {', '.join(changed[:5])}); rerun with --restart to discard its progress"
                )
        if restart and self.dir.exists():
            shutil.rmtree(self.done_dir, ignore_errors=True)
        if not self.layout_path.exists() or restart:
            atomic_write_text(self.layout_path, json.dumps(layout, indent=1, sort_keys=True))
        self.done_dir.mkdir(parents=True, exist_ok=True)
        return len(self.done_ids())

    def done_ids(self) -> set[str]:
        if not self.done_dir.is_dir():
            return set()
        return {n for n in os.listdir(self.done_dir) if not n.startswith(".")}

    def is_done(self, block_id: str) -> bool:
        return (self.done_dir / block_id).exists()

    def mark_done(self, block_id: str, info: Mapping[str, Any]) -> None:
        atomic_write_text(self.done_dir / block_id, json.dumps(dict(info), sort_keys=True))

    def read_marker(self, block_id: str) -> dict:
        return json.loads((self.done_dir / block_id).read_text())

    def append_run(self, record: Mapping[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "runs.jsonl", "a") as f:
            f.write(json.dumps(dict(record), sort_keys=True) + "\n")

    def runs(self) -> list[dict]:
        p = self.dir / "runs.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
