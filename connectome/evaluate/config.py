"""The evaluation's typed, frozen config (loadable with :func:`connectome.config.load_config`).

Every threshold a metric uses is a field here, so a report states exactly what it measured
(``evaluation.json`` carries the config it was computed with).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluateConfig:
    #: Volumes are read in blocks of this shape (z, y, x); memory is bounded by a few blocks.
    block_shape_zyx: tuple[int, int, int] = (16, 512, 512)
    #: Alignment residual: side of the square patches (px) compared by phase correlation.
    #: Clipped to the section size; patches lie on a non-overlapping grid.
    patch_px: int = 128
    #: Alignment residual: patches whose std (grey levels) is below this in either volume are
    #: skipped (blank or flat regions carry no displacement information).
    patch_min_std: float = 2.0
    #: Alignment QC: residuals above this (px) are counted as bad (Allen montage QC uses 4 px).
    residual_flag_px: float = 4.0
    #: Segmentation split/merge counts: an overlap of a truth object and a segment counts when it
    #: holds at least ``overlap_min_voxels`` voxels and at least ``overlap_min_fraction`` of the
    #: truth object or of the segment (whichever is smaller).
    overlap_min_fraction: float = 0.05
    overlap_min_voxels: int = 100
    #: Synapse matching: largest distance (nm) between a predicted and a true synapse location
    #: for them to match (CREMI / synful use 400 nm).
    synapse_match_distance_nm: float = 400.0
    #: Connectivity: edge-level scores are reported for edges with at least each of these
    #: synapse counts (1 = every edge; 2 = the "neuron-pair level" of synful/CREMI reports).
    edge_min_synapses: tuple[int, ...] = (1, 2)
    #: Alignment criteria against the truth transforms (:mod:`.align_truth`): step (px) of the
    #: grid of the aligned frame on which the misplacement D_z(p) is evaluated.
    align_grid_px: int = 16
    #: Targets of the alignment criteria (each reported with a pass flag):
    #: (a) adjacent-pair error median and 95th percentile (px)
    target_adjacent_median_px: float = 1.0
    target_adjacent_p95_px: float = 2.0
    #: (b) worst per-section RMS (px) after removing one global affine
    target_accumulated_px: float = 5.0
    #: (c) drift (px per section)
    target_drift_px_per_section: float = 0.1
    #: (d) mean neighbour NCC of the aligned volume minus that of the truth, both computed on
    #: sections smoothed by a Gaussian of ``over_registration_smooth_px`` (0 = raw pixels)
    target_over_registration_ncc: float = 0.02
    over_registration_smooth_px: float = 1.0
    #: (e) adapted Rand error of the default segmenter on the aligned volume minus on the truth raw
    target_downstream_arand: float = 0.02
    #: (e) run the downstream criterion (segments the truth raw in WS/evaluate/truth_raw/:
    #: predict-boundaries + segment; minutes). ``connectome evaluate --downstream`` sets it.
    downstream: bool = False
    #: Skeleton metrics (:mod:`.skeletons`): a segment counts as holding a true skeleton (for
    #: merges and splits) when at least this much of the skeleton's cable (nm) lies in it
    skeleton_min_overlap_nm: float = 100.0
    #: how many of the worst mergers (by true skeleton length affected) evaluation.json lists
    skeleton_top_mergers: int = 10

    def __post_init__(self) -> None:
        if len(self.block_shape_zyx) != 3 or any(int(b) <= 0 for b in self.block_shape_zyx):
            raise ValueError(f"block_shape_zyx must be 3 positive ints, got {list(self.block_shape_zyx)}")
        if self.patch_px < 8:
            raise ValueError(f"patch_px must be >= 8, got {self.patch_px}")
        if self.patch_min_std < 0 or self.residual_flag_px < 0:
            raise ValueError("patch_min_std and residual_flag_px must be >= 0")
        if not 0 <= self.overlap_min_fraction <= 1:
            raise ValueError(f"overlap_min_fraction must be in [0, 1], got {self.overlap_min_fraction}")
        if self.overlap_min_voxels < 1:
            raise ValueError(f"overlap_min_voxels must be >= 1, got {self.overlap_min_voxels}")
        if not self.synapse_match_distance_nm > 0:
            raise ValueError(f"synapse_match_distance_nm must be > 0, got {self.synapse_match_distance_nm}")
        if self.align_grid_px < 1:
            raise ValueError(f"align_grid_px must be >= 1, got {self.align_grid_px}")
        if not self.skeleton_min_overlap_nm >= 0 or self.skeleton_top_mergers < 0:
            raise ValueError("skeleton_min_overlap_nm and skeleton_top_mergers must be >= 0")
        if not self.edge_min_synapses or any(k < 1 for k in self.edge_min_synapses):
            raise ValueError(f"edge_min_synapses must be ints >= 1, got {list(self.edge_min_synapses)}")
