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
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from connectome.errors import UserInputError

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "pbs"

MODEL_STAGES = ("train-ffn", "train-vessel", "segment")
BLOCKWISE_STAGES = ("stitch", "align", "mask-vessels")
SINGLE_STAGES = ("graph",)
STAGES = MODEL_STAGES + BLOCKWISE_STAGES + SINGLE_STAGES


@dataclass(frozen=True)
class SystemInfo:
    name: str
    template: str
    default_ppn: int
    cores_per_node: int          # usable physical cores, for the default --depth
    default_filesystems: str
    default_setup: str
    pbspro: bool                 # PBS Pro + mpiexec (else Cobalt + aprun)


SYSTEMS = {
    "polaris": SystemInfo("polaris", "alcf_pbspro.pbs.tmpl", 4, 32, "home:eagle",
                          "module use /soft/modulefiles\nmodule load conda\nconda activate base", True),
    "aurora": SystemInfo("aurora", "alcf_pbspro.pbs.tmpl", 12, 102, "home:flare",
                         "module load frameworks", True),
    "theta": SystemInfo("theta", "theta_cobalt.cobalt.tmpl", 4, 64, "home:grand",
                        "module load conda/2021-09-22\nconda activate base", False),
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
    if spec.stage not in STAGES:
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
    if not spec.project:
        raise UserInputError("--project: required (the ALCF allocation charged, #PBS -A)")
    for opt, value in (("--project", spec.project), ("--queue", spec.queue), ("--filesystems", spec.filesystems)):
        if value is not None and not _SAFE.match(value):
            raise UserInputError(f"{opt}: expected letters, digits and _.,:+- only, got {value!r}")
    if spec.filesystems is not None and not all(spec.filesystems.replace(",", ":").split(":")):
        raise UserInputError(f"--filesystems: expected names separated by ':', e.g. home:eagle, got {spec.filesystems!r}")
    if spec.stage_args is not None:
        try:
            shlex.split(spec.stage_args)
        except ValueError as exc:
            raise UserInputError(f"--stage-args: cannot parse {spec.stage_args!r} ({exc})") from None
    if spec.stage.startswith("train-"):
        if not spec.stage_args:
            raise UserInputError(f"--stage-args: required for {spec.stage} "
                                 "(e.g. '--data DIR --out MODEL_DIR', passed to `connectome train`)")
    elif not spec.workspace:
        raise UserInputError(f"--workspace: required for stage {spec.stage}")
    return spec


def _stage_command(spec: JobSpec, executor_args: str) -> str:
    extra = " ".join(shlex.quote(a) for a in shlex.split(spec.stage_args or ""))
    if spec.stage.startswith("train-"):
        cmd = f"connectome train {spec.stage.split('-', 1)[1]}"
    else:
        cmd = f'connectome {spec.stage} --workspace "$WS"'
    return " ".join(p for p in (cmd, executor_args, extra) if p)


def _launch_pbspro(spec: JobSpec, ppn: int, depth: int) -> str:
    mpi = f"mpiexec -n $((NNODES * {ppn})) --ppn {ppn} --depth {depth} --cpu-bind depth"
    if spec.stage in MODEL_STAGES:
        executor = "--executor mpi" if spec.stage == "segment" else ""
        return "\n".join([
            f"# one rank per GPU{' tile' if spec.system == 'aurora' else ''}; "
            + ("Horovod training" if spec.stage.startswith("train-") else "the mpi executor"),
            f'{mpi} \\\n    "$AFFINITY" {_stage_command(spec, executor)}',
            "RC=$?",
            'rm -f "$AFFINITY"',
            'echo "connectome ' + spec.stage + ': exit code $RC"',
            "exit $RC",
        ])
    if spec.stage in SINGLE_STAGES:
        return "\n".join([
            "# a single process (the stage is not blockwise)",
            f"mpiexec -n 1 --ppn 1 --depth {depth} --cpu-bind depth {_stage_command(spec, '')}",
            "RC=$?",
            'rm -f "$AFFINITY"',
            'echo "connectome ' + spec.stage + ': exit code $RC"',
            "exit $RC",
        ])
    # blockwise: dask scheduler on the first node, workers on the others
    return "\n".join([
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
    ])


def _launch_cobalt(spec: JobSpec, ppn: int, depth: int) -> str:
    aprun = f"aprun -n $((NNODES * {ppn})) -N {ppn} -d {depth} -j 1 -cc depth"
    if spec.stage in MODEL_STAGES:
        executor = "--executor mpi" if spec.stage == "segment" else ""
        body = [f"{aprun} {_stage_command(spec, executor)}"]
    elif spec.stage in SINGLE_STAGES:
        body = [f"aprun -n 1 -N 1 -d {depth} -j 1 -cc depth {_stage_command(spec, '')}"]
    else:
        return "\n".join([
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
        ])
    return "\n".join(body + ["RC=$?", 'echo "connectome ' + spec.stage + ': exit code $RC"', "exit $RC"])


def render(spec: JobSpec) -> str:
    """The job script for ``spec`` (validated first)."""
    validate(spec)
    info = SYSTEMS[spec.system]
    ppn = spec.ppn or info.default_ppn
    depth = spec.depth or max(1, info.cores_per_node // ppn)
    filesystems = spec.filesystems or info.default_filesystems
    seconds = _walltime_seconds(spec.walltime)
    values = {
        "job_name": f"connectome-{spec.stage}",
        "stage": spec.stage,
        "system": spec.system,
        "system_title": spec.system.capitalize(),
        "nodes": str(spec.nodes),
        "walltime": spec.walltime,
        "minutes": str(-(-seconds // 60)),
        "queue": spec.queue,
        "project": spec.project,
        "ppn": str(ppn),
        "depth": str(depth),
        "workspace": shlex.quote(spec.workspace) if spec.workspace else '""',
        "setup": spec.setup if spec.setup is not None else info.default_setup,
        "gpu_pinning": GPU_PINNING.get(spec.system, ""),
    }
    if info.pbspro:
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
