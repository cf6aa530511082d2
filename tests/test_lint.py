"""Lint, format and types are part of the test run (issue 22): ``ruff check``, ``ruff format
--check`` over the whole tree and ``mypy`` over ``connectome/`` (settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_check_is_clean():
    r = _run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_format_leaves_nothing_to_change():
    r = _run(str(BIN / "ruff"), "format", "--check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_mypy_connectome_is_clean():
    r = _run(sys.executable, "-m", "mypy", "--no-incremental", "connectome")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
