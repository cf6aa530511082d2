"""``AlignConfig``: the typed config of ``connectome align`` (its own module, so the align stage,
its report and the transform composition can all import it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass, field

from connectome.config import BlockwiseConfig
from connectome.montage.align import MatchParams
from connectome.montage.zsolve import DriftPrior


@dataclass(frozen=True)
class AlignConfig:
    #: registration of one section pair (coarse affine, patches, filtering, smooth field)
    pair: MatchParams = field(default_factory=MatchParams)
    #: match every section to this many preceding sections (1 = its predecessor only); more
    #: gives the joint solve redundant matches (weight 1/distance), at that many times the cost
    neighbours: int = 1
    #: bridge bad sections by matching to z-2 .. z-max_skip
    max_skip: int = 4
    #: node spacing (px) of the stored section transforms over the aligned frame
    grid_spacing_px: int = 32
    #: sections whose montage shows a straight dark band scoring above this are folded (bad)
    max_fold_score: float = 3.8
    #: drift control: pull of each section towards its stitched stage frame, per kind of motion,
    #: relative to one match (see :mod:`.zsolve`; all 0 = plain composition of the matches)
    drift_prior: DriftPrior = field(default_factory=DriftPrior)
    #: spline order of the final resampling (1 = bilinear, 3 = cubic)
    interpolation_order: int = 3
    #: how many evenly spaced sections get a preview PNG (bad and bridged ones always do)
    preview_sections: int = 4
    #: render blocks (and chunks of raw)
    blockwise: BlockwiseConfig = field(default_factory=lambda: BlockwiseConfig(block_shape_zyx=(8, 256, 256)))

    def __post_init__(self):
        if self.max_skip < 1 or self.grid_spacing_px < 4 or self.neighbours < 1:
            raise ValueError("max_skip >= 1, neighbours >= 1 and grid_spacing_px >= 4 are required")
        if self.interpolation_order not in (0, 1, 3):
            raise ValueError(f"interpolation_order must be 0, 1 or 3, got {self.interpolation_order}")
