"""`connectome pbs render PIPELINE` / `connectome pbs submit`: per-stage scripts for every system
(directive check + ``bash -n``), dry run, bad input, and a real submission to a single-node Slurm
through Debian's Torque-compatible ``qsub``: chained jobs run in order (a blockwise stage on a dask
scheduler + workers started inside its job, a 2-rank Horovod training step under a real
``mpiexec``), give the same outputs as the local run, and a failing job stops its dependants."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from connectome.cli import main

ROOT = Path(__file__).resolve().parent.parent
BASH = shutil.which("bash")

#: synth tiny -> stitch (blockwise, dask inside the job) -> 2-rank Horovod training step ->
#: a stage that fails at run time (evaluate against a missing truth) -> a stage that must not run
CHAIN = """
name: chain
vars:
  data: "{workspace}/synth"
stages:
  - stage: synth
    options: {out: "{data}", preset: small, shape: [4, 192, 192], seed: 2}
  - stage: stitch
    options: {tiles: "{data}/tiles/manifest.csv", frame-shape: [192, 192]}
  - stage: train-vessel
    ranks: 2
    options: {data: ["{data}"], out: "{workspace}/models/vessel", steps: 1}
    config:
      model: {depth: 2, base_filters: 4, max_filters: 8, in_channels: 3}
      data: {tile_px: 32, val_tile_px: 64, val_tiles_per_volume: 2}
      trainer: {steps: 1, batch_size: 2, learning_rate: 0.01, warmup_steps: 0, validate_every: 1,
                checkpoint_every: 1, log_every: 1, intra_op_threads: 1, inter_op_threads: 1,
                distributed: horovod, prefetch: 0, seed: 5}
      final_validation: false
  - stage: evaluate
    options: {truth: "{workspace}/no-such-truth"}
  - stage: smooth
"""


def _bash_n(text: str, tmp_path: Path) -> None:
    p = tmp_path / "job.sh"
    p.write_text(text)
    r = subprocess.run([BASH, "-n", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _scripts(stdout: str) -> dict[str, str]:
    parts = re.split(r"^### (\S+)\n", stdout, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("system", ["polaris", "aurora", "theta", "local"])
def test_render_pipeline_every_system(tmp_path, capsys, system):
    ws = tmp_path / "ws one"
    rc = main(
        [
            "pbs",
            "render",
            str(ROOT / "pipelines" / "polaris.yaml"),
            "--system",
            system,
            "--nodes",
            "2",
            "--project",
            "MyProj",
            "--workspace",
            str(ws),
            "--queue",
            "prod",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    scripts = _scripts(out)
    ids = ["synth", "stitch", "align", "mask-vessels", "predict-boundaries", "segment", "evaluate"]
    assert list(scripts) == [f"{i:02d}-{sid}.{system}.pbs" for i, sid in enumerate(ids, 1)]
    for name, text in scripts.items():
        sid = name.split("-", 1)[1].rsplit(".", 2)[0]
        lines = text.splitlines()
        assert lines[0] == "#!/bin/bash"
        prefix = "#COBALT" if system == "theta" else "#PBS"
        directives = [ln for ln in lines if ln.startswith(prefix)]
        assert all("#" not in d[1:] for d in directives)  # no comments on directive lines
        last = max(i for i, ln in enumerate(lines) if ln.startswith(prefix))
        assert all(ln.startswith("#") for ln in lines[:last])  # directives before any command
        cmd = f"connectome run {ROOT / 'pipelines' / 'polaris.yaml'} --workspace \"$WS\" --only {sid}"
        assert cmd in text, name
        nodes = 1 if sid in ("synth", "evaluate") else 2  # the stage's pbs: nodes wins
        if system in ("polaris", "aurora"):
            for d in (
                f"#PBS -l select={nodes}:system={system}",
                "#PBS -l place=scatter",
                "#PBS -A MyProj",
                "#PBS -q prod",
                "#PBS -l filesystems=home:" + ("eagle" if system == "polaris" else "flare"),
            ):
                assert d in directives, (name, d)
        elif system == "local":
            assert f"#PBS -l nodes={nodes}:ppn={os.cpu_count()}" in directives
            body = "\n".join(ln for ln in lines if not ln.startswith("# "))  # directives and commands
            assert not any(k in body for k in ("-A MyProj", "filesystems", "place=", "select=", "--cpu-bind", "-q "))
            assert f"export PATH={Path(sys.executable).parent}:$PATH" in lines
        else:
            assert f"#COBALT -n {nodes}" in directives
        if sid == "stitch":
            assert "--executor dask --scheduler-file \"$SCHEDULER_FILE\"" in text
            assert "dask scheduler --scheduler-file" in text and "dask worker --scheduler-file" in text
        if sid == "segment":
            assert "--executor mpi" in text
        assert f"WS='{ws}'" in lines
        _bash_n(text, tmp_path)


def test_render_pipeline_out_and_submit_dry_run(tmp_path, capsys):
    pipe = ROOT / "pipelines" / "demo.yaml"
    rc = main(
        [
            "pbs",
            "render",
            str(pipe),
            "--system",
            "aurora",
            "--nodes",
            "1",
            "--project",
            "P",
            "--workspace",
            str(tmp_path / "ws"),
            "--out",
            str(tmp_path / "jobs"),
            "--from",
            "align",
            "--until",
            "segment",
        ]
    )
    out = capsys.readouterr().out.split()
    assert rc == 0 and [Path(p).name for p in out] == [
        "01-align.aurora.pbs",
        "02-mask-vessels.aurora.pbs",
        "03-predict-boundaries.aurora.pbs",
        "04-segment.aurora.pbs",
    ]
    assert all(os.access(p, os.X_OK) for p in out)
    rc = main(
        [
            "pbs",
            "submit",
            str(pipe),
            "--system",
            "local",
            "--nodes",
            "1",
            "--workspace",
            str(tmp_path / "ws2"),
            "--dry-run",
        ]
    )
    assert rc == 0 and len(_scripts(capsys.readouterr().out)) == 11  # every stage of pipelines/demo.yaml
    assert not (tmp_path / "ws2").exists()


def test_submit_without_qsub_exit_2(tmp_path):
    env = {"PATH": str(tmp_path)}  # no qsub here
    r = run_cli(
        "pbs",
        "submit",
        ROOT / "pipelines" / "demo.yaml",
        "--system",
        "local",
        "--nodes",
        "1",
        "--workspace",
        tmp_path / "ws",
        env=env,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "qsub: not found on PATH" in lines[0], r.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["pbs", "submit", "stitch", "--system", "local", "--nodes", "1", "--workspace", "W"], "PIPELINE"),
        (
            ["pbs", "submit", "P.yaml", "--system", "local", "--nodes", "1", "--workspace", "W"],
            "pipeline file not found",
        ),
        (["pbs", "submit", "DEMO", "--system", "polaris", "--nodes", "1", "--workspace", "W"], "--project"),
        (["pbs", "submit", "DEMO", "--system", "cray", "--nodes", "1", "--workspace", "W"], "--system"),
        (["pbs", "submit", "DEMO", "--system", "local", "--nodes", "1", "--workspace", "W", "--from", "x"], "--from"),
        (
            ["pbs", "submit", "DEMO", "--system", "local", "--nodes", "1", "--workspace", "W", "--after", "1;x"],
            "--after",
        ),
        (["pbs", "render", "DEMO", "--system", "local", "--nodes", "1"], "--workspace"),
    ],
)
def test_submit_bad_input_exit_2(tmp_path, capsys, args, fragment):
    args = [
        str(ROOT / "pipelines" / "demo.yaml") if a == "DEMO" else str(tmp_path / a) if a in ("W", "P.yaml") else a
        for a in args
    ]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and fragment in err[0], err


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    from slurm_local import LocalSlurm, ensure_packages

    why = ensure_packages()
    if why:
        pytest.skip(why)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Exception as exc:  # noqa: BLE001 - report why the cluster could not start
        cluster.stop()
        pytest.fail(f"single-node Slurm did not start: {exc}")
    yield cluster
    cluster.stop()


@pytest.mark.slow
def test_slurm_qsub_chain_real(tmp_path, slurm):
    pytest.importorskip("horovod.tensorflow")
    pipe = tmp_path / "chain.yaml"
    pipe.write_text(CHAIN)
    ws = tmp_path / "ws"
    env = {**slurm.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    r = run_cli(
        "pbs",
        "submit",
        pipe,
        "--system",
        "local",
        "--nodes",
        "1",
        "--ppn",
        "2",
        "--walltime",
        "00:10:00",
        "--workspace",
        ws,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    record = json.loads((ws / "pbs" / "jobs.json").read_text())
    jobs = record["submissions"][-1]["jobs"]
    assert [j["stage"] for j in jobs] == ["synth", "stitch", "train-vessel", "evaluate", "smooth"]
    ids = [j["job_id"] for j in jobs]
    assert jobs[0]["depends_on"] is None and all(j["depends_on"] == p for j, p in zip(jobs[1:], ids))

    # meanwhile, the same stages locally (the reference outputs)
    ref = tmp_path / "ref"
    r_local = run_cli("run", pipe, "--workspace", ref, "--until", "train-vessel", "--no-progress", timeout=600)
    assert r_local.returncode == 0, r_local.stderr[-2000:]

    states = slurm.wait(ids, timeout=240)
    logs: dict[str, str] = {}  # script name -> its job's stdout + stderr (.o/.e: the wrapper ignores -j oe)
    for p in sorted((ws / "pbs").glob("*.pbs.[oe]*")):
        name = p.name.rsplit(".", 1)[0]
        logs[name] = logs.get(name, "") + p.read_text(errors="replace")
    assert [states[i] for i in ids] == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "CANCELLED"], (
        states,
        {k: v[-1500:] for k, v in logs.items()},
        slurm.logs(),
    )

    rec = json.loads((ws / "run.json").read_text())["stages"]
    order = ["synth", "stitch", "train-vessel"]
    assert all(rec[s]["status"] == "done" for s in order)
    assert [rec[s]["started"] for s in order] == sorted(rec[s]["started"] for s in order)
    assert all(rec[a]["finished"] <= rec[b]["started"] for a, b in zip(order, order[1:]))  # in order
    assert rec["evaluate"]["status"] == "failed" and rec["evaluate"]["exit_code"] == 2
    assert "smooth" not in rec and not (ws / "blockwise" / "smooth").exists()  # the dependant never ran

    stitch_log = next(v for k, v in logs.items() if k.startswith("02-stitch"))
    assert "--executor dask --scheduler-file" in rec["stitch"]["command"]
    assert "connectome stitch: exit code 0" in stitch_log
    train_log = next(v for k, v in logs.items() if k.startswith("03-train-vessel"))
    assert "1 steps on 2 rank(s)" in train_log, train_log[-2000:]
    assert rec["train-vessel"]["mpi_ranks"] == 2
    eval_log = next(v for k, v in logs.items() if k.startswith("04-evaluate"))
    assert "connectome: error:" in eval_log and "exit code 2" in eval_log

    # same outputs as the local run: montages (stitch on dask in the job), tile table, model weights
    from test_pipeline import _arrays

    ma, mb = _arrays(ws / "stitch"), _arrays(ref / "stitch")
    assert ma and ma.keys() == mb.keys()
    for k in ma:
        np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    assert (ws / "stitch" / "tiles.csv").read_text() == (ref / "stitch" / "tiles.csv").read_text()
    wa, wb = ws / "models" / "vessel", ref / "models" / "vessel"
    assert json.loads((wa / "model.json").read_text()).get("format") == json.loads((wb / "model.json").read_text()).get(
        "format"
    )
    fa = sorted(p.relative_to(wa) for p in wa.rglob("weights*") if p.is_file())
    assert fa and fa == sorted(p.relative_to(wb) for p in wb.rglob("weights*") if p.is_file())
    for rel in fa:
        assert (wa / rel).read_bytes() == (wb / rel).read_bytes(), rel

    # resubmitting after fixing nothing: finished stages are skipped inside their jobs
    r = run_cli(
        "pbs",
        "submit",
        pipe,
        "--system",
        "local",
        "--nodes",
        "1",
        "--ppn",
        "2",
        "--workspace",
        ws,
        "--until",
        "stitch",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    ids2 = [j["job_id"] for j in json.loads((ws / "pbs" / "jobs.json").read_text())["submissions"][-1]["jobs"]]
    assert list(slurm.wait(ids2, timeout=360).values()) == [
        "COMPLETED",
        "COMPLETED",
    ]  # returns when done; the margin is for a loaded machine
    assert len(json.loads((ws / "pbs" / "jobs.json").read_text())["submissions"]) == 2
