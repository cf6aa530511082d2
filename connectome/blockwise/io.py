"""Reading a block with its halo and writing its write box.

``read_with_halo`` returns an array covering the block's *unclipped* halo box: the part
inside the volume is read, the part outside is filled by mirror padding (numpy "symmetric",
which equals scipy.ndimage's ``mode="reflect"``) or a constant. A processor computes on it
and hands back the write box with :func:`crop_to_write`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from connectome.blockwise.geometry import Block

#: the padding modes of :func:`numpy.pad`
PadMode = Literal[
    "constant", "edge", "linear_ramp", "maximum", "mean", "median", "minimum", "reflect", "symmetric", "wrap", "empty"
]


def read_with_halo(array, block: Block, mode: PadMode = "symmetric", constant: float = 0) -> np.ndarray:
    data = np.asarray(array[block.read_box.slices])
    pad = [
        (rb - hb, he - re)
        for rb, re, hb, he in zip(
            block.read_box.begin_zyx, block.read_box.end_zyx, block.halo_box.begin_zyx, block.halo_box.end_zyx
        )
    ]
    if not any(a or b for a, b in pad):
        return data
    if mode == "constant":
        return np.pad(data, pad, mode="constant", constant_values=constant)
    # "symmetric" padding wider than the data repeats the reflection (np.pad handles it).
    return np.pad(data, pad, mode=mode)


def crop_to_write(data: np.ndarray, block: Block) -> np.ndarray:
    """Cut the write box out of an array covering the block's halo box."""
    return data[block.write_box.relative_to(block.halo_box)]
