"""Pipelines: stages in order with their configs, run by ``connectome run PIPELINE.yaml``.

A pipeline is a YAML file (see ``pipelines/``)::

    name: demo
    description: one line
    vars:                              # optional; used as {name} in option values
      data: "{workspace}/synth"
    stages:
      - stage: synth                   # a name from STAGES below
        options: {out: "{data}", preset: small, seed: 1}
      - stage: stitch
        id: stitch                     # optional, default = stage; unique; used by --from/--until
        options: {tiles: "{data}/tiles/manifest.csv"}
        config: {frame_shape_yx: [256, 256]}   # the stage's typed config (or a YAML file path)
        executor: local                # blockwise stages: serial | local | dask | mpi
        workers: 2
      - stage: train-vessel
        ranks: 2                       # run under `mpiexec -n 2` (model stages)
        pbs: {nodes: 1, walltime: "00:30:00"}   # per-stage job resources for `connectome pbs`

Values may use ``{workspace}`` (absolute), ``{pipeline_dir}`` and the pipeline's ``vars``.
Validation happens before anything runs: an unknown stage, field, option or config key is
exit 2 with one line naming the pipeline file, the stage and the key.

Running (:func:`run_pipeline`): each selected stage runs through the same code as its own
command (``connectome.cli.main`` with the stage's argv and ``--config WS/pipeline/configs/ID.yaml``),
so a pipeline run and the commands typed by hand give the same outputs. A finished stage leaves
``WS/pipeline/done/ID.json`` with a fingerprint of its options and config chained with the
stages before it; a rerun skips stages whose marker matches, and a killed stage resumes from
its own block done-markers. ``WS/run.json`` records, per stage, status, wall time, block counts
(from ``WS/blockwise/*/runs.jsonl``), the command and package versions.

:data:`STAGES` is built from the command table (:mod:`connectome.commands.table`): a command with
a pipeline ``kind`` is a stage, its options marked ``pipeline=KIND`` are the stage's options.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from connectome.atomic import atomic_write_text
from connectome.commands.spec import Command
from connectome.commands.table import ENTRIES
from connectome.errors import UserInputError
from connectome.inputs import finite_float
from connectome.mpi import mpi_rank, mpiexec_path

# ---------------------------------------------------------------------------------------------
# the stage registry


@dataclass(frozen=True)
class Option:
    """One stage option as written in a pipeline (``options: {NAME: value}``)."""

    kind: str = "str"  # str | path | int | float | bool | zyx | yx | range | list
    required: bool = False
    positional: bool = False  # passed as a positional argument (before the flags)


@dataclass(frozen=True)
class StageDef:
    name: str
    command: tuple[str, ...]  # CLI words after `connectome`
    kind: str  # blockwise | model | single (how jobs launch it)
    options: Mapping[str, Option] = field(default_factory=dict)
    config: Optional[Callable[[], type]] = None  # the stage's config dataclass (imported lazily)
    workspace: bool = True  # takes --workspace WS
    executor: bool = False  # takes --executor/--workers/--scheduler-file
    progress: bool = True  # takes --progress/--no-progress
    mpi: bool = False  # may run as several ranks (mpiexec)


def _stage_def(c) -> StageDef:
    """A pipeline stage from its command-table entry (:mod:`connectome.commands.table`)."""
    options = {
        a.name: Option(a.pipeline, required=a.required, positional=a.positional)
        for a in c.args
        if a.pipeline is not None
    }
    return StageDef(
        c.name,
        c.words,
        c.kind,
        options,
        config=c.load_config_class if c.config else None,
        workspace=c.takes_workspace,
        executor=c.takes_executor,
        progress=c.takes_progress,
        mpi=c.mpi,
    )


#: every pipeline stage: the commands of the command table that have a pipeline ``kind``
STAGES: dict[str, StageDef] = {c.name: _stage_def(c) for c in ENTRIES if isinstance(c, Command) and c.is_stage}

STAGE_KEYS = ("stage", "id", "options", "config", "executor", "workers", "ranks", "pbs")
PBS_KEYS = ("nodes", "ppn", "depth", "walltime", "queue")
TOP_KEYS = ("name", "description", "vars", "stages")
EXECUTORS = ("serial", "local", "dask", "mpi")


def available_commands() -> set[tuple[str, ...]]:
    """Command word tuples the CLI of this installation has (``("train", "vessel")`` etc.)."""
    return {c.words for c in ENTRIES if isinstance(c, Command)}


# ---------------------------------------------------------------------------------------------
# loading and validation


@dataclass
class PlannedStage:
    index: int
    id: str
    stage: StageDef
    options: dict[str, Any]  # resolved values
    config: Optional[dict]  # validated config as a JSON-able dict (None: stage defaults)
    config_obj: Any
    executor: Optional[str]
    workers: Optional[int]
    ranks: int
    pbs: dict[str, Any]
    fingerprint: str = ""

    def argv(
        self,
        workspace: Path,
        config_path: Optional[Path] = None,
        executor: Optional[str] = None,
        workers: Optional[int] = None,
        scheduler_file: Optional[str] = None,
        progress: Optional[bool] = None,
    ) -> list[str]:
        """The stage's own command line (after ``connectome``)."""
        s = self.stage
        argv = list(s.command)
        for name, opt in s.options.items():
            if opt.positional and name in self.options:
                argv.append(str(self.options[name]))
        if s.workspace:
            argv += ["--workspace", str(workspace)]
        for name, opt in s.options.items():
            if opt.positional or name not in self.options:
                continue
            value = self.options[name]
            if opt.kind == "bool":
                if value:
                    argv.append(f"--{name}")
            elif isinstance(value, list):  # repeatable option
                for v in value:
                    argv += [f"--{name}", str(v)]
            else:
                argv += [f"--{name}", str(value)]
        if config_path is not None:
            argv += ["--config", str(config_path)]
        if s.executor:
            ex = executor or self.executor
            wk = workers if workers is not None else self.workers
            if ex:
                argv += ["--executor", ex]
            if wk is not None:
                argv += ["--workers", str(wk)]
            if scheduler_file and (ex == "dask"):
                argv += ["--scheduler-file", str(scheduler_file)]
        if s.progress and progress is not None:
            argv.append("--progress" if progress else "--no-progress")
        return argv


@dataclass
class Pipeline:
    path: Path
    name: str
    description: str
    workspace: Path
    stages: list[PlannedStage]
    sha256: str

    def ids(self) -> list[str]:
        return [s.id for s in self.stages]

    def select(
        self, from_: Optional[str] = None, until: Optional[str] = None, only: Optional[str] = None
    ) -> list[PlannedStage]:
        ids = self.ids()
        for opt, value in (("--from", from_), ("--until", until), ("--only", only)):
            if value is not None and value not in ids:
                raise UserInputError(f"{opt}: no stage {value!r} in {self.path} (stages: {', '.join(ids)})")
        if only is not None:
            if from_ is not None or until is not None:
                raise UserInputError("--only: cannot be combined with --from/--until")
            return [s for s in self.stages if s.id == only]
        lo = ids.index(from_) if from_ else 0
        hi = ids.index(until) if until else len(ids) - 1
        if lo > hi:
            raise UserInputError(f"--from {from_} comes after --until {until} in {self.path}")
        return self.stages[lo : hi + 1]


_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _subst(value: str, variables: Mapping[str, str], where: str) -> str:
    def sub(m):
        if m.group(1) not in variables:
            raise UserInputError(
                f"{where}: unknown variable {{{m.group(1)}}} (known: {', '.join('{' + k + '}' for k in variables)})"
            )
        return variables[m.group(1)]

    return _VAR.sub(sub, value)


def _number_list(value: Any, n: Optional[int], kind: type, where: str) -> str:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        nums = [kind(p) if not isinstance(p, bool) else None for p in parts]
        if any(v is None for v in nums) or (n is not None and len(nums) != n):
            raise ValueError
        if any(not math.isfinite(v) for v in nums):
            raise UserInputError(f"{where}: expected finite numbers, got {value!r}")
    except (TypeError, ValueError, OverflowError):
        what = f"{n} numbers" if n else "numbers"
        raise UserInputError(f"{where}: expected {what} (a list or 'A,B,...'), got {value!r}") from None
    return ",".join(str(v) for v in nums)


def _convert_option(opt: Option, value: Any, variables: Mapping[str, str], where: str) -> Any:
    if opt.kind in ("str", "path"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserInputError(f"{where}: expected a string, got {value!r}")
        return _subst(str(value), variables, where)
    if opt.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserInputError(f"{where}: expected an integer, got {value!r}")
        return value
    if opt.kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserInputError(f"{where}: expected a number, got {value!r}")
        return finite_float(value, where)
    if opt.kind == "bool":
        if not isinstance(value, bool):
            raise UserInputError(f"{where}: expected true or false, got {value!r}")
        return value
    if opt.kind == "zyx":
        return _zyx(value, where)
    if opt.kind == "yx":
        return _number_list(value, 2, int, where)
    if opt.kind == "range":
        return _number_list(value, 2, float, where)
    if opt.kind == "list":
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
            raise UserInputError(f"{where}: expected a string or a list of strings, got {value!r}")
        return [_subst(str(v), variables, where) for v in items]
    raise AssertionError(opt.kind)


def _zyx(value: Any, where: str) -> str:
    """Z,Y,X as the CLI writes it (ints stay ints: block shapes; floats for nm)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or len(items) != 3:
        raise UserInputError(f"{where}: expected 3 numbers z,y,x (a list or 'Z,Y,X'), got {value!r}")
    out = []
    for v in items:
        if isinstance(v, bool):
            raise UserInputError(f"{where}: expected 3 numbers z,y,x, got {value!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise UserInputError(f"{where}: expected 3 numbers z,y,x, got {value!r}") from None
        if not math.isfinite(f):
            raise UserInputError(f"{where}: expected 3 finite numbers z,y,x, got {value!r}")
        out.append(str(int(f)) if f == int(f) else str(f))
    return ",".join(out)


def _read_yaml(path: Path) -> Any:
    from connectome.inputs import load_yaml

    if not path.is_file():
        raise UserInputError(f"{path}: pipeline file not found")
    return load_yaml(path, "pipeline")


def load_pipeline(path: str | os.PathLike, workspace: str | os.PathLike) -> Pipeline:
    """Read and validate a pipeline: every stage, option and config key is checked here."""
    from connectome.config import config_from_dict, config_to_dict, load_config

    p = Path(path)
    data = _read_yaml(p)
    if not isinstance(data, dict):
        raise UserInputError(f"{p}: expected a mapping with 'stages' at the top level, got {type(data).__name__}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise UserInputError(f"{p}: unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise UserInputError(f"{p}: 'stages' must be a non-empty list of stages")
    ws = Path(workspace).absolute()
    variables = {"workspace": str(ws), "pipeline_dir": str(p.absolute().parent)}
    user_vars = data.get("vars") or {}
    if not isinstance(user_vars, dict):
        raise UserInputError(f"{p}: 'vars' must be a mapping of names to strings")
    for k, v in user_vars.items():
        if not isinstance(k, str) or not _VAR.fullmatch("{" + k + "}") or k in variables:
            raise UserInputError(f"{p}: vars: bad or reserved variable name {k!r}")
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise UserInputError(f"{p}: vars.{k}: expected a string, got {v!r}")
        variables[k] = _subst(str(v), variables, f"{p}: vars.{k}")

    commands = available_commands()
    planned: list[PlannedStage] = []
    seen: set[str] = set()
    chain = hashlib.sha256()
    for i, entry in enumerate(stages):
        where = f"{p}: stages[{i}]"
        if not isinstance(entry, dict):
            raise UserInputError(f"{where}: expected a mapping with 'stage', got {entry!r}")
        unknown = [k for k in entry if k not in STAGE_KEYS]
        if unknown:
            raise UserInputError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(STAGE_KEYS)})")
        name = entry.get("stage")
        if name not in STAGES:
            raise UserInputError(f"{where}: unknown stage {name!r} (known: {', '.join(STAGES)})")
        sdef = STAGES[name]
        if sdef.command not in commands:
            raise UserInputError(
                f"{where}: stage {name!r} needs `connectome {' '.join(sdef.command)}`, "
                "which this installation does not have"
            )
        sid = entry.get("id", name)
        if not isinstance(sid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", sid):
            raise UserInputError(f"{where}: id must be letters, digits and _.- (got {sid!r})")
        if sid in seen:
            raise UserInputError(f"{where}: duplicate stage id {sid!r} (give one of them an 'id')")
        seen.add(sid)
        where = f"{p}: stage {sid}"

        raw_opts = entry.get("options") or {}
        if not isinstance(raw_opts, dict):
            raise UserInputError(f"{where}: 'options' must be a mapping")
        opts: dict[str, Any] = {}
        for key, value in raw_opts.items():
            if key not in sdef.options:
                known = ", ".join(sdef.options) or "none"
                raise UserInputError(f"{where}: unknown option {key!r} for stage {name} (known: {known})")
            opts[key] = _convert_option(sdef.options[key], value, variables, f"{where}: options.{key}")
        missing = [k for k, o in sdef.options.items() if o.required and k not in opts]
        if missing:
            raise UserInputError(f"{where}: option {missing[0]!r} is required for stage {name}")

        cfg_raw = entry.get("config")
        cfg_obj: Any = None
        cfg_dict: Optional[dict] = None
        if cfg_raw is not None:
            if sdef.config is None:
                raise UserInputError(f"{where}: stage {name} has no config (remove 'config')")
            cls = sdef.config()
            if isinstance(cfg_raw, str):
                cfg_file = Path(_subst(cfg_raw, variables, f"{where}: config"))
                if not cfg_file.is_absolute():
                    cfg_file = p.absolute().parent / cfg_file
                cfg_obj = load_config(cls, cfg_file)
            elif isinstance(cfg_raw, dict):
                cfg_obj = config_from_dict(cls, cfg_raw, source=f"{where}: config")
            else:
                raise UserInputError(f"{where}: 'config' must be a mapping of {cls.__name__} fields or a YAML path")
            cfg_dict = config_to_dict(cfg_obj)

        executor = entry.get("executor")
        workers = entry.get("workers")
        if (executor is not None or workers is not None) and not sdef.executor:
            raise UserInputError(f"{where}: stage {name} takes no executor/workers (it is not blockwise)")
        if executor is not None and executor not in EXECUTORS:
            raise UserInputError(f"{where}: executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise UserInputError(f"{where}: workers: expected a positive integer, got {workers!r}")
        ranks = entry.get("ranks", 1)
        if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
            raise UserInputError(f"{where}: ranks: expected a positive integer, got {ranks!r}")
        if ranks > 1 and not sdef.mpi:
            raise UserInputError(f"{where}: ranks: stage {name} does not run under mpiexec")
        if ranks > 1 and sdef.executor and (executor or "mpi") != "mpi":
            raise UserInputError(f"{where}: ranks > 1 needs executor: mpi for stage {name}")
        pbs = entry.get("pbs") or {}
        if not isinstance(pbs, dict):
            raise UserInputError(f"{where}: 'pbs' must be a mapping ({', '.join(PBS_KEYS)})")
        bad = [k for k in pbs if k not in PBS_KEYS]
        if bad:
            raise UserInputError(f"{where}: pbs: unknown key {bad[0]!r} (known: {', '.join(PBS_KEYS)})")

        st = PlannedStage(i, sid, sdef, opts, cfg_dict, cfg_obj, executor, workers, ranks, dict(pbs))
        chain.update(
            json.dumps({"stage": name, "id": sid, "options": opts, "config": cfg_dict}, sort_keys=True).encode()
        )
        st.fingerprint = chain.hexdigest()[:20]
        planned.append(st)
    name = data.get("name", p.stem)
    return Pipeline(
        p.absolute(),
        str(name),
        str(data.get("description", "")),
        ws,
        planned,
        hashlib.sha256(p.read_bytes()).hexdigest(),
    )


# ---------------------------------------------------------------------------------------------
# running


def versions() -> dict[str, str]:
    """Versions of this package and the libraries stages depend on (without importing them)."""
    from importlib import metadata

    from connectome import __version__

    out = {"connectome": __version__, "python": sys.version.split()[0]}
    for dist in (
        "numpy",
        "zarr",
        "dask",
        "distributed",
        "scikit-image",
        "tensorflow-cpu",
        "tensorflow",
        "horovod",
        "mpi4py",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _runs_snapshot(ws: Path) -> dict[str, int]:
    out = {}
    for f in (ws / "blockwise").glob("*/runs.jsonl"):
        with contextlib.suppress(OSError):
            out[f.parent.name] = len(f.read_text().splitlines())
    return out


def _new_block_runs(ws: Path, before: Mapping[str, int]) -> dict[str, dict]:
    """Block counts of the blockwise tasks run since ``before`` (summed per task)."""
    out: dict[str, dict] = {}
    for f in sorted((ws / "blockwise").glob("*/runs.jsonl")):
        try:
            lines = f.read_text().splitlines()[before.get(f.parent.name, 0) :]
        except OSError:
            continue
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            agg = out.setdefault(f.parent.name, {"total": 0, "already_done": 0, "processed": 0, "failed": 0})
            agg["total"] = rec.get("total", agg["total"])
            agg["already_done"] = rec.get("already_done", 0) if agg["processed"] == 0 else agg["already_done"]
            agg["processed"] += rec.get("processed", 0)
            agg["failed"] += rec.get("failed", 0)
    return out


class RunRecord:
    """``WS/run.json``: per-stage status, timings, block counts, commands and versions."""

    def __init__(self, ws: Path, pipeline: Pipeline):
        self.path = ws / "run.json"
        self.pipeline = pipeline

    def load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass
        return {}

    def update(self, stage_id: Optional[str] = None, stage: Optional[dict] = None, run: Optional[dict] = None):
        data = self.load()
        data["format"] = "connectome-run/1"
        data["workspace"] = str(self.pipeline.workspace)
        data["pipeline"] = {
            "name": self.pipeline.name,
            "path": str(self.pipeline.path),
            "sha256": self.pipeline.sha256,
            "stages": self.pipeline.ids(),
        }
        stages = data.setdefault("stages", {})
        if stage_id is not None and stage is not None:
            stages[stage_id] = {**stages.get(stage_id, {}), **stage}
        if run is not None:
            runs = data.setdefault("runs", [])
            if runs and runs[-1].get("run_id") == run.get("run_id"):
                runs[-1] = run
            else:
                runs.append(run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _done_marker(ws: Path, st: PlannedStage) -> Path:
    return ws / "pipeline" / "done" / f"{st.id}.json"


def is_done(ws: Path, st: PlannedStage) -> bool:
    m = _done_marker(ws, st)
    try:
        return json.loads(m.read_text()).get("fingerprint") == st.fingerprint
    except (OSError, ValueError):
        return False


def _write_config(ws: Path, st: PlannedStage) -> Optional[Path]:
    if st.config is None:
        return None
    import yaml

    path = ws / "pipeline" / "configs" / f"{st.id}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(st.config, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def _stage_row(sid: str, rec: Mapping[str, Any]) -> str:
    blocks = rec.get("blocks") or {}
    if blocks:
        processed = sum(b["processed"] for b in blocks.values())
        total = sum(b["total"] for b in blocks.values())
        btxt = f"{processed} run / {total}"
    else:
        btxt = "-"
    secs = rec.get("seconds")
    return f"  {sid:18s} {rec.get('status', '?'):8s} {'' if secs is None else f'{secs:8.1f}':>8s}  {btxt}"


def run_pipeline(
    path,
    workspace,
    from_: Optional[str] = None,
    until: Optional[str] = None,
    only: Optional[str] = None,
    executor: Optional[str] = None,
    workers: Optional[int] = None,
    scheduler_file: Optional[str] = None,
    progress: Optional[bool] = None,
    out=None,
) -> int:
    """Run the selected stages of a pipeline; returns the exit code (that of the failing stage)."""
    from connectome import cli

    out = out or sys.stdout
    pipe = load_pipeline(path, workspace)
    selected = pipe.select(from_, until, only)
    if executor is not None and executor not in EXECUTORS:
        raise UserInputError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "dask" and not scheduler_file:
        raise UserInputError("--executor dask: needs --scheduler-file (a running dask scheduler)")
    ws = pipe.workspace
    rank = mpi_rank()
    driver = rank in (None, 0)
    record = RunRecord(ws, pipe)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    t_run = time.time()
    summary: dict[str, dict] = {}

    def say(msg):
        if driver:
            print(msg, file=out, flush=True)

    if driver:
        ws.mkdir(parents=True, exist_ok=True)
        say(f"pipeline {pipe.name} ({pipe.path}): {len(selected)} of {len(pipe.stages)} stages on workspace {ws}")
        record.update(
            run={
                "run_id": run_id,
                "started": t_run,
                "status": "running",
                "selected": [s.id for s in selected],
                "argv": sys.argv[1:],
            }
        )
    rc = 0
    for n, st in enumerate(selected, 1):
        if is_done(ws, st):
            say(f"[{n}/{len(selected)}] {st.id}: done before, skipped")
            summary[st.id] = {"status": "skipped"}
            continue
        config_path = _write_config(ws, st)
        argv = st.argv(
            ws, config_path, executor=executor, workers=workers, scheduler_file=scheduler_file, progress=progress
        )
        spawn = st.ranks > 1 and rank is None
        command = (["mpiexec", "-n", str(st.ranks)] if spawn else []) + ["connectome"] + argv
        say(f"[{n}/{len(selected)}] {st.id}: {' '.join(shlex.quote(a) for a in command)}")
        before = _runs_snapshot(ws)
        t0 = time.time()
        if driver:
            record.update(
                st.id,
                {
                    "stage": st.stage.name,
                    "status": "running",
                    "started": t0,
                    "command": " ".join(shlex.quote(a) for a in command),
                    "run_id": run_id,
                    "mpi_ranks": st.ranks if spawn else int(os.environ.get("PMI_SIZE", "1") or 1),
                },
            )
        try:
            if spawn:
                proc = subprocess.run([mpiexec_path(), "-n", str(st.ranks), sys.executable, "-m", "connectome", *argv])
                code = proc.returncode
                code = 130 if code < 0 else code
            else:
                code = cli.main(argv)
        except KeyboardInterrupt:
            code = 130
        seconds = round(time.time() - t0, 3)
        blocks = _new_block_runs(ws, before)
        status = "done" if code == 0 else "failed"
        rec = {
            "status": status,
            "exit_code": code,
            "seconds": seconds,
            "finished": time.time(),
            "blocks": blocks,
            "versions": versions(),
            "fingerprint": st.fingerprint,
        }
        summary[st.id] = rec
        if driver:
            record.update(st.id, rec)
            if code == 0:
                m = _done_marker(ws, st)
                m.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(
                    m,
                    json.dumps(
                        {
                            "fingerprint": st.fingerprint,
                            "stage": st.stage.name,
                            "seconds": seconds,
                            "finished": time.time(),
                        }
                    ),
                )
        if code != 0:
            say(f"[{n}/{len(selected)}] {st.id}: FAILED with exit code {code}; later stages not run")
            rc = code
            break
        say(f"[{n}/{len(selected)}] {st.id}: done in {seconds:.1f} s")
    total = round(time.time() - t_run, 3)
    if driver:
        record.update(
            run={
                "run_id": run_id,
                "started": t_run,
                "finished": time.time(),
                "seconds": total,
                "status": "done" if rc == 0 else "failed",
                "exit_code": rc,
                "selected": [s.id for s in selected],
                "argv": sys.argv[1:],
            }
        )
        say("")
        say(f"pipeline {pipe.name}: {'finished' if rc == 0 else 'FAILED'} in {total:.1f} s")
        say(f"  {'stage':18s} {'status':8s} {'seconds':>8s}  blocks")
        for st in selected:
            say(_stage_row(st.id, summary.get(st.id, {"status": "not run"})))
        say(f"record: {record.path}")
    return rc


__all__ = [
    "STAGES",
    "StageDef",
    "Option",
    "Pipeline",
    "PlannedStage",
    "load_pipeline",
    "run_pipeline",
    "is_done",
    "mpi_rank",
    "versions",
]
