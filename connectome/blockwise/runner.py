"""Run a :class:`~connectome.blockwise.task.Task`: prepare, skip done blocks, execute, report.

1. (driver) check/record the block layout against existing done-markers (``--restart`` resets);
2. (driver) run the task's optional setup (e.g. create the workspace), create the output arrays;
3. every process lists the blocks without a marker and hands them to the executor;
4. blocks that keep failing stop the stage with :class:`StageFailed` naming the block and cause;
5. (driver) append a run record (total / already done / processed / failed / seconds);
6. (driver) mark the task's output arrays complete once every block has a done-marker.

Each output array's ``connectome_state`` attribute (see :mod:`connectome.workspace`) is set to
``complete: false`` in step 2 and to ``complete: true`` only in step 6, so a killed or failed run
leaves its arrays marked incomplete and consumers refuse them. A multi-task stage declares an
array as an output only of the task that writes it, so it is complete when that task finishes.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import IO

from connectome.blockwise.executors import Executor, SerialExecutor
from connectome.blockwise.markers import MarkerStore
from connectome.blockwise.task import BlockJob, BlockResult, Task
from connectome.errors import StageFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunReport:
    stage: str
    run_id: str
    total: int
    already_done: int
    processed: int
    failed: int
    seconds: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _progress_bar(enabled: bool, total: int, initial: int, stage: str):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=stage, unit="block", disable=not enabled, dynamic_ncols=True, leave=True
    )


def run_task(task: Task, executor: Executor | None = None, progress: bool = False, restart: bool = False) -> RunReport:
    from connectome.resources import check_plan
    from connectome.workspace import STATE_ATTR, Workspace, stage_command

    executor = executor or SerialExecutor()
    if executor.is_driver:
        check_plan(task)
    markers = MarkerStore(task.workspace / "blockwise" / task.stage)
    t0 = time.perf_counter()

    def prepare():
        if task.setup is not None:
            task.setup()
        already = markers.prepare(task.layout(), restart=restart)
        ws = Workspace.open(task.workspace)
        for out in task.outputs:
            # created already marked incomplete: a kill between creating it and marking it must
            # not leave an array that reads as finished
            state = {
                "stage": stage_command(task.stage),
                "task": task.stage,
                "complete": False,
                "config_digest": _digest(task),
            }
            ws.require_array(
                out.name,
                out.dtype,
                out.chunks_zyx,
                attrs={**dict(out.attrs), STATE_ATTR: state},
                fill_value=out.fill_value,
                recreate=restart,
                channels=out.channels,
            )
            ws.mark_incomplete(out.name, task.stage, _digest(task))
            _remove_stale_partials(ws.path / "volume.zarr" / out.name)
        return already, uuid.uuid4().hex[:12]

    lock = StageLock(markers.dir, task.stage, task.workspace) if executor.is_driver else None
    if lock is not None:
        lock.acquire()
    try:
        return _run(task, executor, progress, restart, markers, prepare, t0)
    finally:
        if lock is not None:
            lock.release()


def discard_progress(workspace, stages) -> None:
    """Forget the done-markers and recorded layout of ``stages`` (their run history stays), each
    under its stage lock. A multi-step command run with ``--restart`` calls this for its later
    steps before its first step starts, so a ``--restart`` run killed in an early step needs no
    second ``--restart``: a plain rerun continues step 1 and runs the later steps afresh."""
    import shutil
    from pathlib import Path

    from connectome.workspace import Workspace

    stages = set(stages)
    ws = Workspace.open(workspace) if (Path(workspace) / "volume.zarr").exists() else None
    for stage in sorted(stages):
        markers = MarkerStore(Path(workspace) / "blockwise" / stage)
        if not markers.dir.exists():
            continue
        lock = StageLock(markers.dir, stage, workspace)
        lock.acquire()
        try:
            if ws is not None:  # what these steps wrote is no longer finished
                for name in list(ws.group.array_keys()):
                    state = ws.array_state(name)
                    if state and state.get("task") == stage and state.get("complete"):
                        ws.mark_incomplete(name, stage, state.get("config_digest", ""))
            markers.layout_path.unlink(missing_ok=True)
            shutil.rmtree(markers.done_dir, ignore_errors=True)
        finally:
            lock.release()
        log.info("stage %s: progress discarded (--restart)", stage)


def _remove_stale_partials(directory) -> None:
    """Temporary files (``*.partial``) a killed run left in an output array of this task. Safe
    here: the driver holds the stage lock and no block of this run has started yet, and no other
    stage writes this task's outputs."""
    import os

    if not os.path.isdir(directory):
        return
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name.endswith(".partial"):
                try:
                    os.unlink(os.path.join(root, name))
                except OSError:
                    pass
                else:
                    log.debug("removed %s left by a killed run", os.path.join(root, name))


def _digest(task: Task) -> str:
    import hashlib
    import json

    text = json.dumps(task.layout(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _mark_outputs_complete(task: Task, markers) -> None:
    from connectome.workspace import Workspace

    if not task.outputs:
        return
    if not {b.block_id for b in task.grid.blocks()} <= markers.done_ids():
        return  # some block has no marker: leave the arrays marked incomplete
    ws = Workspace.open(task.workspace)
    for out in task.outputs:
        ws.mark_complete(out.name)


class StageLock:
    """One run of a stage per workspace at a time: an exclusive ``flock`` on
    ``WS/blockwise/<stage>/lock`` held by the driver for the whole run (the OS drops it when the
    process dies, so a killed run leaves no stale lock). The file names the holder."""

    def __init__(self, directory, stage: str, workspace):
        self.path = directory / "lock"
        self.stage, self.workspace = stage, workspace
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        import fcntl
        import os
        import socket

        from connectome.errors import UserInputError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UserInputError(
                f"stage '{self.stage}' is already running on workspace {self.workspace} "
                f"({holder}); wait for it to finish or stop it, then rerun"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def _run(task: Task, executor: Executor, progress: bool, restart: bool, markers, prepare, t0) -> RunReport:
    already, run_id = executor.run_on_driver(prepare)
    done = markers.done_ids()
    todo = [b for b in task.grid.blocks() if b.block_id not in done]
    total = task.grid.num_blocks
    if executor.is_driver:
        log.info(
            "stage %s: %d blocks (%s), %d already done, %d to run on executor '%s'",
            task.stage,
            total,
            "x".join(map(str, task.grid.grid_shape_zyx)),
            total - len(todo),
            len(todo),
            executor.name,
        )
    job = BlockJob(task.process_block, str(markers.dir), run_id, task.max_retries)
    bar = _progress_bar(progress and executor.is_driver, total, total - len(todo), task.stage)
    failures: list[BlockResult] = []

    def on_result(res: BlockResult) -> bool:
        bar.update(1 if res.ok else 0)
        if res.attempts > 1 and res.ok:
            log.warning("stage %s: block %s succeeded after %d attempts", task.stage, res.block_id, res.attempts)
        if not res.ok:
            failures.append(res)
            return False
        return True

    try:
        results = executor.map(job, todo, on_result)
    finally:
        bar.close()
    failed = [r for r in results if not r.ok]
    processed = sum(1 for r in results if r.ok)
    report = RunReport(
        task.stage, run_id, total, total - len(todo), processed, len(failed), round(time.perf_counter() - t0, 3)
    )
    if executor.is_driver:
        markers.append_run(report.to_json())
        log.info(
            "stage %s: processed %d blocks in %.1f s (%d failed)", task.stage, processed, report.seconds, len(failed)
        )
    if failed:
        first = failed[0]
        block = next(b for b in task.grid.blocks() if b.block_id == first.block_id)
        box = " ".join(f"{a}[{b}:{e}]" for a, b, e in zip("zyx", block.write_box.begin_zyx, block.write_box.end_zyx))
        raise StageFailed(
            f"stage '{task.stage}' failed on block {first.block_id} ({box}) after "
            f"{first.attempts} attempts: {first.error}"
        )
    if executor.is_driver:
        _mark_outputs_complete(task, markers)
    return report
