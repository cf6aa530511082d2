"""Where stitching keeps its results in a workspace, and how stages reach them.

::

    WS/stitch/montages.zarr/     zarr v3 group, attribute "montage" (canvas offset, frame, fingerprint)
      montage                    uint8 (z, Hc, Wc): element [z, i, j] = montage point (i - oy, j - ox)
      coverage                   uint8 {0, 1}: 1 where at least one tile covers the pixel
    WS/stitch/sections/z00000.json   the result record of one section (see :mod:`.stitch_stage`)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from connectome.errors import UserInputError

MONTAGES = "montages.zarr"


def montages_path(workspace) -> Path:
    return Path(workspace) / "stitch" / MONTAGES


def section_result_path(workspace, z: int) -> Path:
    return Path(workspace) / "stitch" / "sections" / f"z{z:05d}.json"


def _open_montages(path: Path, mode: Literal["r", "r+", "a", "w", "w-"] = "r"):
    import zarr
    from zarr.storage import LocalStore

    return zarr.open_group(LocalStore(str(path), read_only=(mode == "r")), mode=mode, zarr_format=3)


def open_montages(workspace):
    """(montage array, coverage array, attrs) of a stitched workspace; a clear error if absent."""
    path = montages_path(workspace)
    if not (path / "zarr.json").is_file():
        raise UserInputError(f"workspace {workspace}: no stitched montages ({path}); run `connectome stitch` first")
    try:
        group = _open_montages(path)
        return group["montage"], group["coverage"], dict(group.attrs["montage"])
    except Exception as exc:  # noqa: BLE001 - broken store
        raise UserInputError(f"{path}: not a readable montage store ({exc})") from None


def is_driver_process() -> bool:
    """False on MPI ranks other than 0 (tables are written once)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is None or mpi.COMM_WORLD.Get_rank() == 0
