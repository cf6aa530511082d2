"""A blockwise task: everything a stage needs to run over a block grid.

Plan, then execute: a stage builds a :class:`Task` (no writes), the runner prepares outputs
and markers, and an executor runs :class:`BlockJob` on each missing block. ``process_block``
must be a picklable callable (a module-level function or a frozen dataclass instance with
``__call__``) so the same task runs serially, in a process pool, on dask workers or per MPI rank.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from connectome.blockwise.geometry import Block, BlockGrid
from connectome.blockwise.markers import MarkerStore

#: Fault-injection hook for tests and demos of resumption: seconds to sleep in every block.
DELAY_ENV = "CONNECTOME_BLOCK_DELAY_S"


@dataclass(frozen=True)
class OutputSpec:
    """An array a task writes (created by the runner before any block runs)."""

    name: str
    dtype: str
    chunks_zyx: tuple[int, int, int]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    fill_value: Any = 0
    #: names of the channels of a channel-first array (C, z, y, x); empty: a plain (z, y, x) array
    channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    stage: str
    workspace: Path
    grid: BlockGrid
    process_block: Callable[[Block], Any]
    fingerprint: Mapping[str, Any]
    outputs: tuple[OutputSpec, ...] = ()
    max_retries: int = 2
    #: optional driver-only step before markers and outputs are prepared (e.g. create the workspace)
    setup: Optional[Callable[[], None]] = None
    #: memory estimate of one worker (see :mod:`connectome.resources`): bytes per voxel of a
    #: block's read box, plus a fixed overhead (``resources.MODEL_WORKER_BYTES`` for model stages)
    bytes_per_voxel: float = 16.0
    worker_memory_bytes: int = 200 << 20

    def layout(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "grid": self.grid.to_json(),
            "fingerprint": dict(self.fingerprint),
            "outputs": [
                {
                    "name": o.name,
                    "dtype": o.dtype,
                    "chunks_zyx": list(o.chunks_zyx),
                    **({"channels": list(o.channels)} if o.channels else {}),
                }
                for o in self.outputs
            ],
        }


@dataclass(frozen=True)
class BlockResult:
    block_id: str
    ok: bool
    attempts: int
    seconds: float
    error: str = ""
    host: str = ""


@dataclass(frozen=True)
class BlockJob:
    """Runs one block with bounded retries and writes its done-marker (in the worker)."""

    process_block: Callable[[Block], Any]
    stage_dir: str
    run_id: str
    max_retries: int

    def __call__(self, block: Block) -> BlockResult:
        delay = float(os.environ.get(DELAY_ENV, "0") or 0)
        t0 = time.perf_counter()
        last = ""
        host = f"{socket.gethostname()}:{os.getpid()}"
        for attempt in range(1, self.max_retries + 2):
            try:
                if delay:
                    time.sleep(delay)
                self.process_block(block)
            except Exception as exc:  # noqa: BLE001 - reported with the block id
                tb = traceback.extract_tb(exc.__traceback__)
                where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
                last = f"{type(exc).__name__}: {exc}{where}"
                continue
            seconds = time.perf_counter() - t0
            MarkerStore(self.stage_dir).mark_done(
                block.block_id, {"run_id": self.run_id, "attempts": attempt, "seconds": round(seconds, 4), "host": host}
            )
            return BlockResult(block.block_id, True, attempt, seconds, host=host)
        return BlockResult(block.block_id, False, self.max_retries + 1, time.perf_counter() - t0, last, host)
