"""`connectome pbs render`: ALCF job scripts (directives, launch lines, GPU pinning, dask) and bad input."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess

import pytest
from conftest import run_cli

from connectome.errors import UserInputError
from connectome.pbs import JobSpec, render

BASH = shutil.which("bash")
MODEL, BLOCKWISE = "segment", "stitch"


def _render(stage, system, **kw):
    args = dict(
        stage=stage,
        system=system,
        nodes=2,
        project="MyProj",
        walltime="00:30:00",
        queue="debug-scaling",
        workspace="/lus/ws one",
    )
    args.update(kw)
    return render(JobSpec(**args))


def _bash_n(text, tmp_path):
    p = tmp_path / "job.sh"
    p.write_text(text)
    r = subprocess.run([BASH, "-n", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "system, ppn, fs, pin",
    [
        ("polaris", 4, "home:eagle", "CUDA_VISIBLE_DEVICES"),
        ("aurora", 12, "home:flare", "ZE_AFFINITY_MASK"),
    ],
)
@pytest.mark.parametrize("stage", [MODEL, BLOCKWISE])
def test_pbspro_directives_and_launch(tmp_path, system, ppn, fs, pin, stage):
    text = _render(stage, system)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [ln for ln in lines if ln.startswith("#PBS")]
    for d in (
        f"#PBS -l select=2:system={system}",
        "#PBS -l place=scatter",
        "#PBS -l walltime=00:30:00",
        f"#PBS -l filesystems={fs}",
        "#PBS -A MyProj",
        "#PBS -q debug-scaling",
    ):
        assert d in directives, d
    assert all("#" not in d[1:] for d in directives)  # no comments on directive lines
    last_directive = max(i for i, ln in enumerate(lines) if ln.startswith("#PBS"))
    assert all(ln.startswith("#") for ln in lines[:last_directive])  # directives before any command
    assert "cd ${PBS_O_WORKDIR}" in lines
    assert "NNODES=$(wc -l < $PBS_NODEFILE)" in lines
    assert re.search(rf"^{pin}=|export {pin}=", text, re.M)
    assert "PMI_LOCAL_RANK" in text and "PALS_LOCAL_RANKID" in text
    assert "#COBALT" not in text and "aprun" not in text
    mpi = [ln for ln in lines if ln.startswith("mpiexec") and "--cpu-bind depth" in ln]
    assert mpi
    assert any(f"--ppn {ppn}" in ln and "--depth " in ln and " -n " in ln for ln in mpi)
    if stage == MODEL:
        assert f"mpiexec -n $((NNODES * {ppn})) --ppn {ppn}" in text
        assert "connectome segment --workspace \"$WS\" --executor mpi" in text
        assert "scheduler-file" not in text
    else:
        assert "dask scheduler --scheduler-file" in text and "dask worker --scheduler-file" in text
        assert 'connectome stitch --workspace "$WS" --executor dask --scheduler-file "$SCHEDULER_FILE"' in text
        assert "head -n 1 $PBS_NODEFILE" in text and "tail -n +2 $PBS_NODEFILE" in text
    assert "WS='/lus/ws one'" in lines
    assert "{" + "stage}" not in text and "{ppn}" not in text  # every placeholder filled
    _bash_n(text, tmp_path)


@pytest.mark.parametrize("stage", [MODEL, BLOCKWISE])
def test_theta_cobalt_and_aprun(tmp_path, stage):
    text = _render(stage, "theta", walltime="01:30:30", filesystems="home:grand")
    lines = text.splitlines()
    for d in (
        "#COBALT -n 2",
        "#COBALT -t 91",
        "#COBALT -q debug-scaling",
        "#COBALT -A MyProj",
        "#COBALT --attrs filesystems=home,grand",
    ):
        assert d in lines, d
    assert "#PBS" not in text and "mpiexec" not in text
    assert re.search(r"^aprun -n \$\(\(NNODES \* 4\)\) -N 4 -d \d+ ", text, re.M)
    if stage == BLOCKWISE:
        assert "dask scheduler --scheduler-file" in text and "--executor dask --scheduler-file" in text
    else:
        assert "--executor mpi" in text
    _bash_n(text, tmp_path)


def test_train_stage_and_graph(tmp_path):
    text = _render("train-ffn", "aurora", workspace=None, stage_args="--data /lus/d1 --out /lus/models/ffn")
    assert '"$AFFINITY" connectome train ffn --data /lus/d1 --out /lus/models/ffn' in text
    _bash_n(text, tmp_path)
    text = _render("graph", "polaris", ppn=2)
    assert "mpiexec -n 1 --ppn 1" in text and "connectome graph --workspace" in text
    assert "--executor" not in text
    _bash_n(text, tmp_path)


def test_cli_out_writes_executable(tmp_path):
    out = tmp_path / "jobs"
    r = run_cli(
        "pbs",
        "render",
        "mask-vessels",
        "--system",
        "polaris",
        "--nodes",
        "4",
        "--project",
        "P",
        "--workspace",
        "/eagle/ws",
        "--out",
        out,
        "--walltime",
        "02:00:00",
        "--queue",
        "prod",
    )
    assert r.returncode == 0, r.stderr
    path = out / "mask-vessels.polaris.pbs"
    assert r.stdout.strip() == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    assert "#PBS -l select=4:system=polaris" in path.read_text()
    # --dry-run prints and writes nothing
    r = run_cli(
        "pbs",
        "render",
        "segment",
        "--system",
        "aurora",
        "--nodes",
        "1",
        "--project",
        "P",
        "--workspace",
        "/flare/ws",
        "--out",
        out,
        "--dry-run",
    )
    assert r.returncode == 0 and r.stdout.startswith("#!/bin/bash")
    assert not (out / "segment.aurora.pbs").exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--system", "frontier"], "--system"),
        (["--nodes", "0"], "--nodes"),
        (["--walltime", "1h"], "--walltime"),
        (["--walltime", "00:61:00"], "--walltime"),
        (["--no-project"], "--project"),
        (["--stage", "bogus"], "STAGE"),
        (["--queue", "debug;rm"], "--queue"),
    ],
)
def test_bad_input_exit_2_one_line(extra, fragment):
    opts = {"--system": "polaris", "--nodes": "2", "--walltime": "00:10:00", "--project": "P", "--queue": "debug"}
    stage = "stitch"
    if extra == ["--no-project"]:
        del opts["--project"]
    elif extra[0] == "--stage":
        stage = extra[1]
    else:
        opts[extra[0]] = extra[1]
    args = ["pbs", "render", stage, "--workspace", "/ws"] + [x for kv in opts.items() for x in kv]
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert r.stdout == ""


def test_train_needs_stage_args():
    with pytest.raises(UserInputError, match="--stage-args"):
        _render("train-vessel", "polaris", workspace=None)
