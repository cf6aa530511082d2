"""``connectome import``: an aligned volume -> ``WS/volume.zarr/raw`` (uint8), blockwise.

Out-of-core: each block reads only its own box from the source, so memory is bounded by
``block_shape_zyx`` x workers, whatever the volume size. The workspace frame is the source's
shape with the given voxel size; importing into a workspace with another frame is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, cast

from connectome.blockwise import Block, BlockGrid, OutputSpec, Task
from connectome.config import BlockwiseConfig, config_to_dict
from connectome.errors import UserInputError
from connectome.sources import VolumeSource, open_source
from connectome.stages.intensity import IntensityMap, choose_map
from connectome.workspace import Frame, Workspace, open_array

STAGE = "import"


@dataclass(frozen=True)
class ImportConfig:
    blockwise: BlockwiseConfig = field(default_factory=BlockwiseConfig)
    #: how uint16 input becomes uint8: "percentile" (robust) or "minmax"
    rescale: Literal["percentile", "minmax"] = "percentile"
    #: lower/upper percentiles for rescale "percentile"
    percentiles: tuple[float, float] = (0.1, 99.9)
    #: fixed input range LO, HI mapped to 0..255 (overrides rescale)
    intensity_range: Optional[tuple[float, float]] = None

    def __post_init__(self):
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {list(self.percentiles)}")
        if self.intensity_range is not None and not self.intensity_range[0] < self.intensity_range[1]:
            raise ValueError(f"intensity_range must be LO < HI, got {list(self.intensity_range)}")


Config = ImportConfig


@dataclass(frozen=True)
class ImportBlock:
    """Copy one block of the source into ``raw`` with the intensity map applied."""

    source: VolumeSource
    workspace: str
    intensity: IntensityMap

    def __call__(self, block: Block) -> None:
        data = self.source.read(block.write_box)
        open_array(self.workspace, "raw", mode="r+")[block.write_box.slices] = self.intensity.apply(data)


def plan(src: str, workspace: str | Path, voxel_size_nm, config: ImportConfig = ImportConfig()) -> Task:
    """Validate the source and the workspace; nothing is written until the task runs."""
    source = open_source(src)
    ws_path = Path(workspace)
    frame = Frame(source.shape_zyx, cast("tuple[float, float, float]", tuple(float(v) for v in voxel_size_nm)))
    if Workspace.exists(ws_path):
        Workspace.open(ws_path).check_frame(frame)  # refuses before anything is written
    elif ws_path.exists() and not ws_path.is_dir():
        raise UserInputError(f"workspace {ws_path}: exists and is not a directory")
    intensity = choose_map(source, config.rescale, config.percentiles, config.intensity_range)
    grid = BlockGrid(source.shape_zyx, config.blockwise.block_shape_zyx)
    fingerprint = {"source": source.identity(), "intensity": intensity.to_json(), "config": config_to_dict(config)}
    try:
        st = Path(getattr(source, "path", "") or getattr(source, "files", [""])[0]).stat()
        fingerprint["source"]["mtime_ns"] = st.st_mtime_ns
    except (OSError, IndexError):
        pass
    out = OutputSpec(
        "raw",
        "uint8",
        config.blockwise.block_shape_zyx,
        attrs={"source": source.description, "intensity": intensity.to_json()},
    )
    return Task(
        STAGE,
        ws_path,
        grid,
        ImportBlock(source, str(ws_path), intensity),
        fingerprint,
        (out,),
        max_retries=config.blockwise.max_retries,
        setup=CreateWorkspace(str(ws_path), frame),
    )


@dataclass(frozen=True)
class CreateWorkspace:
    path: str
    frame: Frame

    def __call__(self) -> None:
        Workspace.create(self.path, self.frame.shape_zyx, self.frame.voxel_size_nm)
