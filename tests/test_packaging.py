"""The wheel ships every model and config the stages use by default: each file under
``unet/models``, ``ffn/models``, ``unet/configs`` and ``ffn/configs`` (``[tool.setuptools.package-data]``
in pyproject.toml), so an installed ``connectome`` finds the same shipped models as a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIRS = ("unet/models", "ffn/models", "unet/configs", "ffn/configs")
#: local state that is not part of a model (gitignored ``MODEL_DIR/train/``: checkpoints and logs)
NOT_SHIPPED = {"train", "__pycache__"}


def _shipped_files() -> list[str]:
    out = []
    for d in DATA_DIRS:
        for p in sorted((ROOT / d).rglob("*")):
            rel = p.relative_to(ROOT)
            if p.is_file() and not (set(rel.parts) & NOT_SHIPPED) and not any(s.startswith(".") for s in rel.parts):
                out.append(rel.as_posix())
    return out


def _source_copy(dest: Path) -> Path:
    """The files the build needs, copied away from the working tree (so the build writes no
    ``build/`` or ``*.egg-info`` into the checkout others work in)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "train", ".*")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for pkg in ("connectome", "ffn", "unet", "hpo"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=ignore, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"wheel build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels = list(out.glob("connectome-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        yield zf


def test_every_shipped_model_and_config_file_is_in_the_wheel(wheel):
    shipped = _shipped_files()
    assert {
        "unet/models/vessel/weights.npz",
        "unet/models/vessel/train.yaml",
        "unet/models/synapse/model.json",
        "ffn/models/boundary16/MODEL_CARD.md",
        "unet/configs/synapse_demo.yaml",
        "ffn/configs/boundary16.yaml",
    } <= set(shipped)
    names = set(wheel.namelist())
    missing = [f for f in shipped if f not in names]
    assert not missing, f"not in the wheel (fix [tool.setuptools.package-data] in pyproject.toml): {missing}"


def test_the_wheel_ships_the_models_byte_for_byte_and_no_training_state(wheel):
    for f in _shipped_files():
        assert wheel.read(f) == (ROOT / f).read_bytes(), f
    assert not [n for n in wheel.namelist() if "/train/" in n and n.split("/")[1] == "models"]
