"""Skeletons of segments: blockwise TEASAR skeletonisation (kimimaro), Neuroglancer precomputed
skeletons, SWC files.

Conventions (shared by every module here): a :class:`Skeleton` holds vertices in nm, axis order
z, y, x, with a voxel's centre at ``(i + 0.5) * voxel_size_nm`` (as the mesh export and the
synthetic centre lines); edges are pairs of vertex indices; radii (nm) are optional. Files on
disk (precomputed, SWC) store x, y, z, as those formats require.

Modules: :mod:`.model` (the value type), :mod:`.skeletonize` (kimimaro per block and the joins
across block borders), :mod:`.stage` (``connectome skeletonize``), :mod:`.precomputed` and
:mod:`.swc` (file formats).
"""

from connectome.skeletons.model import Skeleton

__all__ = ["Skeleton"]
