"""Fault injection (issue 21): every blockwise stage is SIGKILLed at random points over several
runs, rerun plainly (no --restart) to completion, and must then give output byte-identical to
an uninterrupted run of the same stage on the same inputs.

One tiny synthetic dataset feeds a chain (import; stitch -> align -> mask-vessels ->
predict-boundaries -> segment (FFN model, and the default watershed) -> synapses ->
export-precomputed). Before each stage the workspace is snapshotted; the stage's reference run
happens at the same path the killed runs use later (so nothing path-dependent can differ), and
its digest is the reference. A kill:

* copy the stage's input snapshot to the workspace path;
* start the stage with every block slowed (``CONNECTOME_BLOCK_DELAY_S``) and watch one of its
  tasks (spread over the kills): either until a random number of its blocks are done (>= 1,
  short of all), then wait a random part of a block more (so the kill lands inside the delay,
  the block's computation or its writes); or (a multi-task stage's last kill) until the task
  finished, then wait less than a block, so the kill lands in the driver step that follows;
  then SIGKILL the whole process group;
* check where the kill landed and that what it left is recorded as unfinished (the arrays'
  ``connectome_state``, no final tables or manifest);
* rerun, check no finished block was recomputed, the outputs are complete, and every file of
  the workspace except bookkeeping (done-markers, run records, logs, the export's step state,
  temporary files of interrupted writes) is byte-identical to the reference.

Kill points are drawn from ``random.Random`` seeded with :data:`SEED` and the stage name, so a
failure reproduces exactly. The short windows between creating a workspace, store or array
and recording what it is are too short for random kills to hit; the last tests kill a run
right after each of its metadata writes instead.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import kill_mid_run, run_cli, tree_digest

from connectome.blockwise import MarkerStore

SEED = 2101
#: 2 x 2 tiles per section, 10 sections (>= the FFN's field of view in z); section 8 has no tiles
#: and 5 a fold, so align bridges 5 and 6 over earlier sections (align-bridge has work to do)
SYNTH = ("--shape", "10,192,192", "--seed", "5", "--set", "damaged_sections=1", "--set", "missing_sections=1")
FRAME = "192,192"
BLOCK = "5,96,96"  # 2 x 2 x 2 blocks for the model stages and the align render
FFN_MODEL = Path(__file__).resolve().parents[1] / "ffn" / "models" / "boundary16"
#: bookkeeping that legitimately differs between runs (run ids, timings, block counts per run)
BOOKKEEPING = ("blockwise/", "logs/")
EXPORT_STATE = "precomputed/.connectome-export/"


@dataclass(frozen=True)
class Stage:
    """One stage under test: how to run it and what to watch."""

    name: str
    #: CLI arguments; "{ws}" and "{syn}" are filled in
    args: tuple[str, ...]
    #: progress directories (relative to the workspace) of the tasks a kill may land in, in run
    #: order, each with the workspace arrays that task writes
    tasks: tuple[tuple[str, tuple[str, ...]], ...]
    #: files (relative to the workspace) that exist only once the whole stage finished
    final_files: tuple[str, ...] = ()
    #: seconds each block is slowed by in a killed run
    delay_s: float = 0.15
    kills: int = 3
    #: executors the kills choose from; the reference runs on the first
    executors: tuple[tuple[str, ...], ...] = (("--executor", "serial"),)
    #: True: the chain goes on from this stage's output; False: a side branch (inputs restored after)
    chain: bool = True


SERIAL = ("--executor", "serial")
LOCAL2 = ("--executor", "local", "--workers", "2")

STAGES = (
    Stage(
        "import",
        ("import", "{syn}/truth.zarr/raw", "--workspace", "{ws}", "--voxel-size", "40,8,8", "--block-shape", "2,96,96"),
        (("blockwise/import/done", ("raw",)),),
        delay_s=0.1,
        executors=(SERIAL, LOCAL2),
        chain=False,
    ),
    Stage(
        "stitch",
        ("stitch", "--tiles", "{syn}/tiles/manifest.csv", "--workspace", "{ws}", "--frame-shape", FRAME),
        (("blockwise/stitch/done", ()),),
        final_files=("stitch/tiles.csv", "stitch/sections.csv"),
        delay_s=0.1,
        executors=(SERIAL, LOCAL2),
    ),
    Stage(
        "align",
        ("align", "--workspace", "{ws}", "--block-shape", BLOCK),
        (("blockwise/align/done", ()), ("blockwise/align-bridge/done", ()), ("blockwise/align-render/done", ("raw",))),
        final_files=("align/pairs.csv",),
        delay_s=0.1,
        executors=(SERIAL, LOCAL2),
    ),
    Stage(
        "mask-vessels",
        ("mask-vessels", "--workspace", "{ws}", "--block-shape", BLOCK),
        (("blockwise/vessel-prob/done", ("vessel_prob",)), ("blockwise/vessel-mask/done", ("vessel_mask",))),
        kills=2,
    ),
    Stage("predict-boundaries", ("predict-boundaries", "--workspace", "{ws}"), (), kills=0),  # input of segment
    Stage(
        "segment-ffn",
        ("segment", "--workspace", "{ws}", "--block-shape", BLOCK, "--model", str(FFN_MODEL)),
        (("blockwise/segment-subvolumes/done", ()), ("blockwise/segment-write/done", ("segmentation",))),
        kills=2,
        chain=False,
    ),
    Stage(
        "segment-watershed",
        ("segment", "--workspace", "{ws}", "--block-shape", BLOCK),
        (("blockwise/segment-subvolumes/done", ()), ("blockwise/segment-write/done", ("segmentation",))),
        kills=1,
    ),
    Stage(
        "synapses",
        ("synapses", "--workspace", "{ws}", "--block-shape", BLOCK),
        (
            ("blockwise/synapses-predict/done", ("synapse_prob", "synapse_post", "synapse_pre")),
            ("blockwise/synapses-label/done", ("synapse_fragments",)),
            ("blockwise/synapses-join/done", ()),
            ("blockwise/synapses-partners/done", ("synapse_clefts",)),
        ),
        final_files=("synapses.csv",),
        kills=3,
    ),
    Stage(
        "export-precomputed",
        ("export-precomputed", "--workspace", "{ws}"),
        (("precomputed/.connectome-export", ()),),
        final_files=("precomputed/connectome.json",),
        delay_s=0.2,
        executors=((),),
    ),  # not a blockwise-runner stage: no executor options
)
KILLED = [s.name for s in STAGES if s.kills]


def _args(stage: Stage, ws: Path, syn: Path) -> list[str]:
    return [a.replace("{ws}", str(ws)).replace("{syn}", str(syn)) for a in stage.args]


def _is_blockwise(stage: Stage) -> bool:
    return stage.name != "export-precomputed"


def _is_temp(rel: str) -> bool:
    """A temporary file of an atomic write (zarr's ``<key>.<hex>.partial``, connectome.atomic's
    ``.<name>.<hex>.partial``) that a kill cut short: never renamed into place, never read."""
    return rel.endswith(".partial")


def outputs_digest(ws: Path) -> dict[str, str]:
    """sha1 of every file of the workspace but the bookkeeping of runs (and the leftover
    temporary files of writes a kill interrupted, which are not outputs)."""
    if not ws.exists():
        return {}
    return {
        k: v
        for k, v in tree_digest(ws).items()
        if not k.startswith(BOOKKEEPING) and not k.startswith(EXPORT_STATE) and not _is_temp(k)
    }


def _progress(ws: Path, task_dir: str) -> int:
    d = ws / task_dir
    return len([n for n in os.listdir(d) if not n.startswith(".")]) if d.is_dir() else 0


def _array_states(ws: Path) -> dict[str, bool]:
    """array name -> complete, for every array of the workspace (empty if there is none yet)."""
    from connectome.workspace import Workspace

    if not (ws / "volume.zarr" / "zarr.json").is_file():
        return {}
    with warnings.catch_warnings():  # zarr notes a temporary file a kill left beside the arrays
        warnings.filterwarnings("ignore", message=r".*\.partial is not recognized")
        w = Workspace.open(ws, mode="r")
        return {name: w.is_complete(name) for name in w.array_names()}


@dataclass
class Reference:
    pre: Path  # the stage's input (a workspace snapshot, or absent)
    digest: dict  # outputs_digest after an uninterrupted run
    totals: dict  # task dir -> markers after the uninterrupted run
    arrays: dict  # array name -> complete, after the uninterrupted run
    block_s: dict  # task dir -> mean seconds of one block in the uninterrupted run


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Synthesise once, run every stage uninterrupted (serially) and keep, per stage, a
    snapshot of its input and the digest of its output."""
    root = tmp_path_factory.mktemp("fault")
    syn = root / "syn"
    r = run_cli("synth", syn, *SYNTH)
    assert r.returncode == 0, r.stderr
    ws = root / "ws"
    refs: dict[str, Reference] = {}
    for stage in STAGES:
        pre = root / "pre" / stage.name
        if ws.exists():
            shutil.copytree(ws, pre)
        r = run_cli(*_args(stage, ws, syn), *stage.executors[0])
        assert r.returncode == 0, f"{stage.name}: {r.stderr}"
        totals = {t: _progress(ws, t) for t, _ in stage.tasks}
        refs[stage.name] = Reference(
            pre, outputs_digest(ws), totals, _array_states(ws), {t: _block_seconds(ws, t) for t, _ in stage.tasks}
        )
        if not stage.chain:  # a side branch: the next stage starts from this one's input again
            shutil.rmtree(ws)
            if pre.exists():
                shutil.copytree(pre, ws)
    shutil.rmtree(ws)
    return root, syn, refs


def _restore(ref: Reference, ws: Path) -> None:
    if ws.exists():
        shutil.rmtree(ws)
    if ref.pre.exists():
        shutil.copytree(ref.pre, ws)


def _block_seconds(ws: Path, task_dir: str) -> float:
    """Mean seconds of one block of a finished task (from its done-markers; 0 if they hold none)."""
    d = ws / task_dir
    secs = []
    for p in d.iterdir() if d.is_dir() else ():
        try:
            secs.append(float(json.loads(p.read_text())["seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return sum(secs) / len(secs) if secs else 0.0


def _kill_plan(
    rng: random.Random, stage: Stage, ref: Reference, k: int, kill: int, between: bool
) -> tuple[int, float, tuple]:
    """(done-markers of task ``k`` to wait for, extra seconds before the kill, executor options).

    Mid-task: at least one block of the task done and, allowing for the blocks still in
    flight, not all; then a random wait inside the next block's delay or computation (its
    writes included). ``between``: right after the task's last block, then a random wait
    shorter than a block's delay, so the kill lands in the driver step that follows (marking
    arrays complete, the next task's setup: align's composition, segment's reconciliation,
    the synapse ids, ...) or early in the next task."""
    executor = stage.executors[kill % len(stage.executors)]
    task_dir = stage.tasks[k][0]
    total = ref.totals[task_dir]
    if between:
        return total, rng.uniform(0.0, 1.0) * stage.delay_s, executor
    margin = 4 if executor == LOCAL2 else 2  # two workers: more blocks finish between the check and the kill
    at_least = rng.randint(1, max(1, total - margin))
    extra = rng.uniform(0.5 * stage.delay_s, stage.delay_s + ref.block_s.get(task_dir, 0.0))
    return at_least, extra, executor


@pytest.mark.parametrize("name", KILLED)
def test_sigkill_at_random_points_then_rerun_is_byte_identical(chain, name):
    root, syn, refs = chain
    stage = next(s for s in STAGES if s.name == name)
    ref = refs[name]
    ws = root / "ws"
    args = _args(stage, ws, syn)
    assert all(ref.arrays.get(a) is True for _, arrays in stage.tasks for a in arrays), ref.arrays
    assert all(n >= 4 for n in ref.totals.values()), ref.totals  # every task can be killed mid-way
    assert ref.digest, "the reference run wrote nothing"
    rng = random.Random(f"{SEED}/{name}")
    tasks = rng.sample(range(len(stage.tasks)), len(stage.tasks))  # the kills spread over the tasks
    log = []
    for kill in range(stage.kills):
        _restore(ref, ws)
        before = _array_states(ws)
        # a multi-task stage's last kill lands right after one of its tasks (not the last) finished
        between = len(stage.tasks) > 1 and stage.kills > 1 and kill == stage.kills - 1
        k = rng.randrange(len(stage.tasks) - 1) if between else tasks[kill % len(tasks)]
        at_least, extra_s, executor = _kill_plan(rng, stage, ref, k, kill, between)
        task_dir, task_arrays = stage.tasks[k]
        total = ref.totals[task_dir]
        after_task = at_least == total
        t0 = time.perf_counter()
        proc = kill_mid_run([*args, *executor], ws / task_dir, at_least, stage.delay_s, then_kill=False)
        time.sleep(extra_s)
        assert proc.poll() is None, f"{name}: the run ended (exit {proc.returncode}) before the kill"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        t_kill = time.perf_counter() - t0
        time.sleep(0.3 if executor == LOCAL2 else 0.05)  # orphaned pool workers, if any, are gone
        done = _progress(ws, task_dir)
        where = f"{task_dir} {'after its last block' if after_task else f'after >= {at_least} blocks'}"
        log.append(
            f"kill {kill} ({' '.join(executor[1:]) or 'in process'}): {where} +{extra_s:.2f} s: {done}/{total} done"
        )
        if after_task:
            assert done == total, log[-1]
        else:
            assert at_least <= done < total, f"{name}: the kill must land mid-task ({log[-1]})"

        # what the killed run left is recorded as unfinished
        states = _array_states(ws)
        if not after_task:
            for a in task_arrays:
                assert states.get(a) is False, f"{name}: {a} not marked incomplete ({log[-1]}): {states}"
        for _, later in stage.tasks[k + 1 if after_task else k :]:  # nor is anything written after
            for a in later:
                assert states.get(a) is not True, f"{name}: {a} looks complete after the kill ({log[-1]})"
        for a, complete in before.items():  # inputs untouched
            assert states.get(a) == complete, f"{name}: input array {a} changed state ({log[-1]})"
        for f in stage.final_files:
            assert not (ws / f).exists(), f"{name}: {f} written by a killed run ({log[-1]})"
        if stage.name == "export-precomputed":
            unfinished = [s.name for s in (ws / task_dir).iterdir() if not (s / "complete.json").is_file()]
            assert unfinished or done < total, f"export: every step complete after a mid-run kill ({log[-1]})"

        # a plain rerun finishes it: nothing finished is recomputed, the output equals the reference
        t0 = time.perf_counter()
        r = run_cli(*args, *executor)
        assert r.returncode == 0, f"{name} rerun after {log[-1]}: {r.stderr}"
        log[-1] += f" (killed after {t_kill:.1f} s, rerun {time.perf_counter() - t0:.1f} s)"
        if _is_blockwise(stage):
            last = MarkerStore((ws / task_dir).parent).runs()[-1]
            assert (last["already_done"], last["processed"]) == (done, total - done), (log[-1], last)
        states = _array_states(ws)
        assert states == ref.arrays, f"{name}: array states after the rerun differ ({log[-1]})"
        assert all(states.values()), states
        got = outputs_digest(ws)
        diff = sorted(k for k in set(got) | set(ref.digest) if got.get(k) != ref.digest.get(k))
        assert not diff, f"{name}: output differs from the uninterrupted run after {log[-1]}: {diff[:20]}"
        temps = [k for k in tree_digest(ws) if _is_temp(k)]
        if temps:
            log[-1] += f"; {len(temps)} temporary file(s) of interrupted writes left: {temps[:3]}"
    print(f"\n{name}:\n  " + "\n  ".join(log))


# ---------------------------------------------------------------------------------------------
# kills at every metadata write: the short windows between creating a workspace, a store or an
# array and recording what it is (frame, fingerprint, completion state), which random kill
# points almost never hit

#: ``python KILLER ARGS`` runs ``connectome ARGS`` and SIGKILLs itself right after its N-th zarr
#: metadata write (``zarr.json``: a group or array created, attributes updated), N from
#: $FI_KILL_AT_WRITE; with N = 0 it runs to the end and prints the number of such writes.
KILLER = """
import atexit, os, signal, sys
import zarr.storage._local as local

target = int(os.environ.get("FI_KILL_AT_WRITE", "0"))
count = [0]
_put = local._put

def put(path, value, exclusive=False):
    n = _put(path, value, exclusive=exclusive)
    if path.name == "zarr.json":
        count[0] += 1
        if count[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)
    return n

local._put = put
if not target:
    atexit.register(lambda: print(f"FI_WRITES={count[0]}", file=sys.stderr))
from connectome.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_killer(tmp_path: Path, args, n: int) -> subprocess.CompletedProcess:
    script = tmp_path / "killer.py"
    if not script.exists():
        script.write_text(KILLER)
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FI_KILL_AT_WRITE": str(n)},
        check=False,
    )


def _metadata_writes(chain, name, tmp_path) -> tuple[Reference, Path, list[str], int]:
    root, syn, refs = chain
    stage = next(s for s in STAGES if s.name == name)
    ref, ws = refs[name], root / "ws"
    args = [*_args(stage, ws, syn), *stage.executors[0]]
    _restore(ref, ws)
    r = _run_killer(tmp_path, args, 0)
    assert r.returncode == 0, r.stderr
    writes = int(r.stderr.rsplit("FI_WRITES=", 1)[1].split()[0])
    assert outputs_digest(ws) == ref.digest  # counting changes nothing
    assert writes >= 3, r.stderr
    return ref, ws, args, writes


@pytest.mark.parametrize("name", ["import", "stitch"])
def test_sigkill_after_each_metadata_write_then_rerun_is_byte_identical(chain, name, tmp_path):
    """A run killed right after any of its metadata writes (the workspace group, the montage
    store, an output array, a state update) is finished by a plain rerun, byte for byte."""
    ref, ws, args, writes = _metadata_writes(chain, name, tmp_path)
    for n in range(1, writes + 1):
        _restore(ref, ws)
        r = _run_killer(tmp_path, args, n)
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr[-2000:])
        r = run_cli(*args)
        assert r.returncode == 0, f"{name}: rerun after a kill at metadata write {n} of {writes}: {r.stderr}"
        assert _array_states(ws) == ref.arrays, n
        got = outputs_digest(ws)
        diff = sorted(k for k in set(got) | set(ref.digest) if got.get(k) != ref.digest.get(k))
        assert not diff, f"{name}: output differs after a kill at metadata write {n} of {writes}: {diff[:20]}"


def test_no_output_array_reads_complete_after_a_kill_at_any_metadata_write(chain, tmp_path):
    ref, ws, args, writes = _metadata_writes(chain, "import", tmp_path)
    looks_complete = []
    for n in range(1, writes):  # the last write marks raw complete
        _restore(ref, ws)
        r = _run_killer(tmp_path, args, n)
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr[-2000:])
        states = _array_states(ws)
        if states.get("raw") is True:
            looks_complete.append(n)
    assert not looks_complete, f"raw reads complete after a kill at metadata write(s) {looks_complete} of {writes}"


#: ``python KILLER_IN_RESET ARGS`` runs ``connectome ARGS`` and SIGKILLs itself once align's
#: ``--restart`` set-up has removed the old matches and transforms (before step 1 runs)
KILLER_IN_RESET = """
import os, shutil, signal, sys
_rmtree = shutil.rmtree

def rmtree(path, *args, **kwargs):
    _rmtree(path, *args, **kwargs)
    if str(path).endswith(os.path.join("align", "transforms")):
        os.kill(os.getpid(), signal.SIGKILL)

shutil.rmtree = rmtree
from connectome.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_align_restart_killed_in_its_setup_then_plain_rerun_is_byte_identical(chain, tmp_path):
    """``align --restart`` deletes the old matches before step 1 runs: a kill right there must not
    leave step-1 done-markers that claim the deleted matches (a plain rerun then failed for good
    with "match of section z=1 to z=0 is missing; rerun `connectome align`")."""
    root, syn, refs = chain
    stage, ref, ws = next(s for s in STAGES if s.name == "align"), refs["align"], root / "ws"
    args = [*_args(stage, ws, syn), *SERIAL]
    _restore(ref, ws)
    assert run_cli(*args).returncode == 0
    script = tmp_path / "killer.py"
    script.write_text(KILLER_IN_RESET)
    r = subprocess.run(
        [sys.executable, str(script), *args, "--restart"], capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert not (ws / "align" / "matches").exists()
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    got = outputs_digest(ws)
    diff = sorted(k for k in set(got) | set(ref.digest) if got.get(k) != ref.digest.get(k))
    assert not diff, diff[:20]
