"""``connectome hpo run SPACE --max-evals N --out DIR``: a DeepHyper CBO search over a space.

* The search: ``CBO(problem, random_state=<space's search.random_state>, log_dir=DIR,
  checkpoint_restart=True).search(evaluator, max_evals=..., max_evals_strict=True)``. On a fresh
  run the base config's point (when it lies in the space) is the first trial, so the results
  compare the sweep with the configuration it started from.
* Restart: ``--max-evals`` is the total. A rerun into the same DIR reloads ``DIR/results.csv``
  (DeepHyper's checkpoint restart: the surrogate is refitted on it) and runs only the missing
  evaluations, with random state ``random_state + evaluations done``; with all N done it does
  nothing. DIR remembers its space (``DIR/space.json``):
  a rerun with a different space is refused.
* Evaluators: ``serial`` (in this process), ``thread`` / ``process`` (``--workers`` at once),
  ``mpicomm`` (under ``mpiexec -n K``: rank 0 is the master, the K-1 other ranks evaluate).
  Every trial runs its commands in a child process (:mod:`hpo.objective`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path

from connectome.errors import UserInputError
from hpo.space import load_space

log = logging.getLogger("connectome.hpo")

EVALUATORS = ("serial", "thread", "process", "mpicomm")
RESULTS = "results.csv"


def count_results(out: Path) -> int:
    path = out / RESULTS
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def _check_out(out: Path, space) -> int:
    """Existing evaluations in ``out`` (0 for a new folder); refuse a folder of another space."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a folder")
    snap = out / "space.json"
    if snap.is_file():
        try:
            old = json.loads(snap.read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"--out {out}: unreadable space.json ({exc})") from None
        if old.get("digest") != space.digest():
            raise UserInputError(
                f"--out {out}: holds a sweep of another space (from {old.get('space_file')}); use a new --out folder"
            )
    elif (out / RESULTS).is_file():
        raise UserInputError(f"--out {out}: has a results.csv but no space.json; not a `connectome hpo run` folder")
    return count_results(out)


def _progress(total: int, done: int):
    """A DeepHyper callback (on the master): one line per finished trial."""
    from deephyper.evaluator.callback import Callback

    class Progress(Callback):
        def __init__(self):
            self.total, self.done = total, done

        def on_done(self, job):
            _print_done(self, job)

    return Progress()


def _print_done(self, job) -> None:
    self.done += 1
    obj = job.objective
    text = f"{obj:.6g}" if isinstance(obj, (int, float)) else str(obj)
    sec = (job.metadata or {}).get("seconds")
    print(
        f"hpo: trial {str(job.id).split('.')[-1]} ({self.done}/{self.total}): objective {text}"
        + (f" in {sec:.1f} s" if isinstance(sec, (int, float)) else ""),
        flush=True,
    )


def run_search(space_file, out, max_evals: int, method: str = "serial", workers: int | None = None) -> int:
    if max_evals is None or max_evals < 1:
        raise UserInputError(f"--max-evals: expected a positive number, got {max_evals}")
    if method not in EVALUATORS:
        raise UserInputError(f"--evaluator: expected one of {', '.join(EVALUATORS)}, got {method!r}")
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers: expected a positive number, got {workers}")
    if workers not in (None, 1) and method == "serial":
        raise UserInputError("--workers: the serial evaluator runs one trial at a time (use thread or process)")
    comm = None
    if method == "mpicomm":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if comm.Get_size() < 2:
            raise UserInputError(
                "--evaluator mpicomm: needs at least 2 MPI ranks (rank 0 is the master); launch with mpiexec -n K"
            )
        if workers is not None:
            raise UserInputError(
                f"--workers: with mpicomm the workers are the MPI ranks after rank 0 "
                f"({comm.Get_size() - 1} here); leave --workers out"
            )
    space = load_space(space_file)
    out = Path(out).resolve()
    done = _check_out(out, space)  # every rank decides the same (before any rank writes)
    remaining = max_evals - done
    master = comm is None or comm.Get_rank() == 0
    if remaining <= 0:
        if master:
            print(f"hpo run: {done} evaluations already in {out / RESULTS} (--max-evals {max_evals}); nothing to do")
        return 0

    logging.getLogger("deephyper").setLevel(logging.ERROR)  # chatty per call, and warns on a normal stop
    from deephyper.evaluator import Evaluator
    from deephyper.hpo import CBO

    from hpo.objective import run_trial, run_trial_async

    kwargs = {
        "run_function_kwargs": {"space_file": str(space.path), "out": str(out)},
        "callbacks": [_progress(max_evals, done)],
    }
    if method in ("thread", "process"):
        kwargs["num_workers"] = workers or 1
    if method == "mpicomm":
        # the master's bookkeeping only (a trial gets its parameters with the job): DeepHyper's
        # default MPIWinStorage aborts under pip's MPICH 5 ("memcpy argument memory ranges overlap"
        # in an RMA window copy)
        from deephyper.evaluator.storage import MemoryStorage

        kwargs["storage"] = MemoryStorage()
    if not master:
        sys.stdout = open(os.devnull, "w")  # DeepHyper's workers print every result
    evaluator = Evaluator.create(
        run_trial_async if method == "serial" else run_trial, method=method, method_kwargs=kwargs
    )
    with evaluator:
        if method == "mpicomm" and not evaluator.is_master:
            return 0  # a worker rank: served trials until the master finished
        out.mkdir(parents=True, exist_ok=True)
        snap = {
            "digest": space.digest(),
            "space_file": str(space.path),
            "stage": space.stage,
            "objective": space.objective,
            "space": space.identity(),
        }
        (out / "space.json").write_text(json.dumps(snap, indent=1, default=str))
        base = space.base_point() if done == 0 else None
        # a continuation draws from its own (still fixed) random state: with the original one the
        # optimizer would propose the first run's initial random points again
        search = CBO(
            space.problem(),
            random_state=space.random_state + done,
            log_dir=str(out),
            checkpoint_restart=True,
            surrogate_model=space.surrogate_model,
            n_initial_points=space.n_initial_points,
            initial_points=[base] if base else None,
        )
        print(
            f"hpo run: {space.stage} sweep, {len(space.params)} parameters, objective {space.objective}; "
            f"{remaining} evaluation(s) to run with {method} "
            f"({evaluator.num_workers} worker(s)), {done} already in {out / RESULTS}",
            flush=True,
        )
        # strict cap on the jobs in DeepHyper's storage, which a checkpoint restart refills with
        # job ids 0..max(job_id) of results.csv (ids of trials killed unfinished included)
        search.search(evaluator, max_evals=max_evals + _max_job_id(out) + 1 - done, max_evals_strict=True)
    total = count_results(out)
    best = best_row(out)
    tail = f"; best objective {best['objective']} (trial {best['job_id']})" if best else "; no successful trial"
    print(f"hpo run: {total} evaluations in {out / RESULTS}{tail}; see `connectome hpo report {out}`")
    return 0


def _max_job_id(out: Path) -> int:
    rows = read_results(out) if (out / RESULTS).is_file() else []
    return max((int(r["job_id"]) for r in rows), default=-1)


def read_results(out: Path) -> list[dict]:
    path = Path(out) / RESULTS
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def as_number(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v and abs(v) != float("inf") else None


def best_row(out: Path):
    rows = (
        [r for r in read_results(out) if as_number(r.get("objective")) is not None]
        if (Path(out) / RESULTS).is_file()
        else []
    )
    return max(rows, key=lambda r: (as_number(r["objective"]), -int(r["job_id"]))) if rows else None
