"""Block geometry: boxes, blocks and the block grid.

Conventions (used everywhere in the project):

* Axis order is always z, y, x; names carry it (``shape_zyx``, ``begin_zyx``).
* A :class:`Box` is half-open: it covers ``begin_zyx <= p < end_zyx`` in voxels.
* The volume is cut into a grid of *write boxes* aligned to ``block_shape_zyx`` (which is
  also, or a multiple of, the chunk shape of the output array, so one block writes whole
  chunks and no two blocks ever write the same chunk). Edge blocks are clipped to the volume.
* The *read box* of a block is its write box grown by the stage's halo on every side, then
  clipped to the volume. Processors that need the full context at the border pad the clipped
  read with :func:`connectome.blockwise.io.read_with_halo`.

::

      read box (write box + halo, clipped to the volume)
     +-----------------------------+
     |   halo                      |
     |    +-------------------+    |
     |    |  write box        |    |   write boxes tile the volume exactly once
     |    |  (block_shape)    |    |
     |    +-------------------+    |
     +-----------------------------+

Block ids are derived from the grid position, ``"z{iz}_y{iy}_x{ix}"``, so they are stable
across runs, executors and machines.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

Zyx = tuple[int, int, int]


def _as_zyx(value, name: str) -> Zyx:
    t = tuple(int(v) for v in value)
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 values (z, y, x), got {value!r}")
    return t


@dataclass(frozen=True)
class Box:
    """Half-open box ``[begin_zyx, end_zyx)`` in voxels."""

    begin_zyx: Zyx
    end_zyx: Zyx

    def __post_init__(self) -> None:
        object.__setattr__(self, "begin_zyx", _as_zyx(self.begin_zyx, "begin_zyx"))
        object.__setattr__(self, "end_zyx", _as_zyx(self.end_zyx, "end_zyx"))

    @property
    def shape_zyx(self) -> Zyx:
        return tuple(max(0, e - b) for b, e in zip(self.begin_zyx, self.end_zyx))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        z, y, x = self.shape_zyx
        return z * y * x

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(b, e) for b, e in zip(self.begin_zyx, self.end_zyx))  # type: ignore[return-value]

    def grow(self, margin_zyx) -> "Box":
        m = _as_zyx(margin_zyx, "margin_zyx")
        return Box(
            _as_zyx((b - d for b, d in zip(self.begin_zyx, m)), "begin_zyx"),
            _as_zyx((e + d for e, d in zip(self.end_zyx, m)), "end_zyx"),
        )

    def intersect(self, other: "Box") -> "Box":
        return Box(
            _as_zyx((max(a, b) for a, b in zip(self.begin_zyx, other.begin_zyx)), "begin_zyx"),
            _as_zyx((min(a, b) for a, b in zip(self.end_zyx, other.end_zyx)), "end_zyx"),
        )

    def relative_to(self, outer: "Box") -> tuple[slice, slice, slice]:
        """Slices that cut this box out of an array covering ``outer``."""
        return tuple(slice(b - o, e - o) for b, e, o in zip(self.begin_zyx, self.end_zyx, outer.begin_zyx))  # type: ignore[return-value]

    def contains(self, other: "Box") -> bool:
        return all(
            ob >= sb and oe <= se
            for sb, se, ob, oe in zip(self.begin_zyx, self.end_zyx, other.begin_zyx, other.end_zyx)
        )


@dataclass(frozen=True)
class Block:
    """One unit of blockwise work: where to read (with halo) and where to write."""

    block_id: str
    index_zyx: Zyx
    write_box: Box
    read_box: Box  # write box + halo, clipped to the volume
    halo_box: Box  # write box + halo, NOT clipped (what a processor wants to see)


@dataclass(frozen=True)
class BlockGrid:
    """A grid of blocks over a volume of ``shape_zyx``."""

    shape_zyx: Zyx
    block_shape_zyx: Zyx
    halo_zyx: Zyx = (0, 0, 0)

    def __post_init__(self) -> None:
        for name in ("shape_zyx", "block_shape_zyx", "halo_zyx"):
            object.__setattr__(self, name, _as_zyx(getattr(self, name), name))
        if any(s <= 0 for s in self.shape_zyx):
            raise ValueError(f"volume shape must be positive, got {self.shape_zyx}")
        if any(b <= 0 for b in self.block_shape_zyx):
            raise ValueError(f"block shape must be positive, got {self.block_shape_zyx}")
        if any(h < 0 for h in self.halo_zyx):
            raise ValueError(f"halo must be >= 0, got {self.halo_zyx}")

    @property
    def volume_box(self) -> Box:
        return Box((0, 0, 0), self.shape_zyx)

    @property
    def grid_shape_zyx(self) -> Zyx:
        return tuple(-(-s // b) for s, b in zip(self.shape_zyx, self.block_shape_zyx))  # type: ignore[return-value]

    @property
    def num_blocks(self) -> int:
        z, y, x = self.grid_shape_zyx
        return z * y * x

    def block(self, index_zyx) -> Block:
        idx = _as_zyx(index_zyx, "index_zyx")
        if any(i < 0 or i >= g for i, g in zip(idx, self.grid_shape_zyx)):
            raise IndexError(f"block index {idx} outside grid {self.grid_shape_zyx}")
        begin = _as_zyx((i * b for i, b in zip(idx, self.block_shape_zyx)), "begin_zyx")
        end = _as_zyx((min(s, bg + b) for s, bg, b in zip(self.shape_zyx, begin, self.block_shape_zyx)), "end_zyx")
        write = Box(begin, end)
        halo = write.grow(self.halo_zyx)
        return Block(
            block_id="z{}_y{}_x{}".format(*idx),
            index_zyx=idx,
            write_box=write,
            read_box=halo.intersect(self.volume_box),
            halo_box=halo,
        )

    def blocks(self) -> Iterator[Block]:
        """All blocks in a fixed (z-major) order."""
        gz, gy, gx = self.grid_shape_zyx
        for idx in itertools.product(range(gz), range(gy), range(gx)):
            yield self.block(idx)

    def to_json(self) -> dict:
        return {
            "shape_zyx": list(self.shape_zyx),
            "block_shape_zyx": list(self.block_shape_zyx),
            "halo_zyx": list(self.halo_zyx),
        }
