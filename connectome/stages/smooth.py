"""``connectome smooth``: an anisotropic Gaussian of ``raw`` (a denoised copy other stages reuse,
e.g. FFN seed finding), computed blockwise with a halo so the result equals filtering the whole
volume at once (``scipy.ndimage.gaussian_filter`` with mode "reflect" at the volume border).

Sigma is given in nm and converted per axis with the workspace voxel size; the halo is the
filter radius, ``int(truncate * sigma_vox + 0.5)`` voxels per axis, exactly as scipy sizes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from connectome.blockwise import Block, BlockGrid, OutputSpec, Task, crop_to_write, read_with_halo
from connectome.config import BlockwiseConfig, config_to_dict
from connectome.workspace import Workspace, open_array

STAGE = "smooth"


@dataclass(frozen=True)
class SmoothConfig:
    blockwise: BlockwiseConfig = field(default_factory=BlockwiseConfig)
    #: Gaussian sigma in nm (z, y, x)
    sigma_nm: tuple[float, float, float] = (40.0, 16.0, 16.0)
    #: filter radius in sigmas (scipy's ``truncate``); also sets the halo each block reads
    truncate: float = 4.0
    #: the workspace array to smooth
    input: str = "raw"
    #: the new array written (not one of the pipeline's arrays, not the input)
    output: str = "raw_smooth"
    #: "uint8" (rounded and clipped to 0..255) or "float32"
    output_dtype: Literal["uint8", "float32"] = "uint8"

    def __post_init__(self):
        if any(s < 0 for s in self.sigma_nm):
            raise ValueError(f"sigma_nm must be >= 0, got {list(self.sigma_nm)}")
        if self.truncate <= 0:
            raise ValueError(f"truncate must be > 0, got {self.truncate}")
        if self.output in ("raw", "segmentation", "vessel_mask", "synapse_prob") or self.output == self.input:
            raise ValueError(f"output must be a new array name, got '{self.output}'")


Config = SmoothConfig


def sigma_voxels(sigma_nm, voxel_size_nm) -> tuple[float, float, float]:
    return tuple(float(s) / float(v) for s, v in zip(sigma_nm, voxel_size_nm))  # type: ignore[return-value]


def halo_for(sigma_vox, truncate: float) -> tuple[int, int, int]:
    return tuple(int(truncate * s + 0.5) for s in sigma_vox)  # type: ignore[return-value]


@dataclass(frozen=True)
class SmoothBlock:
    workspace: str
    input: str
    output: str
    sigma_vox: tuple[float, float, float]
    truncate: float
    output_dtype: str

    def __call__(self, block: Block) -> None:
        from scipy.ndimage import gaussian_filter

        data = read_with_halo(open_array(self.workspace, self.input), block, mode="symmetric")
        smoothed = gaussian_filter(data.astype(np.float32), self.sigma_vox, truncate=self.truncate, mode="reflect")
        out = crop_to_write(smoothed, block)
        if self.output_dtype == "uint8":
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        open_array(self.workspace, self.output, mode="r+")[block.write_box.slices] = out


def plan(workspace: str | Path, config: SmoothConfig = SmoothConfig()) -> Task:
    ws = Workspace.open(workspace)
    ws.require_complete(config.input, "smooth")  # clear error if missing or unfinished
    svox = sigma_voxels(config.sigma_nm, ws.voxel_size_nm)
    grid = BlockGrid(ws.shape_zyx, config.blockwise.block_shape_zyx, halo_for(svox, config.truncate))
    out = OutputSpec(
        config.output,
        config.output_dtype,
        config.blockwise.block_shape_zyx,
        attrs={"sigma_nm": list(config.sigma_nm), "from": config.input},
    )
    proc = SmoothBlock(str(ws.path), config.input, config.output, svox, config.truncate, config.output_dtype)
    return Task(
        STAGE, ws.path, grid, proc, {"config": config_to_dict(config)}, (out,), max_retries=config.blockwise.max_retries
    )
