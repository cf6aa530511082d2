"""Voxels of one block: neuron owners, extracellular space, vessel, mitochondria, synapses.

A block is computed on its write box grown by a halo (``HALO_ZYX``), from the global geometry
only, so neighbouring blocks agree on their shared faces::

    1. vessel: signed distance to the vessel wall (lumen + wall = vessel voxels)
    2. neurite bodies: every capsule's signed distance, smallest wins (touching neurites
       share a flat interface; nothing overlaps)
    3. dense fill: voxels outside every body (and outside the vessel) take the owner of the
       nearest body voxel (anisotropic Euclidean distance transform, nm units), so the
       neuropil is dense with polygonal profiles, as in fixed tissue
    4. extracellular space: one voxel on one side of every interface between two different
       owners (and the neurite side next to the vessel) is ECS: a 1 px gap in the truth
       labels; the image draws the membranes 2-3 px dark over it
    5. mitochondria (inside their own neurite only), synaptic clefts, PSDs, active zones

Owner codes in ``BlockVolume.owner``: -1 vessel, 0 nothing reachable (rare), k >= 1 neuron k.
The fill in step 3 looks only as far as the halo; gaps wider than the halo (192 nm in y,x,
120 nm in z) could differ between neighbouring blocks, which the packing makes very rare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from connectome.synth.geometry import VoxelBox, raster_min
from connectome.synth.synapses import Synapses, synapse_fields
from connectome.synth.vessels import Vessel, vessel_extras, vessel_fields

if TYPE_CHECKING:
    from connectome.synth.neurites import Neuropil
    from connectome.synth.presets import SynthConfig

HALO_ZYX = (3, 24, 24)


@dataclass
class Geometry:
    """Everything that is fixed before voxels exist."""

    cfg: SynthConfig
    neuropil: Neuropil
    vessel: Vessel | None
    synapses: Synapses


@dataclass
class BlockVolume:
    box: VoxelBox
    owner: np.ndarray  # int32
    ecs: np.ndarray  # bool
    vessel_sdf: np.ndarray | None
    lumen: np.ndarray | None
    rbc: np.ndarray | None
    endo_nucleus: np.ndarray | None
    mito: np.ndarray  # bool
    mito_sdf: np.ndarray  # float32 (inf far from mitochondria)
    cleft: np.ndarray  # int64 synapse id (index + 1)
    psd: np.ndarray  # bool
    active_zone: np.ndarray  # bool
    dark_nuclei: np.ndarray | None = None  # new-brain parts (vessels.py); None when off/absent
    pericytes: np.ndarray | None = None
    glia: np.ndarray | None = None  # glial sheath: owner 0 (no neuron), drawn light

    def neurons(self) -> np.ndarray:
        """Truth neuron labels (uint64; 0 on vessel, ECS and unowned voxels)."""
        out = np.where((self.owner > 0) & ~self.ecs, self.owner, 0)
        return out.astype(np.uint64)

    def vessels(self) -> np.ndarray:
        return (self.owner == -1).astype(np.uint8)


def grow(core: VoxelBox, world: VoxelBox, halo=HALO_ZYX) -> VoxelBox:
    """``core`` grown by the halo, clipped to the world."""
    hz, hy, hx = halo
    return VoxelBox(
        max(world.z0, core.z0 - hz),
        min(world.z1, core.z1 + hz),
        max(world.y0, core.y0 - hy),
        min(world.y1, core.y1 + hy),
        max(world.x0, core.x0 - hx),
        min(world.x1, core.x1 + hx),
    )


def compute_block(geom: Geometry, box: VoxelBox) -> BlockVolume:
    v = tuple(float(x) for x in geom.cfg.voxel_size_nm)
    vessel_sdf, lumen, rbc, nucleus = (
        vessel_fields(geom.vessel, box, v) if geom.vessel is not None else (None, None, None, None)
    )
    in_vessel = vessel_sdf < 0 if vessel_sdf is not None else np.zeros(box.shape, bool)
    dark, peri, glia = vessel_extras(geom.vessel, box, v, vessel_sdf) if geom.vessel is not None else (None, None, None)
    if dark is not None:  # dark endothelial nuclei are wall, not lumen
        lumen &= ~dark
    if peri is not None:
        lumen &= ~peri
    if glia is not None:  # the sheath is no neuron's: neurites fill up to it, not into it
        in_vessel = in_vessel | glia

    best = np.full(box.shape, np.inf, np.float32)
    own = np.zeros(box.shape, np.int32)
    raster_min(geom.neuropil.capsules, box, v, best, own)
    feat = (best <= 0) & ~in_vessel
    del best
    need = ~feat & ~in_vessel
    if feat.any() and need.any():
        idx = ndi.distance_transform_edt(~feat, sampling=v, return_distances=False, return_indices=True)
        own = np.where(need, own[idx[0], idx[1], idx[2]], own)
        del idx
    elif not feat.any():
        own[:] = 0
    own[in_vessel] = -1
    if glia is not None:
        own[glia] = 0
        in_vessel = in_vessel & ~glia

    ecs = np.zeros(box.shape, bool)
    for axis in (1, 2):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = own[tuple(lo)], own[tuple(hi)]
        diff = a != b
        ecs[tuple(lo)] |= diff & (a > 0)
        ecs[tuple(hi)] |= diff & (a <= 0) & (b > 0)
    ecs |= own == 0

    mito_sdf = np.full(box.shape, np.inf, np.float32)
    mito_own = np.zeros(box.shape, np.int32)
    raster_min(geom.neuropil.mitos, box, v, mito_sdf, mito_own)
    mito = (mito_sdf < 0) & (mito_own == own) & (own > 0)

    cleft, psd, az = synapse_fields(geom.synapses, box, v, own)
    return BlockVolume(box, own, ecs, vessel_sdf, lumen, rbc, nucleus, mito, mito_sdf, cleft, psd, az, dark, peri, glia)
