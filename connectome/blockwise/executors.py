"""Executors: where the blocks of a task run. One interface, four back ends.

* ``serial`` — in this process, one block after another (debugging, tests).
* ``local``  — a process pool on this machine (the default; ``--workers N``).
* ``dask``   — an existing dask.distributed cluster reached through ``--scheduler-file``
  (how PBS jobs run: one scheduler, workers on every node).
* ``mpi``    — every MPI rank runs the same command; blocks are handed out dynamically
  through a shared counter (MPI one-sided fetch-and-add), so ranks with slow blocks take
  fewer. Launch with ``mpiexec -n N connectome <stage> --executor mpi ...``.

``map(job, blocks, on_result)`` runs ``job`` on each block and calls ``on_result(result)``
as results arrive (in this process); ``on_result`` returns False to stop early (a block failed
for good). ``map`` returns every result it collected (on MPI: from all ranks).
Only the *driver* (this process; rank 0 under MPI) prepares outputs and writes run records.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Sequence, TypeVar

from connectome.blockwise.geometry import Block
from connectome.blockwise.task import BlockResult
from connectome.errors import UserInputError

log = logging.getLogger(__name__)
R = TypeVar("R")

EXECUTORS = ("serial", "local", "dask", "mpi")


class Executor:
    name = "base"
    is_driver = True

    def map(
        self, job: Callable[[Block], BlockResult], blocks: Sequence[Block], on_result: Callable[[BlockResult], bool]
    ) -> list[BlockResult]:
        raise NotImplementedError  # pragma: no cover - interface

    def run_on_driver(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` on the driver only; its result (or exception) reaches every process."""
        return fn()

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SerialExecutor(Executor):
    name = "serial"

    def map(self, job, blocks, on_result):
        results = []
        for block in blocks:
            res = job(block)
            results.append(res)
            if not on_result(res):
                break
        return results


def _bounded_submit(submit, blocks: Iterable[Block], limit: int, wait_one, on_result, cancel_all):
    """Keep at most ``limit`` blocks in flight; collect results as they complete."""
    results: list[BlockResult] = []
    it = iter(blocks)
    pending: set[Any] = set()  # futures of the executor's pool
    stop = False
    while True:
        while not stop and len(pending) < limit:
            block = next(it, None)
            if block is None:
                break
            pending.add(submit(block))
        if not pending:
            break
        done = wait_one(pending)
        for fut in done:
            pending.discard(fut)
            res = fut.result()
            results.append(res)
            if not on_result(res):
                stop = True
        if stop:
            cancel_all(pending)
            # let blocks already running finish so their markers are written
            for fut in list(pending):
                try:
                    results.append(fut.result())
                except Exception:  # cancelled
                    pass
            break
    return results


class LocalExecutor(Executor):
    """A pool of worker processes on this machine (spawned, so no state leaks in)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        return self._pool

    def map(self, job, blocks, on_result):
        from concurrent.futures import FIRST_COMPLETED, wait

        if not blocks:
            return []
        pool = self._get_pool()

        def wait_one(pending):
            return wait(pending, return_when=FIRST_COMPLETED)[0]

        def cancel_all(pending):
            for f in pending:
                f.cancel()

        return _bounded_submit(lambda b: pool.submit(job, b), blocks, 2 * self.workers, wait_one, on_result, cancel_all)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskExecutor(Executor):
    """Blocks as tasks on an existing dask.distributed cluster (``--scheduler-file``)."""

    name = "dask"

    def __init__(self, scheduler_file: str | None = None, address: str | None = None):
        if not scheduler_file and not address:
            raise UserInputError(
                "--executor dask needs --scheduler-file PATH (written by `dask scheduler --scheduler-file`)"
            )
        if scheduler_file and not os.path.isfile(scheduler_file):
            raise UserInputError(f"{scheduler_file}: scheduler file not found")
        from distributed import Client

        try:
            self.client = Client(scheduler_file=scheduler_file, address=address, timeout="30s")
        except OSError as exc:
            raise UserInputError(f"{scheduler_file or address}: cannot reach the dask scheduler ({exc})") from None
        n = len(self.client.scheduler_info().get("workers", {}))
        log.info("dask cluster at %s with %d workers", self.client.scheduler.address, n)
        self.limit = max(4, 4 * n)

    def map(self, job, blocks, on_result):
        from distributed import wait

        if not blocks:
            return []
        prefix = f"{os.path.basename(getattr(job, 'stage_dir', 'stage'))}-{getattr(job, 'run_id', 'run')}"

        def submit(block):
            # retries=1 covers a worker lost mid-block; exceptions are retried inside the job.
            return self.client.submit(job, block, key=f"{prefix}-{block.block_id}", pure=False, retries=1)

        def wait_one(pending):
            return wait(list(pending), return_when="FIRST_COMPLETED").done

        def cancel_all(pending):
            self.client.cancel(list(pending))

        return _bounded_submit(submit, blocks, self.limit, wait_one, on_result, cancel_all)

    def close(self):
        self.client.close()


class MPIExecutor(Executor):
    """Every rank runs the task; blocks are dealt out by an atomic shared counter on rank 0."""

    name = "mpi"

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError:
            raise UserInputError("--executor mpi needs mpi4py (install the 'mpi' extra)") from None
        self.MPI = MPI
        self.comm = comm or MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_driver = self.rank == 0

    def run_on_driver(self, fn):
        outcome = None
        if self.is_driver:
            try:
                outcome = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001 - re-raised on every rank
                outcome = ("err", exc)
        outcome = self.comm.bcast(outcome, root=0)
        if outcome[0] == "err":
            raise outcome[1]
        return outcome[1]

    def barrier(self):
        self.comm.Barrier()

    def map(
        self, job: Callable[[Block], BlockResult], blocks: Sequence[Block], on_result: Callable[[BlockResult], bool]
    ) -> list[BlockResult]:
        import numpy as np

        MPI = self.MPI
        n = len(blocks)
        itemsize = MPI.INT64_T.Get_size()
        win = MPI.Win.Allocate(itemsize if self.rank == 0 else 0, itemsize, comm=self.comm)
        if self.rank == 0:
            win.Lock(0, MPI.LOCK_EXCLUSIVE)
            win.Put(np.zeros(1, dtype=np.int64), 0)
            win.Unlock(0)
        self.comm.Barrier()
        one = np.ones(1, dtype=np.int64)
        got = np.zeros(1, dtype=np.int64)
        mine: list[BlockResult] = []
        try:
            while True:
                win.Lock(0, MPI.LOCK_EXCLUSIVE)
                win.Fetch_and_op(one, got, 0, 0, MPI.SUM)
                win.Unlock(0)
                i = int(got[0])
                if i >= n:
                    break
                res = job(blocks[i])
                mine.append(res)
                if not on_result(res):
                    # stop everybody: push the counter past the end
                    win.Lock(0, MPI.LOCK_EXCLUSIVE)
                    win.Fetch_and_op(np.array([n], dtype=np.int64), got, 0, 0, MPI.SUM)
                    win.Unlock(0)
                    break
        finally:
            self.comm.Barrier()
            win.Free()
        everyone = self.comm.allgather(mine)
        return [r for rank_results in everyone for r in rank_results]


def make_executor(name: str, workers: int | None = None, scheduler_file: str | None = None) -> Executor:
    if name == "serial":
        return SerialExecutor()
    if name == "local":
        return LocalExecutor(workers)
    if name == "dask":
        return DaskExecutor(scheduler_file=scheduler_file)
    if name == "mpi":
        return MPIExecutor()
    raise UserInputError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {name!r}")
