"""What this machine can give a stage: cores, memory, disk — and the up-front checks against them.

A plan that cannot fit is refused before anything is written (exit 2 with the estimate), and a
local process pool is sized to what fits, with a warning when that is fewer workers than asked:

* :func:`check_plan` — the number of blocks (each has a done-marker and per-block overhead) and one
  worker's memory (fixed overhead + the largest block's read box x bytes per voxel);
* :func:`local_workers` — ``--workers`` capped by the usable cores and by available memory /
  per-worker estimate;
* :func:`check_disk` — a volume that would not fit on the workspace's disk even uncompressed.

The estimates are deliberately simple (bytes per voxel of a block's read box, declared by each
task; :data:`MODEL_WORKER_BYTES` for a process that loads TensorFlow and a model) and are logged,
so a user can see why a plan was refused or a pool made smaller.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from connectome.errors import UserInputError

if TYPE_CHECKING:  # pragma: no cover
    from connectome.blockwise.task import Task

log = logging.getLogger(__name__)

#: A plan with more blocks than this is refused (each block costs a marker file and scheduling).
MAX_BLOCKS = 1_000_000
#: A ``block_shape_zyx`` smaller than this many voxels is refused (per-block overhead dominates).
MIN_BLOCK_VOXELS = 1024
#: Resident memory of one worker process that imports TensorFlow and holds a model (measured
#: ~0.7-0.9 GiB for our U-Nets and FFN on CPU; rounded up).
MODEL_WORKER_BYTES = 1 << 30
#: Resident memory of one plain worker process (numpy, zarr, scipy imported).
PLAIN_WORKER_BYTES = 200 << 20
#: Share of the available memory a local pool may plan to use.
MEMORY_SHARE = 0.8


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def worker_bytes(task: "Task") -> int:
    """One worker's memory estimate: its fixed overhead plus the largest block's read box
    (write box + halo on both sides, clipped to the volume) times the task's bytes per voxel."""
    grid = task.grid
    read = [min(s, b + 2 * h) for s, b, h in zip(grid.shape_zyx, grid.block_shape_zyx, grid.halo_zyx)]
    return int(task.worker_memory_bytes + math.prod(read) * task.bytes_per_voxel)


def check_plan(task: "Task", available: Optional[int] = None) -> None:
    """Refuse (exit 2, with the estimate) a plan with absurdly many blocks or a block that does
    not fit in memory even with one worker."""
    grid = task.grid
    n = grid.num_blocks
    if n > MAX_BLOCKS:
        raise UserInputError(
            f"stage '{task.stage}': block shape {list(grid.block_shape_zyx)} over a volume of "
            f"{list(grid.shape_zyx)} plans {n:,} blocks (limit {MAX_BLOCKS:,}); choose a larger "
            "block_shape_zyx (blockwise.block_shape_zyx in --config, or --block-shape)"
        )
    need = worker_bytes(task)
    have = available_memory_bytes() if available is None else available
    if need > have * MEMORY_SHARE:
        raise UserInputError(
            f"stage '{task.stage}': one block of {list(grid.block_shape_zyx)} (+ halo {list(grid.halo_zyx)}) needs "
            f"about {fmt_bytes(need)} of memory per worker, but only {fmt_bytes(have)} is available; "
            "choose a smaller block_shape_zyx"
        )


def local_workers(
    requested: Optional[int],
    task: Optional["Task"] = None,
    available: Optional[int] = None,
    cores: Optional[int] = None,
) -> tuple[int, str]:
    """How many local worker processes to start, and a note saying why when it is fewer than asked.

    ``requested`` None means "as many as fit" (no warning). The cap is the usable cores and,
    with a task, available memory x :data:`MEMORY_SHARE` / :func:`worker_bytes`."""
    cores = usable_cores() if cores is None else cores
    want = cores if requested is None else int(requested)
    caps = [(cores, f"{cores} usable cores")]
    if task is not None:
        have = available_memory_bytes() if available is None else available
        per = max(1, worker_bytes(task))
        caps.append(
            (
                max(1, int(have * MEMORY_SHARE // per)),
                f"{fmt_bytes(have)} available memory / ~{fmt_bytes(per)} per worker",
            )
        )
    cap, why = min(caps, key=lambda c: c[0])
    if want <= cap:
        return want, ""
    note = f"using {cap} local workers instead of {want} ({why})" if requested is not None else ""
    return cap, note


def check_disk(path: str | os.PathLike, nbytes: int, what: str, option: str) -> None:
    """Refuse a volume of ``nbytes`` (uncompressed) that would not fit on the disk of ``path``."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    if nbytes > free:
        raise UserInputError(
            f"{option}: {what} would be about {fmt_bytes(nbytes)} uncompressed, but the "
            f"workspace's disk ({p}) has {fmt_bytes(free)} free"
        )
