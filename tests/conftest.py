"""Shared fixtures: tiny volumes with known content, and CLI runners (in-process and as a
real subprocess)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m connectome ARGS`` as a real process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "connectome", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``path`` (to prove nothing changed)."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def volume_u8() -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.integers(0, 256, size=(13, 70, 57), dtype=np.uint8)


@pytest.fixture
def cli():
    return run_cli
