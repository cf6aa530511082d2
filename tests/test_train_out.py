"""`connectome train KIND --out MODEL_DIR`: a finished model directory is refused (exit 2, before
any training) unless --overwrite; an unfinished one (train/ checkpoints only) still resumes; the
export is atomic (a failure mid-export leaves the previous model as it was)."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_cli, tree_digest

REPO = Path(__file__).resolve().parent.parent
FINISHED = {
    "vessel": REPO / "unet/models/vessel",
    "synapse": REPO / "unet/models/synapse",
    "boundary": REPO / "unet/models/boundary",
    "ffn": REPO / "ffn/models/boundary16",
}
MODULES = {
    "vessel": "unet.train",
    "synapse": "unet.synapse_train",
    "boundary": "unet.boundary_train",
    "ffn": "ffn.train",
}


def _finished_copy(kind: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{kind}_model"
    shutil.copytree(FINISHED[kind], out)
    (out / "train").mkdir(exist_ok=True)
    (out / "train" / "log.jsonl").write_text('{"event": "end"}\n')
    return out


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.parametrize("kind", sorted(FINISHED))
def test_finished_out_refused_exit_2(kind, tmp_path):
    out = _finished_copy(kind, tmp_path)
    before = tree_digest(out)
    r = run_cli(
        "train",
        kind,
        "--data",
        tmp_path / "no_such_synth",
        "--val",
        tmp_path / "no_such_val",
        "--out",
        out,
        "--steps",
        "1",
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(out) in lines[0] and "--overwrite" in lines[0] and "--out" in lines[0]
    assert tree_digest(out) == before


def test_unfinished_out_is_not_refused(tmp_path):
    """train/ without model.json is a run to resume: the command goes on (to the --data check here)."""
    out = tmp_path / "m"
    (out / "train" / "checkpoints").mkdir(parents=True)
    r = run_cli("train", "vessel", "--data", tmp_path / "no_such_synth", "--val", tmp_path / "v", "--out", out)
    assert r.returncode == 2 and "--overwrite" not in r.stderr and "--data" in r.stderr


@pytest.mark.parametrize("kind", sorted(FINISHED))
def test_overwrite_accepted(kind, tmp_path, monkeypatch):
    from connectome import cli

    out = _finished_copy(kind, tmp_path)
    calls = []
    mod = importlib.import_module(MODULES[kind])
    monkeypatch.setattr(mod, f"train_{kind}", lambda *a, **kw: calls.append(kw) or {})
    rc = cli.main(
        ["train", kind, "--data", str(tmp_path / "s"), "--val", str(tmp_path / "v"), "--out", str(out), "--overwrite"]
    )
    assert rc == 0 and len(calls) == 1 and calls[0]["overwrite"] is True


def test_api_refuses_finished_out_before_training(tmp_path):
    from connectome.errors import UserInputError
    from unet.train import train_vessel

    out = _finished_copy("vessel", tmp_path)
    with pytest.raises(UserInputError, match="--overwrite"):
        train_vessel([tmp_path / "no_such_synth"], out)


def _fake_vessel_training(monkeypatch, tmp_path, fail_in_card: bool, out: Path):
    """train_vessel with everything before the export faked: run_training 'returns' the shipped weights."""
    import connectome.training.distributed as dist
    import connectome.training.loop as loop
    import unet.train as ut

    weights = tmp_path / "best_weights.npz"
    shutil.copy(FINISHED["vessel"] / "weights.npz", weights)
    result = SimpleNamespace(
        stopped_by_signal=False,
        weights_file=str(weights),
        best_step=None,
        steps=1,
        ranks=1,
        best_metrics={},
        last_metrics={"iou": 0.5},
        rank_weight_digests=["x"],
    )
    session = SimpleNamespace(rank=0, size=1, is_root=True, barrier=lambda: None)
    monkeypatch.setattr(dist, "horovod_session", lambda *a, **kw: contextlib.nullcontext(session))
    monkeypatch.setattr(loop, "run_training", lambda *a, **kw: result)
    monkeypatch.setattr(ut, "_check_folders", lambda data, val: None)
    volume = SimpleNamespace(raw=SimpleNamespace(shape=(1, 8, 8)), voxel_size_nm=(40, 8, 8))
    monkeypatch.setattr(ut, "load_synth_volume", lambda d, seed: SimpleNamespace(**vars(volume), path=Path(d)))
    monkeypatch.setattr(ut, "VesselJob", lambda *a: SimpleNamespace(factor_of=lambda v: 1))
    monkeypatch.setattr(ut, "training_record", lambda *a: {"seconds": 1.0, "steps": 1})
    monkeypatch.setattr(ut, "_describe", lambda d: {"path": str(d)})
    if fail_in_card:

        def card(p):
            assert (Path(p) / "model.json").is_file()  # the new model is half written
            raise RuntimeError("killed mid-export")

        monkeypatch.setattr(ut, "write_model_card", card)
    else:
        old_json = (out / "model.json").read_bytes()

        def card(p):
            # while the new model is written, MODEL_DIR still holds the old one, whole
            assert (out / "model.json").read_bytes() == old_json and Path(p) != out
            (Path(p) / "MODEL_CARD.md").write_text("new card\n")

        monkeypatch.setattr(ut, "write_model_card", card)
    return ut


def _train_vessel_overwriting(ut, data, out):
    import inspect

    kw = {"overwrite": True} if "overwrite" in inspect.signature(ut.train_vessel).parameters else {}
    return ut.train_vessel(data, out, **kw)


def test_mid_export_failure_leaves_previous_model_intact(tmp_path, monkeypatch):
    out = _finished_copy("vessel", tmp_path / "models")
    before = tree_digest(out)
    ut = _fake_vessel_training(monkeypatch, tmp_path, True, out)
    with pytest.raises(RuntimeError, match="killed mid-export"):
        _train_vessel_overwriting(ut, [tmp_path / "s"], out)
    assert tree_digest(out) == before
    assert _siblings(out) == []


def test_overwrite_swaps_in_complete_model_and_keeps_train(tmp_path, monkeypatch):
    out = _finished_copy("vessel", tmp_path / "models")
    old_train = tree_digest(out / "train")
    ut = _fake_vessel_training(monkeypatch, tmp_path, False, out)
    summary = _train_vessel_overwriting(ut, [tmp_path / "s"], out)
    assert summary["model_dir"] == str(out)
    assert (out / "MODEL_CARD.md").read_text() == "new card\n"
    assert (out / "model.json").is_file() and (out / "weights.npz").is_file()
    assert tree_digest(out / "train") == old_train  # checkpoints stay where resume looks for them
    assert _siblings(out) == []


def test_export_into_unfinished_out_keeps_checkpoints(tmp_path):
    from connectome.training.export import staged_model_dir

    out = tmp_path / "m"
    (out / "train" / "checkpoints").mkdir(parents=True)
    (out / "train" / "checkpoints" / "ckpt-5.index").write_bytes(b"ckpt")
    with staged_model_dir(out) as tmp:
        (tmp / "weights.npz").write_bytes(b"w")
        (tmp / "model.json").write_text("{}")
    assert (out / "train" / "checkpoints" / "ckpt-5.index").read_bytes() == b"ckpt"
    assert (out / "model.json").is_file() and _siblings(out) == []


def test_kill_between_the_two_renames_is_recovered(tmp_path):
    """The only instant MODEL_DIR is absent: the old one was renamed aside; the next run puts it back."""
    from connectome.errors import UserInputError
    from connectome.training.export import check_out_dir

    out = _finished_copy("vessel", tmp_path / "models")
    before = tree_digest(out)
    os.rename(out, out.with_name(f".{out.name}.replaced-0123456789ab"))
    with pytest.raises(UserInputError, match="--overwrite"):
        check_out_dir(out)
    assert tree_digest(out) == before and _siblings(out) == []
