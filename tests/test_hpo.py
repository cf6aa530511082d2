"""`connectome hpo`: a real CBO search over FFN inference thresholds (a tiny FFN trained here),
its best config reproducing the objective with `--config`, restart, failures reported to
DeepHyper, the mpicomm evaluator under `mpiexec -n 3`, the PBS job script, and bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, run_cli

#: only the tests that run a search need DeepHyper; the rest (bad input, the PBS script) run without it
needs_deephyper = pytest.mark.skipif(
    importlib.util.find_spec("deephyper") is None, reason="deephyper not installed (pip install -e '.[hpo]')"
)

TINY_FFN = """model: {depth: 2, features: 8, fov_zyx: [7, 13, 13], deltas_zyx: [2, 3, 3]}
examples: {min_object_voxels: 300, val_episodes_per_volume: 2, val_segment_zyx: [0, 0, 0]}
trainer: {steps: 40, batch_size: 2, checkpoint_every: 40, validate_every: 0, log_every: 20, warmup_steps: 2,
          intra_op_threads: 1, inter_op_threads: 1}
"""

#: every trial: few FOVs per object, one subvolume (a trial takes a few seconds, most of it TF start-up)
SPACE = """stage: segment
fixed:
  inference.max_fovs_per_object: 20
  inference.deltas_zyx: [3, 6, 6]
  inference.batch_size: 8
  blockwise.block_shape_zyx: [16, 64, 64]
parameters:
  inference.move_threshold: [0.5, 0.95]
  inference.segment_threshold: [0.3, 0.9]
  inference.min_segment_voxels: [50, 1500]
  inference.seed_min_distance: [2, 8]
objective: -arand
validation: {workspace: ws, truth: val, model: model}
budget: {seconds: 300}
search: {random_state: 7}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("tensorflow")  # trains the tiny FFN the spaces point at
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("hpo")
    generate(root / "train", preset="small", seed=411, shape_zyx=(12, 96, 96))
    generate(root / "val", preset="small", seed=413, shape_zyx=(12, 64, 64))
    (root / "tiny_ffn.yaml").write_text(TINY_FFN)
    r = run_cli(
        "train",
        "ffn",
        "--data",
        root / "train",
        "--val",
        root / "val",
        "--out",
        root / "model",
        "--config",
        root / "tiny_ffn.yaml",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("import", root / "val" / "truth.zarr" / "raw", "--workspace", root / "ws", "--voxel-size", "40,8,8")
    assert r.returncode == 0, r.stderr
    (root / "space.yaml").write_text(SPACE)
    return root


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _params(row: dict) -> tuple:
    """A row's parameters (to 12 digits: DeepHyper rewrites reloaded rows through pandas)."""
    return tuple(f"{float(v):.12g}" for k, v in sorted(row.items()) if k.startswith("p:"))


@needs_deephyper
def test_segment_sweep_best_config_reproduces(setup, tmp_path):
    root = setup
    out = tmp_path / "sweep"
    r = run_cli(
        "hpo",
        "run",
        root / "space.yaml",
        "--max-evals",
        8,
        "--evaluator",
        "thread",
        "--workers",
        2,
        "--out",
        out,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) == 8 and all(float(row["objective"]) <= 0 for row in rows), rows
    assert sorted(int(row["job_id"]) for row in rows) == list(range(8))
    assert len({_params(row) for row in rows}) == 8
    base = [row for row in rows if row["m:base_config"] == "True"]
    assert len(base) == 1 and float(base[0]["p:inference.move_threshold"]) == 0.9  # the defaults come first

    r = run_cli("hpo", "report", out)
    assert r.returncode == 0, r.stderr
    best = max(rows, key=lambda row: float(row["objective"]))
    assert f"best: objective {float(best['objective']):.6g}" in r.stdout
    assert (out / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(csv.reader(open(out / "top.csv")))) == 9
    print(r.stdout)

    # the best config, applied with --config on a fresh copy of the workspace, gives the same objective
    ws = tmp_path / "ws"
    shutil.copytree(root / "ws", ws)
    r = run_cli(
        "segment", "--workspace", ws, "--model", root / "model", "--config", out / "best.yaml", "--executor", "serial"
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("evaluate", "--workspace", ws, "--truth", root / "val")
    assert r.returncode == 0, r.stderr
    arand = json.loads((ws / "evaluation.json").read_text())["segmentation"]["arand_error"]
    assert -arand == pytest.approx(float(best["objective"]), abs=1e-12)
    print(f"best -ARAND {float(best['objective']):.4f} vs base config {float(base[0]['objective']):.4f}")


@needs_deephyper
def test_failed_trials_are_deephyper_failures(setup, tmp_path):
    root = setup
    space = tmp_path / "space.yaml"
    text = SPACE.replace("budget: {seconds: 300}", "budget: {seconds: 0.5}")
    space.write_text(
        text.replace(
            "{workspace: ws, truth: val, model: model}",
            f"{{workspace: {root / 'ws'}, truth: {root / 'val'}, model: {root / 'model'}}}",
        )
    )
    out = tmp_path / "sweep"
    r = run_cli("hpo", "run", space, "--max-evals", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert [row["objective"] for row in rows] == ["F_timeout", "F_timeout"]
    assert json.loads((out / "trials" / "00000" / "result.json").read_text())["failure"] == "F_timeout"
    r = run_cli("hpo", "report", out)
    assert r.returncode == 2 and "no successful evaluation" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    # restart: the same total does nothing; a larger one adds only the missing evaluations, new points
    r = run_cli("hpo", "run", space, "--max-evals", 2, "--out", out)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr
    r = run_cli("hpo", "run", space, "--max-evals", 4, "--out", out)
    assert r.returncode == 0, r.stderr
    again = _rows(out)
    assert len(again) == 4 and [_params(x) for x in again[:2]] == [_params(x) for x in rows]
    assert [x["job_id"] for x in again] == ["0", "1", "2", "3"] and len({_params(x) for x in again}) == 4
    # a different space into the same folder is refused
    space.write_text(space.read_text().replace("[2, 8]", "[2, 9]"))
    r = run_cli("hpo", "run", space, "--max-evals", 5, "--out", out)
    assert r.returncode == 2 and "another space" in r.stderr


@pytest.mark.slow
@needs_deephyper
def test_mpicomm_under_mpiexec_3(setup, tmp_path):
    root = setup
    out = tmp_path / "sweep"
    cmd = [
        str(BIN / "mpiexec"),
        "-n",
        "3",
        sys.executable,
        "-m",
        "connectome",
        "hpo",
        "run",
        str(root / "space.yaml"),
        "--max-evals",
        "4",
        "--evaluator",
        "mpicomm",
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) == 4 and all(float(row["objective"]) <= 0 for row in rows)
    assert r.stdout.count("hpo run: 4 evaluations in") == 1  # only the master reports


def test_mpicomm_needs_two_ranks(setup, tmp_path):
    r = run_cli("hpo", "run", setup / "space.yaml", "--max-evals", 2, "--evaluator", "mpicomm", "--out", tmp_path / "o")
    assert r.returncode == 2 and "at least 2 MPI ranks" in r.stderr


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "edit, named",
    [
        (("inference.move_threshold: [0.5, 0.95]", "inference.move_treshold: [0.5, 0.95]"), "inference.move_treshold"),
        (("inference.move_threshold: [0.5, 0.95]", "inference.move_threshold: [0.9, 0.9]"), "empty range"),
        (("inference.move_threshold: [0.5, 0.95]", "inference.move_threshold: [0.95, 0.5]"), "empty range"),
        (("inference.min_segment_voxels: [50, 1500]", "inference.min_segment_voxels: [50.5, 1500]"), "int range"),
        (("inference.move_threshold: [0.5, 0.95]", "inference.move_threshold: [0.5, 1.5]"), "move_threshold"),
        (("inference.move_threshold: [0.5, 0.95]", "inference: [0.5, 0.95]"), "section"),
        (("inference.move_threshold: [0.5, 0.95]", "method: [ffn, flood]"), "'flood'"),
        (("inference.move_threshold: [0.5, 0.95]", "inference.move_threshold: {choices: []}"), "empty choices"),
        (("inference.move_threshold: [0.5, 0.95]", "overlap_zyx: [4, 8]"), "scalar"),
        (("inference.max_fovs_per_object: 20", "inference.max_fov: 20"), "fixed: unknown field 'inference.max_fov'"),
        (("objective: -arand", "objective: arand"), "-arand"),
        (("objective: -arand", "objective: iou"), "section"),
        (("stage: segment", "stage: segmnet"), "stage"),
        (("budget: {seconds: 300}", "budget: {steps: 10}"), "budget.steps"),
    ],
)
def test_bad_space_is_a_user_error(setup, tmp_path, edit, named):
    from connectome.errors import UserInputError
    from hpo.space import load_space

    old, new = edit
    assert old in SPACE
    space = setup / f"bad_{abs(hash(new))}.yaml"
    space.write_text(SPACE.replace(old, new))
    with pytest.raises(UserInputError, match=named.replace("[", r"\[").replace("(", r"\(")) as exc:
        load_space(space)
    assert str(space) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_input_exit_2(setup, tmp_path):
    space = setup / "bad_cli.yaml"
    space.write_text(SPACE.replace("inference.segment_threshold: [0.3, 0.9]", "inference.segment_treshold: [0.3, 0.9]"))
    r = run_cli("hpo", "run", space, "--max-evals", 4, "--out", tmp_path / "o")
    assert r.returncode == 2 and "unknown field 'inference.segment_treshold'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    space.write_text(SPACE.replace("[50, 1500]", "[1500, 50]"))
    r = run_cli("hpo", "run", space, "--max-evals", 4, "--out", tmp_path / "o")
    assert r.returncode == 2 and "inference.min_segment_voxels: empty range [1500, 50]" in r.stderr
    r = run_cli("hpo", "run", setup / "space.yaml", "--max-evals", 0, "--out", tmp_path / "o")
    assert r.returncode == 2 and "--max-evals" in r.stderr
    r = run_cli("hpo", "run", setup / "space.yaml", "--max-evals", 2, "--evaluator", "ray", "--out", tmp_path / "o")
    assert r.returncode == 2 and "--evaluator" in r.stderr
    r = run_cli("hpo", "report", tmp_path / "nowhere")
    assert r.returncode == 2 and "nowhere" in r.stderr


def test_pbs_hpo_script(tmp_path):
    from connectome.pbs import JobSpec, render

    text = render(
        JobSpec(
            stage="hpo",
            system="polaris",
            nodes=4,
            project="MyProj",
            walltime="02:00:00",
            queue="prod",
            stage_args="space.yaml --max-evals 256 --out sweep",
        )
    )
    lines = text.splitlines()
    for d in (
        "#PBS -l select=4:system=polaris",
        "#PBS -l walltime=02:00:00",
        "#PBS -l filesystems=home:eagle",
        "#PBS -A MyProj",
        "#PBS -q prod",
        "#PBS -l place=scatter",
    ):
        assert d in lines, d
    assert "mpiexec -n $((NNODES * 4)) --ppn 4" in text
    assert '"$AFFINITY" connectome hpo run space.yaml --max-evals 256 --out sweep --evaluator mpicomm' in text
    p = tmp_path / "job.sh"
    p.write_text(text)
    r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = run_cli("pbs", "render", "hpo", "--system", "aurora", "--nodes", "2", "--project", "P")
    assert r.returncode == 2 and "--stage-args" in r.stderr


TRAIN_SPACE = """stage: train-ffn
base_config: tiny_ffn.yaml
parameters:
  trainer.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
  trainer.optimizer: [adam, sgd]
  trainer.batch_size: [1, 2]
  trainer.lr_scaling: [linear, sqrt, none]
  trainer.warmup_steps: [0, 5]
  model.features: {choices: [4, 8]}
objective: -voi
validation: {workspace: ws, truth: val}
train: {data: [train], val: [val], segment_config: seg.yaml}
budget: {steps: 8, seconds: 300}
search: {random_state: 3}
"""


@pytest.mark.slow
@needs_deephyper
def test_ffn_training_sweep(setup, tmp_path):
    """A real, short FFN training sweep: every trial trains (8 steps), segments the validation
    workspace with its model and is scored by -VOI."""
    root = setup
    (root / "seg.yaml").write_text(
        "inference: {max_fovs_per_object: 20, deltas_zyx: [3, 6, 6], batch_size: 8}\n"
        "blockwise: {block_shape_zyx: [16, 64, 64]}\n"
    )
    (root / "train_space.yaml").write_text(TRAIN_SPACE)
    out = tmp_path / "sweep"
    r = run_cli(
        "hpo",
        "run",
        root / "train_space.yaml",
        "--max-evals",
        4,
        "--evaluator",
        "process",
        "--workers",
        2,
        "--out",
        out,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) == 4 and all(float(row["objective"]) <= 0 for row in rows), [x["objective"] for x in rows]
    for row in rows:
        trial = out / "trials" / f"{int(row['job_id']):05d}"
        doc = json.loads((trial / "model" / "model.json").read_text())
        assert doc["training"]["steps"] == 8
        assert doc["training"]["config"]["trainer"]["optimizer"] == row["p:trainer.optimizer"]
    r = run_cli("hpo", "report", out)
    assert r.returncode == 0, r.stderr
    from connectome.config import load_config
    from ffn.train import FFNTrainConfig

    cfg = load_config(FFNTrainConfig, out / "best.yaml")  # directly usable by `connectome train ffn --config`
    assert cfg.trainer.steps == 8 and cfg.model.depth == 2
    print(r.stdout)
