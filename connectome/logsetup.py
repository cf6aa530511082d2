"""Logging for command-line runs: a concise stream on stderr plus a full log file per run in
``WS/logs/<command>-<UTC time>.log`` when the command has a workspace."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbosity: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity > 0 else logging.INFO)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("distributed", "tornado", "asyncio", "numcodecs", "fsspec", "matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # its warnings duplicate our own errors
    # a temporary file a killed write left inside a zarr group is not a member; zarr says so on
    # every listing, which would break the one-line-on-stderr rule of exit code 2
    import warnings

    warnings.filterwarnings("ignore", message=r".*\.partial.*is not recognized as a component")


def add_log_file(workspace: str | Path, command: str) -> Path | None:
    """Add a DEBUG-level file handler under ``WS/logs``; None if the folder cannot be made."""
    try:
        logs = Path(workspace) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = logs / f"{command}-{stamp}-{os.getpid()}.log"
        fh = logging.FileHandler(path)
    except OSError:
        return None
    fh.setFormatter(logging.Formatter(FMT))
    fh.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(fh)
    return path
