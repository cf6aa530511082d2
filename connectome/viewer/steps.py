"""Incremental, resumable export steps.

Each step (one layer, or the segment properties) keeps its state under
``OUT/.connectome-export/<step>/``: ``fingerprint.json`` (what the step was started from:
the source's file signature and the export parameters), ``done/<block_id>.npz`` (one per
finished block, with the block's by-products such as segment counts) and ``complete.json``.

* fingerprint and ``complete.json`` match -> the step is up to date and skipped;
* fingerprint matches but not complete (a killed run) -> only the missing blocks run;
* fingerprint differs (the source changed) -> the step's layer folders are removed and redone.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from connectome.viewer.fsutil import read_json, write_bytes, write_json

STATE_DIR = ".connectome-export"


def block_delay() -> None:
    """Fault-injection hook for tests and demos of resumption, as in the blockwise runner: sleep
    ``CONNECTOME_BLOCK_DELAY_S`` seconds before each export block."""
    from connectome.blockwise.task import DELAY_ENV

    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay:
        time.sleep(delay)


class Step:
    def __init__(self, out: str | Path, name: str, fingerprint: dict[str, Any]):
        self.out = Path(out)
        self.name = name
        self.fingerprint = fingerprint
        self.dir = self.out / STATE_DIR / name

    def up_to_date(self) -> bool:
        done = read_json(self.dir / "complete.json")
        return bool(done) and done.get("fingerprint") == self.fingerprint

    def begin(self, layer_dirs: Iterable[Path]) -> bool:
        """Prepare to run; returns True when resuming an interrupted run of the same input."""
        if read_json(self.dir / "fingerprint.json") == self.fingerprint:
            (self.dir / "complete.json").unlink(missing_ok=True)
            return True
        for d in layer_dirs:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "done").mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "fingerprint.json", self.fingerprint)
        return False

    def is_done(self, block_id: str) -> bool:
        return (self.dir / "done" / f"{block_id}.npz").is_file()

    def mark_done(self, block_id: str, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes(self.dir / "done" / f"{block_id}.npz", buf.getvalue())

    def done_payloads(self, prefix: str = "") -> Iterable[tuple[str, dict[str, np.ndarray]]]:
        for p in sorted((self.dir / "done").glob(f"{prefix}*.npz")):
            with np.load(p) as z:
                yield p.stem, {k: z[k] for k in z.files}

    def finish(self, **summary: Any) -> None:
        write_json(self.dir / "complete.json", {"fingerprint": self.fingerprint, **summary})

    def summary(self) -> dict[str, Any]:
        return read_json(self.dir / "complete.json", {}) or {}
