"""Job scripts for ALCF systems: ``connectome pbs render STAGE --system ...``.

One script per stage, rendered from a plain-text template in ``pbs/`` (one per system family:
``alcf_pbspro.pbs.tmpl`` for Polaris and Aurora, ``theta_cobalt.cobalt.tmpl`` for the retired
Theta). Templates use ``{name}`` placeholders (lower-case names only, so shell ``${VAR}`` stays
as it is).

Stage kinds:

* model stages (``train-ffn``, ``train-vessel``, ``segment``): one ``mpiexec`` (``aprun`` on Theta)
  over all ranks, each rank pinned to one GPU (tile) by a small wrapper; training runs under
  Horovod, ``segment`` with ``--executor mpi``;
* blockwise stages (``stitch``, ``align``, ``mask-vessels``): a dask scheduler on the first node
  (scheduler file), dask workers on the other nodes (all nodes when there is only one), then
  ``connectome STAGE --workspace WS --executor dask --scheduler-file FILE`` from the job script;
* ``graph``: one process on the first node (its CLI has no ``--executor``: it is not blockwise).

Pipelines (``connectome pbs render PIPELINE.yaml``, ``connectome pbs submit PIPELINE.yaml``): one
script per pipeline stage, each running ``connectome run PIPELINE --workspace WS --only ID`` under
the launch form of the stage's kind (from :data:`connectome.pipeline.STAGES`), so a job uses the
pipeline's options and config, skips a finished stage and resumes an interrupted one.
``submit`` chains the jobs with ``qsub -W depend=afterok:PREVIOUS`` and records the job ids in
``WS/pbs/jobs.json``.

``--system local`` is this machine's PBS/Torque-compatible ``qsub`` (e.g. Slurm's
``slurm-wlm-torque`` wrapper): ``#PBS -l nodes=N:ppn=P`` and walltime only (no ``-A``, ``-q``,
``filesystems``, ``place`` or ``system=``, which are ALCF resources a local server rejects or maps
to partitions that do not exist), plain ``mpiexec -n`` (no PALS ``--ppn/--depth/--cpu-bind``), no
GPU pinning, node count and job id from ``PBS_NUM_NODES``/``PBS_JOBID`` or Slurm's variables, and
the ``connectome`` of the rendering virtualenv put first on ``PATH``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from connectome.errors import StageFailed, UserInputError

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "pbs"

MODEL_STAGES = ("train-ffn", "train-vessel", "segment", "hpo")
BLOCKWISE_STAGES = ("stitch", "align", "mask-vessels")
SINGLE_STAGES = ("graph",)
STAGES = MODEL_STAGES + BLOCKWISE_STAGES + SINGLE_STAGES


@dataclass(frozen=True)
class SystemInfo:
    name: str
    template: str
    default_ppn: int
    cores_per_node: int  # usable physical cores, for the default --depth
    default_filesystems: str
    default_setup: str
    pbspro: bool  # PBS Pro + mpiexec (else Cobalt + aprun)
    local: bool = False  # this machine's Torque-compatible qsub (no ALCF resources)


SYSTEMS = {
    "polaris": SystemInfo(
        "polaris",
        "alcf_pbspro.pbs.tmpl",
        4,
        32,
        "home:eagle",
        "module use /soft/modulefiles\nmodule load conda\nconda activate base",
        True,
    ),
    "aurora": SystemInfo("aurora", "alcf_pbspro.pbs.tmpl", 12, 102, "home:flare", "module load frameworks", True),
    "theta": SystemInfo(
        "theta",
        "theta_cobalt.cobalt.tmpl",
        4,
        64,
        "home:grand",
        "module load conda/2021-09-22\nconda activate base",
        False,
    ),
    "local": SystemInfo(
        "local",
        "local_pbs.pbs.tmpl",
        os.cpu_count() or 1,
        os.cpu_count() or 1,
        "",
        f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH",
        True,
        local=True,
    ),
}

GPU_PINNING = {
    # Polaris: 4 A100 per node, one per local rank
    "polaris": "export CUDA_VISIBLE_DEVICES=$((LOCAL_RANK % 4))",
    # Aurora: 6 GPUs x 2 tiles per node = 12 tiles, addressed GPU.TILE
    "aurora": "export ZE_AFFINITY_MASK=$(((LOCAL_RANK % 12) / 2)).$((LOCAL_RANK % 2))",
}

_SAFE = re.compile(r"^[A-Za-z0-9_.,:+-]+$")
_WALLTIME = re.compile(r"^(\d{1,3}):([0-5]\d):([0-5]\d)$")
_PLACEHOLDER = re.compile(r"(?<!\$)\{([a-z_]+)\}")


@dataclass
class JobSpec:
    stage: str
    system: str
    nodes: int
    project: str | None
    ppn: int | None = None
    depth: int | None = None
    walltime: str = "01:00:00"
    queue: str = "debug"
    filesystems: str | None = None
    workspace: str | None = None
    stage_args: str | None = None
    setup: str | None = None
    pipeline: str | None = None  # pipeline jobs: `connectome run PIPELINE --only STAGE_ID`
    stage_id: str | None = None
    kind: str | None = None  # model | blockwise | single (pipeline stages: from the registry)


def _kind(spec: JobSpec) -> str:
    if spec.kind:
        return spec.kind
    return "model" if spec.stage in MODEL_STAGES else "single" if spec.stage in SINGLE_STAGES else "blockwise"


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``{name}`` placeholders; an unknown name is a bug in the template."""

    def sub(m):
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{key}}} has no value")
        return str(values[key])

    return _PLACEHOLDER.sub(sub, template)


def _walltime_seconds(walltime: str) -> int:
    m = _WALLTIME.match(walltime or "")
    if not m:
        raise UserInputError(f"--walltime: expected HH:MM:SS, got {walltime!r}")
    h, mi, s = map(int, m.groups())
    total = h * 3600 + mi * 60 + s
    if total <= 0:
        raise UserInputError(f"--walltime: must be longer than zero, got {walltime!r}")
    return total


def validate(spec: JobSpec) -> JobSpec:
    if spec.stage not in STAGES and not spec.pipeline:
        raise UserInputError(f"STAGE: expected one of {', '.join(STAGES)}, got {spec.stage!r}")
    if spec.system not in SYSTEMS:
        raise UserInputError(f"--system: expected one of {', '.join(SYSTEMS)}, got {spec.system!r}")
    if spec.nodes is None or spec.nodes < 1:
        raise UserInputError(f"--nodes: expected a positive number, got {spec.nodes}")
    if spec.ppn is not None and spec.ppn < 1:
        raise UserInputError(f"--ppn: expected a positive number, got {spec.ppn}")
    if spec.depth is not None and spec.depth < 1:
        raise UserInputError(f"--depth: expected a positive number, got {spec.depth}")
    _walltime_seconds(spec.walltime)
    if not spec.project and not SYSTEMS[spec.system].local:
        raise UserInputError("--project: required (the ALCF allocation charged, #PBS -A)")
    for opt, value in (("--project", spec.project), ("--queue", spec.queue), ("--filesystems", spec.filesystems)):
        if value is not None and not _SAFE.match(value):
            raise UserInputError(f"{opt}: expected letters, digits and _.,:+- only, got {value!r}")
    if spec.filesystems is not None and not all(spec.filesystems.replace(",", ":").split(":")):
        raise UserInputError(
            f"--filesystems: expected names separated by ':', e.g. home:eagle, got {spec.filesystems!r}"
        )
    if spec.stage_args is not None:
        try:
            shlex.split(spec.stage_args)
        except ValueError as exc:
            raise UserInputError(f"--stage-args: cannot parse {spec.stage_args!r} ({exc})") from None
    if spec.pipeline:
        if not spec.workspace:
            raise UserInputError("--workspace: required for a pipeline")
    elif spec.stage == "hpo":
        if not spec.stage_args:
            raise UserInputError(
                "--stage-args: required for hpo (e.g. 'SPACE.yaml --max-evals N --out DIR', "
                "passed to `connectome hpo run ... --evaluator mpicomm`)"
            )
    elif spec.stage.startswith("train-"):
        if not spec.stage_args:
            raise UserInputError(
                f"--stage-args: required for {spec.stage} "
                "(e.g. '--data DIR --out MODEL_DIR', passed to `connectome train`)"
            )
    elif not spec.workspace:
        raise UserInputError(f"--workspace: required for stage {spec.stage}")
    return spec


#: model stages' launch arguments (after the stage's own --stage-args: the sweep's space comes first)
_MODEL_ARGS = {"segment": "--executor mpi", "hpo": "--evaluator mpicomm"}


def _stage_command(spec: JobSpec, executor_args: str) -> str:
    extra = " ".join(shlex.quote(a) for a in shlex.split(spec.stage_args or ""))
    if spec.pipeline:
        cmd = f'connectome run {shlex.quote(spec.pipeline)} --workspace "$WS" --only {spec.stage_id or spec.stage}'
    elif spec.stage == "hpo":  # a DeepHyper sweep: rank 0 is the master, the other ranks evaluate
        cmd = "connectome hpo run"
    elif spec.stage.startswith("train-"):
        cmd = f"connectome train {spec.stage.split('-', 1)[1]}"
    else:
        cmd = f'connectome {spec.stage} --workspace "$WS"'
    if spec.stage == "hpo" and not spec.pipeline:
        return " ".join(p for p in (cmd, extra, executor_args) if p)
    return " ".join(p for p in (cmd, executor_args, extra) if p)


def _launch_pbspro(spec: JobSpec, ppn: int, depth: int) -> str:
    mpi = f"mpiexec -n $((NNODES * {ppn})) --ppn {ppn} --depth {depth} --cpu-bind depth"
    if _kind(spec) == "model":
        executor = _MODEL_ARGS.get(spec.stage, "")
        return "\n".join(
            [
                f"# one rank per GPU{' tile' if spec.system == 'aurora' else ''}; "
                + (
                    "Horovod training"
                    if spec.stage.startswith("train-")
                    else "DeepHyper mpicomm (rank 0 is the master)"
                    if spec.stage == "hpo"
                    else "the mpi executor"
                ),
                f'{mpi} \\\n    "$AFFINITY" {_stage_command(spec, executor)}',
                "RC=$?",
                'rm -f "$AFFINITY"',
                'echo "connectome ' + spec.stage + ': exit code $RC"',
                "exit $RC",
            ]
        )
    if _kind(spec) == "single":
        return "\n".join(
            [
                "# a single process (the stage is not blockwise)",
                f"mpiexec -n 1 --ppn 1 --depth {depth} --cpu-bind depth {_stage_command(spec, '')}",
                "RC=$?",
                'rm -f "$AFFINITY"',
                'echo "connectome ' + spec.stage + ': exit code $RC"',
                "exit $RC",
            ]
        )
    # blockwise: dask scheduler on the first node, workers on the others
    return "\n".join(
        [
            "# dask: scheduler on the first node (scheduler file), workers on the other nodes",
            "SCHEDULER_FILE=${PBS_O_WORKDIR}/.connectome-dask.${PBS_JOBID:-$$}.json",
            'rm -f "$SCHEDULER_FILE"',
            "HEAD_NODE=$(head -n 1 $PBS_NODEFILE)",
            "if [ \"$NNODES\" -gt 1 ]; then",
            "    WORKER_HOSTS=$(tail -n +2 $PBS_NODEFILE | paste -sd, -)",
            "    NWORKERS=$(((NNODES - 1) * PPN))",
            "else",
            "    WORKER_HOSTS=$HEAD_NODE",
            "    NWORKERS=$PPN",
            "fi",
            'mpiexec -n 1 --ppn 1 --hosts "$HEAD_NODE" dask scheduler --scheduler-file "$SCHEDULER_FILE" &',
            "SCHEDULER_PID=$!",
            "for _ in $(seq 120); do [ -s \"$SCHEDULER_FILE\" ] && break; sleep 1; done",
            'if [ ! -s "$SCHEDULER_FILE" ]; then echo "dask scheduler did not start" >&2; kill $SCHEDULER_PID; exit 1; fi',
            f'mpiexec -n $NWORKERS --ppn {ppn} --hosts "$WORKER_HOSTS" --depth {depth} --cpu-bind depth \\',
            f'    "$AFFINITY" dask worker --scheduler-file "$SCHEDULER_FILE" --nworkers 1 --nthreads {depth} &',
            "WORKERS_PID=$!",
            _stage_command(spec, '--executor dask --scheduler-file "$SCHEDULER_FILE"'),
            "RC=$?",
            "kill $WORKERS_PID $SCHEDULER_PID 2>/dev/null",
            "wait",
            'rm -f "$AFFINITY" "$SCHEDULER_FILE"',
            'echo "connectome ' + spec.stage + ': exit code $RC"',
            "exit $RC",
        ]
    )


def _launch_cobalt(spec: JobSpec, ppn: int, depth: int) -> str:
    aprun = f"aprun -n $((NNODES * {ppn})) -N {ppn} -d {depth} -j 1 -cc depth"
    if _kind(spec) == "model":
        executor = _MODEL_ARGS.get(spec.stage, "")
        body = [f"{aprun} {_stage_command(spec, executor)}"]
    elif _kind(spec) == "single":
        body = [f"aprun -n 1 -N 1 -d {depth} -j 1 -cc depth {_stage_command(spec, '')}"]
    else:
        return "\n".join(
            [
                "# dask: scheduler on this (MOM) node, workers on the compute nodes via aprun",
                "SCHEDULER_FILE=$(pwd)/.connectome-dask.${COBALT_JOBID:-$$}.json",
                'rm -f "$SCHEDULER_FILE"',
                'dask scheduler --scheduler-file "$SCHEDULER_FILE" &',
                "SCHEDULER_PID=$!",
                "for _ in $(seq 120); do [ -s \"$SCHEDULER_FILE\" ] && break; sleep 1; done",
                'if [ ! -s "$SCHEDULER_FILE" ]; then echo "dask scheduler did not start" >&2; kill $SCHEDULER_PID; exit 1; fi',
                f'{aprun} dask worker --scheduler-file "$SCHEDULER_FILE" --nworkers 1 --nthreads {depth} &',
                "WORKERS_PID=$!",
                _stage_command(spec, '--executor dask --scheduler-file "$SCHEDULER_FILE"'),
                "RC=$?",
                "kill $WORKERS_PID $SCHEDULER_PID 2>/dev/null",
                "wait",
                'rm -f "$SCHEDULER_FILE"',
                'echo "connectome ' + spec.stage + ': exit code $RC"',
                "exit $RC",
            ]
        )
    return "\n".join(body + ["RC=$?", 'echo "connectome ' + spec.stage + ': exit code $RC"', "exit $RC"])


def _launch_local(spec: JobSpec, ppn: int) -> str:
    """This machine: plain mpiexec (MPICH/Open MPI), a dask scheduler + workers on this node."""
    tail = ["RC=$?", 'echo "connectome ' + (spec.stage_id or spec.stage) + ': exit code $RC"', "exit $RC"]
    if _kind(spec) == "model":
        executor = _MODEL_ARGS.get(spec.stage, "")
        return "\n".join(
            [
                f"# {'Horovod training' if spec.stage.startswith('train-') else 'the mpi executor'}, one rank per slot",
                f"mpiexec -n $((NNODES * {ppn})) {_stage_command(spec, executor)}",
            ]
            + tail
        )
    if _kind(spec) == "single":
        return "\n".join(["# a single process (the stage is not blockwise)", _stage_command(spec, "")] + tail)
    return "\n".join(
        [
            "# dask: a scheduler and PPN single-thread workers on this node",
            'SCHEDULER_FILE="$(pwd)/.connectome-dask.${JOBID}.json"',
            'rm -f "$SCHEDULER_FILE"',
            'dask scheduler --scheduler-file "$SCHEDULER_FILE" --host 127.0.0.1 --port 0 --dashboard-address :0 &',
            "SCHEDULER_PID=$!",
            "for _ in $(seq 120); do [ -s \"$SCHEDULER_FILE\" ] && break; sleep 1; done",
            'if [ ! -s "$SCHEDULER_FILE" ]; then echo "dask scheduler did not start" >&2; kill $SCHEDULER_PID; exit 1; fi',
            f'dask worker --scheduler-file "$SCHEDULER_FILE" --nworkers $((NNODES * {ppn})) --nthreads 1 '
            '--host 127.0.0.1 --no-dashboard &',
            "WORKERS_PID=$!",
            _stage_command(spec, '--executor dask --scheduler-file "$SCHEDULER_FILE"'),
            "RC=$?",
            "kill $WORKERS_PID $SCHEDULER_PID 2>/dev/null",
            "wait",
            'rm -f "$SCHEDULER_FILE"',
            'echo "connectome ' + (spec.stage_id or spec.stage) + ': exit code $RC"',
            "exit $RC",
        ]
    )


def render(spec: JobSpec) -> str:
    """The job script for ``spec`` (validated first)."""
    validate(spec)
    info = SYSTEMS[spec.system]
    ppn = spec.ppn or info.default_ppn
    depth = spec.depth or max(1, info.cores_per_node // ppn)
    filesystems = spec.filesystems or info.default_filesystems
    seconds = _walltime_seconds(spec.walltime)
    values = {
        "job_name": f"connectome-{spec.stage_id or spec.stage}",
        "stage": spec.stage,
        "system": spec.system,
        "system_title": spec.system.capitalize(),
        "nodes": str(spec.nodes),
        "walltime": spec.walltime,
        "minutes": str(-(-seconds // 60)),
        "queue": spec.queue,
        "project": spec.project or "",  # None only on local systems, whose template has no {project}
        "ppn": str(ppn),
        "depth": str(depth),
        "workspace": shlex.quote(spec.workspace) if spec.workspace else '""',
        "setup": spec.setup if spec.setup is not None else info.default_setup,
        "gpu_pinning": GPU_PINNING.get(spec.system, ""),
    }
    if info.local:
        values["launch"] = _launch_local(spec, ppn)
    elif info.pbspro:
        values["filesystems"] = filesystems.replace(",", ":")
        values["launch"] = _launch_pbspro(spec, ppn, depth)
    else:
        values["filesystems"] = filesystems.replace(":", ",")
        values["launch"] = _launch_cobalt(spec, ppn, depth)
    template = (TEMPLATE_DIR / info.template).read_text()
    return fill(template, values)


def script_name(spec: JobSpec) -> str:
    return f"{spec.stage}.{spec.system}.pbs"


def write(spec: JobSpec, out_dir: str | os.PathLike) -> Path:
    """Render and write ``OUT_DIR/<stage>.<system>.pbs`` (mode 0755)."""
    text = render(spec)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / script_name(spec)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserInputError(f"--out: cannot write to {out_dir} ({exc.strerror or exc})") from None
    return path


# ---------------------------------------------------------------------------------------------
# pipelines: one job per stage, chained with afterok


def is_pipeline(arg: str) -> bool:
    """STAGE or PIPELINE? A ``.yaml``/``.yml`` name or an existing file is a pipeline."""
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


def pipeline_jobs(base: JobSpec, from_: str | None = None, until: str | None = None) -> list[tuple[str, JobSpec]]:
    """(stage id, job spec) per selected pipeline stage; ``base.stage`` is the pipeline path.

    The stage's ``pbs:`` mapping (nodes, ppn, depth, walltime, queue) overrides the command line."""
    from connectome.pipeline import load_pipeline

    if base.system not in SYSTEMS:
        raise UserInputError(f"--system: expected one of {', '.join(SYSTEMS)}, got {base.system!r}")
    if not base.workspace:
        raise UserInputError("--workspace: required for a pipeline")
    pipe = load_pipeline(base.stage, base.workspace)
    out = []
    for st in pipe.select(from_, until):
        spec = replace(
            base,
            stage=st.stage.name,
            stage_id=st.id,
            kind=st.stage.kind,
            pipeline=str(pipe.path),
            workspace=str(pipe.workspace),
            stage_args=None,
            **st.pbs,
        )
        validate(spec)
        out.append((st.id, spec))
    return out


def pipeline_script_name(index: int, stage_id: str, system: str) -> str:
    return f"{index:02d}-{stage_id}.{system}.pbs"


def _write_script(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def write_pipeline(jobs: list[tuple[str, JobSpec]], out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    texts = [(i, sid, spec, render(spec)) for i, (sid, spec) in enumerate(jobs, 1)]
    paths = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i, sid, spec, text in texts:
            path = out / pipeline_script_name(i, sid, spec.system)
            _write_script(path, text)
            paths.append(path)
    except OSError as exc:
        raise UserInputError(f"--out: cannot write to {out_dir} ({exc.strerror or exc})") from None
    return paths


def print_pipeline(jobs: list[tuple[str, JobSpec]], stream=None) -> None:
    stream = stream or sys.stdout
    for i, (sid, spec) in enumerate(jobs, 1):
        stream.write(f"### {pipeline_script_name(i, sid, spec.system)}\n")
        stream.write(render(spec))
        stream.write("\n")


_JOB_ID = re.compile(r"^[A-Za-z0-9_.\[\]-]+$")


def submit(jobs: list[tuple[str, JobSpec]], after: str | None = None, dry_run: bool = False, stream=None) -> list[dict]:
    """Write the scripts to ``WS/pbs/`` and ``qsub`` them in order, each job ``afterok`` the one
    before (the first one after ``after``, if given); job ids go to ``WS/pbs/jobs.json``."""
    stream = stream or sys.stdout
    if after is not None and not _JOB_ID.match(after):
        raise UserInputError(f"--after: expected a job id, got {after!r}")
    if dry_run:
        print_pipeline(jobs, stream)
        return []
    qsub = shutil.which("qsub")
    if not qsub:
        raise UserInputError(
            "qsub: not found on PATH (`connectome pbs submit` needs a PBS or Torque-compatible "
            "batch system here; use --dry-run to print the scripts, or `pbs render --out DIR`)"
        )
    workspace = jobs[0][1].workspace
    assert workspace is not None, "pipeline jobs always name their workspace (pipeline_jobs)"
    ws = Path(workspace)
    pbs_dir = ws / "pbs"
    paths = write_pipeline(jobs, pbs_dir / "scripts")
    record_path = pbs_dir / "jobs.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {"submissions": []}
    submitted: list[dict] = []
    submission = {
        "submitted": time.time(),
        "pipeline": jobs[0][1].pipeline,
        "system": jobs[0][1].system,
        "qsub": qsub,
        "after": after,
        "jobs": submitted,
    }
    record["submissions"].append(submission)
    prev = after
    try:
        for (sid, _spec), path in zip(jobs, paths):
            cmd = [qsub] + (["-W", f"depend=afterok:{prev}"] if prev else []) + [str(path)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=pbs_dir, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise StageFailed(f"qsub for stage {sid} did not run: {exc}") from None
            lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
            job_id = lines[-1] if lines else ""
            if r.returncode != 0 or not _JOB_ID.match(job_id):
                why = (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}").splitlines()
                raise StageFailed(f"qsub refused the job of stage {sid} ({path}): {' '.join(why)[:300]}")
            submitted.append({"stage": sid, "job_id": job_id, "script": str(path), "depends_on": prev})
            stream.write(f"{sid:18s} {job_id:12s} {path}" + (f"  (afterok:{prev})" if prev else "") + "\n")
            prev = job_id
    finally:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        from connectome.atomic import atomic_write_text

        atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    stream.write(f"{len(submitted)} jobs submitted; job ids in {record_path}\n")
    return submitted
