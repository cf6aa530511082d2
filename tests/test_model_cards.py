"""Model cards record commands and data paths relative to the repository root: the shipped cards
hold no machine-specific absolute path, and the code that writes cards makes paths inside the
checkout relative (``connectome/training/provenance.py``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from connectome.training.provenance import portable_command, portable_path, repo_root

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIRS = sorted(p for pkg in ("unet", "ffn") for p in (ROOT / pkg / "models").iterdir() if p.is_dir())

#: an absolute POSIX path of two or more components (``/work/main/x``, ``/tmp/ws``) starting a token,
#: a home-relative path, or a Windows drive path; "precision / recall" or "synapses/um^3" are not
ABSOLUTE = re.compile(r"(?:^|[\s\"'=(\[,])(/[\w.+-]+/[\w.+/-]*|~/[\w.+/-]+|[A-Za-z]:\\[\w\\.]+)")


def _card_files(model_dir: Path) -> list[Path]:
    """The files a model directory ships besides its weights (``train/`` holds local run state
    and is not shipped)."""
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in (".md", ".json", ".yaml", ".yml"))


def test_there_are_shipped_models_with_cards():
    names = {p.relative_to(ROOT).as_posix() for p in MODEL_DIRS}
    assert {"unet/models/vessel", "unet/models/synapse", "unet/models/boundary", "ffn/models/boundary16"} <= names
    for d in MODEL_DIRS:
        assert (d / "MODEL_CARD.md").is_file() and (d / "model.json").is_file(), d


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shipped_cards_contain_no_absolute_path(model_dir):
    for f in _card_files(model_dir):
        hits = [m.group(1) for m in ABSOLUTE.finditer(f.read_text())]
        assert not hits, f"{f.relative_to(ROOT)}: absolute paths {hits[:5]}; write them relative to the repository root"


def test_the_absolute_path_pattern_catches_what_cards_used_to_hold():
    old = "connectome train synapse --config /work/main/unet/configs/x.yaml --data /tmp/d1 --out=/scratch/m"
    assert [m.group(1) for m in ABSOLUTE.finditer(old)] == ["/work/main/unet/configs/x.yaml", "/tmp/d1", "/scratch/m"]
    assert not ABSOLUTE.findall('F1 (precision / recall) 0.9, 4 synapses/um^3, "data/b1101", 0..255 = 0..1')


def test_repo_root_is_this_checkout():
    assert repo_root() == ROOT


def test_portable_path_inside_outside_and_relative(tmp_path):
    root = tmp_path / "repo"
    (root / "unet" / "configs").mkdir(parents=True)
    assert portable_path(root / "unet" / "configs" / "a.yaml", root=root) == "unet/configs/a.yaml"
    assert portable_path(root, root=root) == "."
    assert portable_path(tmp_path / "elsewhere" / "d", root=root) == str(tmp_path / "elsewhere" / "d")
    # a relative path is read against the working directory, then made relative to the root
    assert portable_path("../x.yaml", root=root, cwd=root / "unet" / "configs") == "unet/x.yaml"
    assert portable_path("data/b1", root=root, cwd=tmp_path) == str(tmp_path / "data" / "b1")


def test_portable_path_keeps_a_symlinked_folder_of_the_checkout_inside_it(tmp_path):
    root, outside = tmp_path / "repo", tmp_path / "scratch"
    root.mkdir()
    (outside / "b1101").mkdir(parents=True)
    os.symlink(outside, root / "data")
    assert portable_path(root / "data" / "b1101", root=root) == "data/b1101"
    assert portable_path(outside / "b1101", root=root) == str(outside / "b1101")


def test_portable_command(tmp_path):
    root = tmp_path / "repo"
    (root / "models" / "vessel").mkdir(parents=True)
    argv = [
        str(root / ".venv" / "bin" / "connectome"),
        "train",
        "vessel",
        "--config",
        str(root / "c.yaml"),
        "--data",
        str(tmp_path / "synth" / "d1"),
        "--out=" + str(root / "models" / "m"),
        "--steps",
        "1900",
        "--val",
        "v 1/x",
    ]
    assert portable_command(argv, root=root, cwd=root) == (
        f"connectome train vessel --config c.yaml --data {tmp_path / 'synth' / 'd1'} --out=models/m --steps 1900 "
        "--val 'v 1/x'"
    )
    # a subcommand word stays a word even where a folder of that name exists in the working directory
    cmd = portable_command(
        ["x/connectome/__main__.py", "train", "vessel", "--out", "vessel"], root=root, cwd=root / "models"
    )
    assert cmd == "connectome train vessel --out models/vessel"


def test_the_trainers_record_repo_relative_commands():
    from unet.train import _command_line

    argv = [
        str(ROOT / ".venv" / "bin" / "connectome"),
        "train",
        "synapse",
        "--config",
        str(ROOT / "unet" / "configs" / "synapse_demo.yaml"),
        "--out",
        "/nonexistent-elsewhere/model",
    ]
    assert _command_line(argv) == (
        "connectome train synapse --config unet/configs/synapse_demo.yaml --out /nonexistent-elsewhere/model"
    )
