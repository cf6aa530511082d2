"""What an evaluation compares: the ground truth folder and the workspace's outputs.

Ground truth (a ``connectome synth`` output, see ``shared/CONTRACT.md``)::

    DIR/truth.zarr/            zarr v3 group: raw uint8, neurons uint64 (0 = none),
                               vessels uint8 {0,1}, synapse_clefts uint64; attr voxel_size_nm
    DIR/truth/synapses.csv     synapse_id,z,y,x,pre_segment_id,post_segment_id,score (voxels)
    DIR/truth/connectivity.csv pre_segment_id,post_segment_id,synapse_count,mean_score
    DIR/truth/tiles.csv        section,row,col,x,y  (true tile top-left positions, px)

Workspace outputs, each optional: ``WS/stitch/tiles.csv``, ``WS/volume.zarr/{raw,
vessel_mask, segmentation}``, ``WS/synapses.csv``, ``WS/connectivity.csv``.

Opening validates what can be checked up front (folders exist, arrays readable, shapes and
voxel sizes agree), so a bad input fails before any metric is computed or anything written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, cast

import numpy as np

from connectome.errors import UserInputError

if TYPE_CHECKING:
    import zarr

    from connectome.workspace import Workspace

TRUTH_ARRAYS = ("raw", "neurons", "vessels", "synapse_clefts")


@dataclass
class TruthSet:
    """An opened ground-truth folder."""

    path: Path
    group: zarr.Group
    array_names: tuple[str, ...]

    @classmethod
    def open(cls, path: str | Path) -> "TruthSet":
        import zarr
        from zarr.storage import LocalStore

        path = Path(path)
        if not path.exists():
            raise UserInputError(f"truth {path}: not found (expected a `connectome synth` output folder)")
        if not path.is_dir():
            raise UserInputError(f"truth {path}: not a folder (expected a `connectome synth` output folder)")
        zpath = path / "truth.zarr"
        if not (zpath / "zarr.json").is_file():
            raise UserInputError(
                f"truth {path}: no truth.zarr (zarr v3 group) inside; not a `connectome synth` output folder"
            )
        try:
            group = zarr.open_group(LocalStore(str(zpath), read_only=True), mode="r", zarr_format=3)
            names = tuple(sorted(name for name, _ in group.arrays()))
        except Exception as exc:  # zarr raises a variety of errors for broken metadata
            raise UserInputError(f"truth {zpath}: not a readable zarr v3 group ({exc})") from None
        return cls(path, group, names)

    def has(self, name: str) -> bool:
        return name in self.array_names

    def array(self, name: str):
        return self.group[name]

    def table(self, name: str) -> Optional[Path]:
        """``DIR/truth/<name>`` if it exists."""
        p = self.path / "truth" / name
        return p if p.is_file() else None

    def voxel_size_nm(self) -> Optional[tuple[float, float, float]]:
        for name in self.array_names:
            vs: Any = self.group[name].attrs.get("voxel_size_nm")
            if vs is not None and len(vs) == 3:
                return cast("tuple[float, float, float]", tuple(float(v) for v in vs))
        return None


@dataclass
class WorkspaceOutputs:
    """An opened workspace: its arrays (if it has a volume) and its tables."""

    path: Path
    workspace: Workspace | None

    @classmethod
    def open(cls, path: str | Path) -> "WorkspaceOutputs":
        from connectome.workspace import VOLUME, Workspace

        path = Path(path)
        if not path.exists():
            raise UserInputError(f"workspace {path}: not found")
        if not path.is_dir():
            raise UserInputError(f"workspace {path}: not a folder")
        ws = Workspace.open(path, mode="r") if (path / VOLUME).exists() else None
        out = cls(path, ws)
        if ws is None and not any(out.table(n) for n in ("stitch/tiles.csv", "synapses.csv", "connectivity.csv")):
            raise UserInputError(
                f"workspace {path}: nothing to evaluate (no {VOLUME}, stitch/tiles.csv, "
                "synapses.csv or connectivity.csv); not a connectome workspace"
            )
        return out

    def has(self, name: str) -> bool:
        return self.workspace is not None and self.workspace.has(name)

    def array(self, name: str):
        assert self.workspace is not None  # callers check has() first
        return self.workspace.array(name)

    def table(self, name: str) -> Optional[Path]:
        p = self.path / name
        return p if p.is_file() else None

    @property
    def shape_zyx(self):
        return None if self.workspace is None else tuple(self.workspace.shape_zyx)

    @property
    def voxel_size_nm(self):
        return None if self.workspace is None else tuple(self.workspace.voxel_size_nm)


def check_pair(outputs: WorkspaceOutputs, ws_name: str, truth: TruthSet, truth_name: str) -> None:
    """Shapes of a workspace array and the truth array it is compared with must agree."""
    a, b = outputs.array(ws_name), truth.array(truth_name)
    if tuple(a.shape) != tuple(b.shape):
        raise UserInputError(
            f"shape mismatch: workspace array '{ws_name}' has shape {list(a.shape)} (z,y,x) but "
            f"truth array '{truth_name}' ({truth.path / 'truth.zarr' / truth_name}) has "
            f"{list(b.shape)}"
        )


def check_voxel_size(outputs: WorkspaceOutputs, truth: TruthSet) -> None:
    """The workspace and the truth must share one voxel size (when both state one)."""
    ws_vs, truth_vs = outputs.voxel_size_nm, truth.voxel_size_nm()
    if ws_vs is not None and truth_vs is not None and not np.allclose(ws_vs, truth_vs):
        raise UserInputError(
            f"voxel size mismatch: workspace {outputs.path} has {list(ws_vs)} nm (z,y,x) but "
            f"truth {truth.path / 'truth.zarr'} has {list(truth_vs)} nm"
        )


def iter_boxes(shape_zyx: Sequence[int], block_zyx: Sequence[int]) -> Iterator[tuple[slice, slice, slice]]:
    """Slices of a regular grid of blocks covering ``shape_zyx`` (edge blocks are clipped)."""
    shape = [int(s) for s in shape_zyx]
    block = [max(1, int(b)) for b in block_zyx]
    for z in range(0, shape[0], block[0]):
        for y in range(0, shape[1], block[1]):
            for x in range(0, shape[2], block[2]):
                yield (
                    slice(z, min(z + block[0], shape[0])),
                    slice(y, min(y + block[1], shape[1])),
                    slice(x, min(x + block[2], shape[2])),
                )
