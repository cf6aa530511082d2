"""Where this process stands in an MPI launch (from the launcher's environment; no MPI import)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from connectome.errors import UserInputError


def mpi_rank() -> Optional[int]:
    """This process's MPI rank when launched by mpiexec (MPICH/PALS/Open MPI/PMIx), else None."""
    for var in ("PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def mpiexec_path() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        raise UserInputError("ranks > 1 needs `mpiexec` on PATH (pip install mpich, or load the MPI module)")
    return found
