"""Shared fixtures: tiny volumes with known content, and CLI runners (in-process and as a
real subprocess)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
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


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A real dask.distributed scheduler + 2 single-thread workers on 127.0.0.1; yields its
    scheduler file."""
    d = tmp_path_factory.mktemp("dask")
    sched_file = d / "scheduler.json"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--scheduler-file", str(sched_file), "--host",
                               "127.0.0.1", "--port", "0", "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "dask scheduler did not start"
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file),
                                       "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1",
                                       "--no-dashboard", "--local-directory", str(d)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d))
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout="30s") as c:
            c.wait_for_workers(2, timeout=90)
        yield sched_file
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
