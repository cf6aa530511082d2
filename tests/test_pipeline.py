"""`connectome run PIPELINE.yaml`: validation (exit 2 naming the stage/field/key), the shipped
pipelines, an end-to-end run of pipelines/demo.yaml with skipping and WS/run.json, and a run
killed mid-stage (SIGKILL) that resumes to identical outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from connectome.cli import main
from connectome.pipeline import STAGES, available_commands, load_pipeline

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"

#: a short pipeline for the kill/resume test: tiny synthetic data, stitch, align
SHORT = """
name: short
vars:
  data: "{workspace}/synth"
stages:
  - stage: synth
    options: {out: "{data}", preset: small, shape: [8, 256, 256], seed: 4}
  - stage: stitch
    options: {tiles: "{data}/tiles/manifest.csv", frame-shape: [256, 256]}
    executor: local
    workers: 2
  - stage: align
    config: {blockwise: {block_shape_zyx: [4, 128, 128]}}
"""


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every zarr array under ``path`` (relative name -> data)."""
    import zarr

    out = {}
    for meta in sorted(path.rglob("zarr.json")):
        if json.loads(meta.read_text()).get("node_type") == "array":
            out[str(meta.parent.relative_to(path))] = zarr.open_array(str(meta.parent), mode="r")[...]
    return out


def _assert_same_outputs(a: Path, b: Path) -> None:
    ra, rb = _arrays(a / "volume.zarr"), _arrays(b / "volume.zarr")
    assert ra.keys() == rb.keys() and "raw" in ra
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
    ma, mb = _arrays(a / "stitch"), _arrays(b / "stitch")
    assert ma.keys() == mb.keys()
    for k in ma:
        np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    assert (a / "stitch" / "tiles.csv").read_text() == (b / "stitch" / "tiles.csv").read_text()


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo", "workstation", "polaris", "aurora"])
def test_shipped_pipelines_validate(tmp_path, name):
    pipe = load_pipeline(PIPELINES / f"{name}.yaml", tmp_path / "ws")
    assert pipe.name == name and pipe.stages
    have = available_commands()
    for st in pipe.stages:  # only stages whose command exists are shipped
        assert st.stage.command in have, st.id
    assert pipe.stages[0].options["out"] == str(tmp_path / "ws" / "synth")


def test_registry_commands_exist():
    have = available_commands()
    missing = [s.name for s in STAGES.values() if s.command not in have]
    assert not missing, f"registry entries without a CLI command: {missing}"


BAD = [
    ("stages:\n  - stage: nosuch\n", "unknown stage 'nosuch'"),
    ("stages:\n  - stage: align\n    colour: red\n", "unknown field 'colour'"),
    ("stages:\n  - stage: align\n    options: {tiles: x}\n", "unknown option 'tiles' for stage align"),
    ("stages:\n  - stage: align\n    config: {blokwise: 1}\n", "unknown key 'blokwise' in AlignConfig"),
    ("stages:\n  - stage: align\n    config: {blockwise: {block_shape_zyx: big}}\n", "blockwise.block_shape_zyx"),
    ("stages:\n  - stage: stitch\n", "option 'tiles' is required"),
    ("stages:\n  - stage: graph\n    config: {a: 1}\n", "stage graph has no config"),
    ("stages:\n  - stage: graph\n    executor: dask\n", "takes no executor"),
    ("stages:\n  - stage: align\n    executor: threads\n", "executor: expected one of"),
    ("stages:\n  - stage: align\n  - stage: align\n", "duplicate stage id 'align'"),
    ("stages:\n  - stage: evaluate\n    options: {truth: '{nowhere}'}\n", "unknown variable {nowhere}"),
    ("stages:\n  - stage: align\n    pbs: {gpus: 4}\n", "pbs: unknown key 'gpus'"),
    ("stagez: []\n", "unknown key 'stagez'"),
    ("stages: [\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, fragment", BAD)
def test_bad_pipeline_exit_2_names_it(tmp_path, capsys, text, fragment):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    rc = main(["run", str(p), "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and fragment in err[0] and str(p) in err[0], err
    assert not (tmp_path / "ws").exists()  # nothing ran, nothing written


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (["--from", "bogus"], "--from: no stage 'bogus'"),
        (["--from", "align", "--until", "stitch"], "comes after --until"),
        (["--only", "align", "--from", "stitch"], "--only"),
        (["--executor", "dask"], "--scheduler-file"),
    ],
)
def test_bad_selection_exit_2(tmp_path, capsys, opts, fragment):
    p = tmp_path / "short.yaml"
    p.write_text(SHORT)
    rc = main(["run", str(p), "--workspace", str(tmp_path / "ws"), *opts])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and fragment in err[0], err


def test_missing_pipeline_file_one_line_subprocess(tmp_path):
    r = run_cli("run", tmp_path / "nope.yaml", "--workspace", tmp_path / "ws")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"connectome: error: {tmp_path / 'nope.yaml'}: pipeline file not found"]


def test_selection_and_argv(tmp_path):
    p = tmp_path / "short.yaml"
    p.write_text(SHORT)
    pipe = load_pipeline(p, tmp_path / "ws")
    assert [s.id for s in pipe.select(from_="stitch")] == ["stitch", "align"]
    assert [s.id for s in pipe.select(until="stitch")] == ["synth", "stitch"]
    assert [s.id for s in pipe.select(only="align")] == ["align"]
    stitch = pipe.stages[1]
    argv = stitch.argv(pipe.workspace, executor="dask", scheduler_file="s.json")
    assert argv[:3] == ["stitch", "--workspace", str(tmp_path / "ws")]
    assert "--frame-shape" in argv and argv[argv.index("--frame-shape") + 1] == "256,256"
    joined = " ".join(argv)
    assert "--executor dask --workers 2 --scheduler-file s.json" in joined
    # fingerprints chain: changing an upstream stage changes every later one
    p2 = tmp_path / "short2.yaml"
    p2.write_text(SHORT.replace("seed: 4", "seed: 5"))
    other = load_pipeline(p2, tmp_path / "ws")
    assert all(a.fingerprint != b.fingerprint for a, b in zip(pipe.stages, other.stages))


# ---------------------------------------------------------------------------------------------


def _assert_demo_quality(ev: dict) -> None:
    """Quality floors of the small-preset demo (fixed seeds). Measured: stitch tile error median
    0.0005 px; alignment (a) adjacent-pair median 0.95 px, (c) drift 0.059 px/section; vessel IoU
    0.876; synapses 3 true / 4 predicted / 3 matched: F1 0.857, partners 3/3. Floors ~10-15 % off
    those, or the criterion itself where that is looser (stitch 0.3 px, drift 0.1 px/section); the
    synapse floors each tolerate one more error (a false hit: F1 0.75; a wrong partner: 2/3)."""
    st, al, ve, sy = ev["stitching"], ev["alignment"], ev["vessels"], ev["synapses"]
    assert st["status"] == "ok" and st["error_median_px"] <= 0.3, st
    adj, drift = al["adjacent_pair_error"], al["drift"]
    assert al["status"] == "ok" and adj["status"] == "ok" and adj["median_px"] <= 1.1, adj
    assert drift["status"] == "ok" and abs(drift["slope_px_per_section"]) <= 0.1, drift
    assert ve["status"] == "ok" and ve["iou"] >= 0.78, ve
    assert sy["f1"] >= 0.75 and sy["partner_accuracy"] >= 0.66, sy


def test_demo_end_to_end_then_skips(tmp_path):
    """`connectome demo --preset small`: pipelines/demo.yaml through every stage (the shipped vessel
    and synapse models, the shipped boundary model and the default learned-boundary segmentation), evaluated;
    the metrics table; a rerun skips all."""
    ws = tmp_path / "ws"
    r = run_cli("demo", "--workspace", ws, "--preset", "small", "--no-progress", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads((ws / "run.json").read_text())
    ids = [
        "synth",
        "stitch",
        "align",
        "mask-vessels",
        "predict-boundaries",
        "segment",
        "synapses",
        "graph",
        "skeletonize",
        "evaluate",
        "export-precomputed",
    ]
    assert rec["pipeline"]["stages"] == ids
    for sid in ids:
        st = rec["stages"][sid]
        assert st["status"] == "done" and st["exit_code"] == 0 and st["seconds"] > 0, sid
        assert st["versions"]["connectome"] and st["command"].startswith("connectome ")
    assert rec["stages"]["stitch"]["blocks"]["stitch"]["processed"] == 16
    assert rec["stages"]["segment"]["blocks"] and all(
        k.startswith("segment") for k in rec["stages"]["segment"]["blocks"]
    )
    assert set(_arrays(ws / "volume.zarr")) >= {
        "raw",
        "vessel_mask",
        "boundary",
        "segmentation",
        "synapse_prob",
        "synapse_post",
    }
    for name in ("synapses.csv", "connectivity.csv", "connectivity.graphml", "evaluation.json"):
        assert (ws / name).is_file(), name
    assert (ws / "precomputed" / "segmentation" / "info").is_file()
    ev = json.loads((ws / "evaluation.json").read_text())
    assert ev["synapses"]["status"] == "ok" and ev["synapses"]["n_true"] > 0
    _assert_demo_quality(ev)
    assert "pipeline demo: finished" in r.stdout and "record:" in r.stdout
    for sid in ids:  # the runner's summary table names every stage
        assert any(line.split()[:2] == [sid, "done"] for line in r.stdout.splitlines()), sid
    # the demo's own table: headline metrics and the view command
    assert "demo results" in r.stdout and "synapses: F1" in r.stdout and "vessels: IoU" in r.stdout
    # skeletons: in the export, and ERL / merges / splits in the evaluation and the demo table
    assert json.loads((ws / "precomputed" / "segmentation" / "info").read_text())["skeletons"] == "skeletons"
    assert ev["skeletons"]["status"] == "ok" and 0 < ev["skeletons"]["erl_nm"] <= ev["skeletons"]["erl_truth_nm"]
    assert "neurons: ERL / ERL of the truth (nm)" in r.stdout
    assert f"connectome view --workspace {ws}" in r.stdout
    # second run (the pipeline the demo wrote, through `connectome run`): everything is skipped
    r = run_cli("run", ws / "pipeline" / "demo.yaml", "--workspace", ws)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done before, skipped") == len(ids)
    assert len(json.loads((ws / "run.json").read_text())["runs"]) == 2


def test_failing_stage_exit_code_and_record(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("stages:\n  - stage: align\n  - stage: graph\n")
    ws = tmp_path / "ws"
    r = run_cli("run", p, "--workspace", ws)
    assert r.returncode == 2, r.stderr  # align on a workspace that does not exist: bad input
    assert "connectome: error:" in r.stderr and "align: FAILED with exit code 2" in r.stdout
    rec = json.loads((ws / "run.json").read_text())
    assert rec["stages"]["align"]["status"] == "failed" and "graph" not in rec["stages"]
    assert rec["runs"][-1]["status"] == "failed" and rec["runs"][-1]["exit_code"] == 2
    assert not (ws / "pipeline" / "done" / "align.json").exists()


def test_run_killed_mid_stage_resumes_identical(tmp_path):
    p = tmp_path / "short.yaml"
    p.write_text(SHORT)
    ref, ws = tmp_path / "ref", tmp_path / "ws"
    r = run_cli("run", p, "--workspace", ref, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]

    done = ws / "blockwise" / "stitch" / "done"
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectome", "run", str(p), "--workspace", str(ws), "--no-progress"],
        env={**os.environ, "CONNECTOME_BLOCK_DELAY_S": "0.5"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 3):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    n_done = len(os.listdir(done))
    assert 3 <= n_done < 8, "the kill must land mid-stage"
    rec = json.loads((ws / "run.json").read_text())
    assert rec["stages"]["synth"]["status"] == "done" and rec["stages"]["stitch"]["status"] == "running"

    r = run_cli("run", p, "--workspace", ws, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "synth: done before, skipped" in r.stdout
    rec = json.loads((ws / "run.json").read_text())
    assert rec["stages"]["stitch"]["status"] == "done"
    assert rec["stages"]["stitch"]["blocks"]["stitch"]["already_done"] >= n_done
    assert (
        rec["stages"]["stitch"]["blocks"]["stitch"]["processed"]
        == 8 - rec["stages"]["stitch"]["blocks"]["stitch"]["already_done"]
    )
    _assert_same_outputs(ref, ws)


def test_registry_options_match_the_cli():
    """Every option of a stage's CLI command can be set in a pipeline, and nothing else (so a
    pipeline can, e.g., retrain with --overwrite or stitch with --allow-absolute-paths)."""
    import argparse

    from connectome.cli import build_parser

    general = {
        "help",
        "verbose",
        "quiet",
        "config",
        "executor",
        "workers",
        "scheduler_file",
        "progress",
        "restart",
        "workspace",
    }

    def sub(parser, words):
        for w in words:
            action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = action.choices[w]
        return parser

    parser = build_parser()
    bad = []
    for sdef in STAGES.values():
        cli = {a.dest.replace("_", "-") for a in sub(parser, sdef.command)._actions} - {
            g.replace("_", "-") for g in general
        }
        if set(sdef.options) != cli:
            bad.append((sdef.name, sorted(cli - set(sdef.options)), sorted(set(sdef.options) - cli)))
    assert not bad, bad
