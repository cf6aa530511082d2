"""What every command's run function shares: the executor of ``--executor/--workers`` (a local
pool capped by cores and memory), progress bars, the stage config with command-line overrides
(errors name the option), running a planned task with its log file, and ``--restart`` of a
multi-step command."""

from __future__ import annotations

import logging
import sys
from typing import Any, Mapping, Optional

from connectome.errors import UserInputError

log = logging.getLogger("connectome")


def executor(args, task=None):
    """The executor of ``--executor``; a local pool is capped by the usable cores and (given the
    task) by available memory / its per-worker estimate, with a warning when that is fewer
    workers than ``--workers`` asked for (:func:`connectome.resources.local_workers`)."""
    from connectome.blockwise import EXECUTORS, make_executor

    if args.executor not in EXECUTORS:
        raise UserInputError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {args.executor!r}")
    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers: expected a positive number, got {args.workers}")
    workers = args.workers
    if args.executor == "local":
        from connectome.resources import local_workers

        workers, note = local_workers(args.workers, task)
        if note:
            log.warning("%s: %s", task.stage if task is not None else "local pool", note)
    return make_executor(args.executor, workers=workers, scheduler_file=args.scheduler_file)


def progress(args) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def check_workers(args) -> None:
    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers: expected a positive number, got {args.workers}")


def stage_config(args, cls: type, overrides: Optional[Mapping[str, Any]] = None):
    """``cls`` from ``--config`` (or defaults) with ``overrides`` from options; an error an
    override causes names the option that set it (from the command's table entry)."""
    from connectome.config import load_config

    command = getattr(args, "_command", None)
    options = command.option_of_key() if command is not None else {}
    return load_config(cls, getattr(args, "config", None), overrides, options=options)


def block_shape_override(args, overrides: dict) -> dict:
    """``--block-shape Z,Y,X`` -> ``overrides["blockwise.block_shape_zyx"]``."""
    from connectome.workspace import parse_zyx

    if getattr(args, "block_shape", None):
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    return overrides


def restart_later_steps(args, *stages: str) -> None:
    """``--restart`` of a multi-step command: forget the later steps' progress before step 1 runs,
    so a killed ``--restart`` run resumes with a plain rerun (see ``discard_progress``)."""
    if args.restart:
        from connectome.blockwise.runner import discard_progress
        from connectome.mpi import mpi_rank

        if not mpi_rank():
            discard_progress(args.workspace, stages)


def run(args, task, command: str) -> int:
    """Run a planned task with the executor chosen on the command line."""
    from connectome.blockwise import run_task
    from connectome.logsetup import add_log_file

    with executor(args, task) as ex:
        if ex.is_driver:
            path = add_log_file(task.workspace, command)
            if path:
                log.debug("log file %s", path)
        else:  # MPI ranks > 0 stay quiet
            logging.getLogger().handlers[0].setLevel(logging.ERROR)
        report = run_task(task, ex, progress=progress(args), restart=args.restart)
    if ex.is_driver:
        print(
            f"{command}: {report.processed} blocks processed, {report.already_done} already done, "
            f"{report.total} total, {report.seconds:.1f} s"
        )
    return 0


def parse_sets(items, what: str) -> dict:
    """``KEY=VALUE`` pairs (VALUE read as YAML: numbers, booleans, lists) -> dict."""
    import math

    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"{what} {item!r}: expected KEY=VALUE, e.g. noise_sigma=0.2")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserInputError(f"{what} {item!r}: the value is not a number, boolean, string or list") from None
        for v in out[key.strip()] if isinstance(out[key.strip()], list) else [out[key.strip()]]:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserInputError(f"{what} {item!r}: expected a finite number, got {v!r}")
    return out
