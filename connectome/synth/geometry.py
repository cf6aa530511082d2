"""Shapes in physical space and how they become voxels.

Conventions (used by every module of :mod:`connectome.synth`)::

    physical point (nm)  (z, y, x), origin at the top-left-front corner of the truth volume
    voxel (k, j, i)      covers [k*vz, (k+1)*vz) x [j*vy, (j+1)*vy) x [i*vx, (i+1)*vx);
                         its centre is ((k+.5)*vz, (j+.5)*vy, (i+.5)*vx)
    world voxels         may have negative (y, x) indices: the world extends past the truth
                         frame by margins so that drifted sections have tissue at their edges

Every neurite, spine, mitochondrion and vessel is a chain of *cone capsules*: a segment a->b
whose radius goes linearly from ra to rb. The signed distance of a point X to one capsule is
``|X - (a + t (b-a))| - (ra + t (rb-ra))`` with ``t`` the clamped projection of X on the
segment: negative inside, positive outside (exact for cylinders and spheres, a close
approximation for slowly varying radii). A voxel belongs to the capsule of smallest signed
distance, so two touching neurites share a flat interface instead of overlapping.

:class:`ClearanceGrid` keeps the same signed distance on a coarse isotropic grid while neurites
are grown, so that each new neurite can steer around the ones already placed (packing).
:class:`LabelOracle` answers "which neurite owns this point?" for single points, with the same
rule the voxel rasteriser uses, so that synapses can be placed on real interfaces before any
voxel exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Capsules:
    """M cone capsules a->b with radii ra->rb (nm) and an integer owner each."""

    a: np.ndarray  # (M, 3) float64
    b: np.ndarray  # (M, 3)
    ra: np.ndarray  # (M,)
    rb: np.ndarray  # (M,)
    owner: np.ndarray  # (M,) int64

    def __post_init__(self) -> None:
        r = np.maximum(self.ra, self.rb)[:, None]
        self.lo = np.minimum(self.a, self.b) - r
        self.hi = np.maximum(self.a, self.b) + r

    def __len__(self) -> int:
        return len(self.owner)

    @classmethod
    def empty(cls) -> "Capsules":
        z3, z1 = np.zeros((0, 3)), np.zeros(0)
        return cls(z3, z3.copy(), z1, z1.copy(), np.zeros(0, np.int64))

    @classmethod
    def from_polylines(cls, chains) -> "Capsules":
        """``chains``: iterable of (points (N,3), radii (N,), owner); N >= 1 (N == 1: a sphere)."""
        a, b, ra, rb, own = [], [], [], [], []
        for pts, rad, owner in chains:
            pts = np.asarray(pts, float)
            rad = np.broadcast_to(np.asarray(rad, float), (len(pts),))
            if len(pts) == 1:
                pts, rad = np.repeat(pts, 2, axis=0), np.repeat(rad, 2)
            a.append(pts[:-1])
            b.append(pts[1:])
            ra.append(rad[:-1])
            rb.append(rad[1:])
            own.append(np.full(len(pts) - 1, owner, np.int64))
        if not a:
            return cls.empty()
        return cls(np.concatenate(a), np.concatenate(b), np.concatenate(ra), np.concatenate(rb), np.concatenate(own))

    def touching(self, lo_nm, hi_nm, pad_nm: float = 0.0) -> np.ndarray:
        """Indices of capsules whose bounding box meets the box [lo, hi] grown by pad."""
        lo = np.asarray(lo_nm) - pad_nm
        hi = np.asarray(hi_nm) + pad_nm
        return np.nonzero(np.all(self.lo <= hi, axis=1) & np.all(self.hi >= lo, axis=1))[0]


def capsule_sdf_grid(zc, yc, xc, a, b, ra, rb) -> np.ndarray:
    """Signed distance (float32, nm) of one capsule on the grid of centre coordinates zc x yc x xc."""
    u = (np.asarray(b, np.float64) - a).astype(np.float32)
    L2 = np.float32(u @ u)
    inv = np.float32(1.0 / L2 if L2 > 1e-9 else 0.0)
    dz = (zc - np.float32(a[0]))[:, None, None]
    dy = (yc - np.float32(a[1]))[None, :, None]
    dx = (xc - np.float32(a[2]))[None, None, :]
    pr = (dz * u[0] + dy * u[1]) + dx * u[2]  # (d . u), full 3-D from here on
    t = np.multiply(pr, inv)
    np.clip(t, 0.0, 1.0, out=t)
    d2 = (dz * dz + dy * dy) + dx * dx  # |d|^2
    # |d - t u|^2 = |d|^2 + t (t L2 - 2 d.u)
    tmp = np.multiply(t, L2)
    tmp -= pr
    tmp -= pr
    tmp *= t
    d2 += tmp
    np.maximum(d2, 0.0, out=d2)
    np.sqrt(d2, out=d2)
    t *= np.float32(rb - ra)
    t += np.float32(ra)
    d2 -= t
    return d2


def capsule_sdf_points(pts, caps: Capsules, idx) -> np.ndarray:
    """Signed distance (n, m) of n points to the capsules ``idx`` (exact float64)."""
    a, b = caps.a[idx], caps.b[idx]
    ra, rb = caps.ra[idx], caps.rb[idx]
    u = b - a
    L2 = np.einsum("ij,ij->i", u, u)
    inv = np.where(L2 > 1e-9, 1.0 / np.maximum(L2, 1e-9), 0.0)
    d = pts[:, None, :] - a[None, :, :]
    t = np.clip(np.einsum("nmk,mk->nm", d, u) * inv, 0.0, 1.0)
    diff = d - t[..., None] * u[None]
    return np.sqrt(np.einsum("nmk,nmk->nm", diff, diff)) - (ra + t * (rb - ra))


@dataclass(frozen=True)
class VoxelBox:
    """A box of voxels [z0,z1) x [y0,y1) x [x0,x1) in world voxel indices."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0)

    def centres(self, voxel_nm):
        vz, vy, vx = voxel_nm
        return (
            (np.arange(self.z0, self.z1, dtype=np.float32) + 0.5) * np.float32(vz),
            (np.arange(self.y0, self.y1, dtype=np.float32) + 0.5) * np.float32(vy),
            (np.arange(self.x0, self.x1, dtype=np.float32) + 0.5) * np.float32(vx),
        )

    def bounds_nm(self, voxel_nm):
        v = np.asarray(voxel_nm, float)
        return np.array([self.z0, self.y0, self.x0]) * v, np.array([self.z1, self.y1, self.x1]) * v

    def intersect(self, other: "VoxelBox") -> "VoxelBox | None":
        z0, y0, x0 = max(self.z0, other.z0), max(self.y0, other.y0), max(self.x0, other.x0)
        z1, y1, x1 = min(self.z1, other.z1), min(self.y1, other.y1), min(self.x1, other.x1)
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            return None
        return VoxelBox(z0, z1, y0, y1, x0, x1)

    def slices_in(self, outer: "VoxelBox") -> tuple[slice, slice, slice]:
        """This box as slices of an array that holds ``outer``."""
        return (
            slice(self.z0 - outer.z0, self.z1 - outer.z0),
            slice(self.y0 - outer.y0, self.y1 - outer.y0),
            slice(self.x0 - outer.x0, self.x1 - outer.x0),
        )


def _index_ranges(caps: Capsules, idx, box: VoxelBox, voxel_nm, pad_nm: float):
    v = np.asarray(voxel_nm, float)
    lo = np.ceil((caps.lo[idx] - pad_nm) / v - 0.5).astype(np.int64)  # first centre >= lo
    hi = np.floor((caps.hi[idx] + pad_nm) / v - 0.5).astype(np.int64) + 1  # past the last centre <= hi
    lo = np.maximum(lo, [box.z0, box.y0, box.x0])
    hi = np.minimum(hi, [box.z1, box.y1, box.x1])
    return lo, hi


def raster_min(
    caps: Capsules,
    box: VoxelBox,
    voxel_nm,
    best: np.ndarray,
    own: np.ndarray | None = None,
    pad_nm: float = 0.0,
    owner_map: np.ndarray | None = None,
) -> None:
    """For each voxel of ``box``: keep the smallest signed distance over the capsules in
    ``best`` (float32, box shape) and the owner of that capsule in ``own``. Only voxels within
    ``pad_nm`` of a capsule are visited (others keep their value)."""
    lo_nm, hi_nm = box.bounds_nm(voxel_nm)
    idx = caps.touching(lo_nm, hi_nm, pad_nm)
    if len(idx) == 0:
        return
    zc, yc, xc = box.centres(voxel_nm)
    lo, hi = _index_ranges(caps, idx, box, voxel_nm, pad_nm)
    for k, c in enumerate(idx):
        (z0, y0, x0), (z1, y1, x1) = lo[k], hi[k]
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        sl = (slice(z0 - box.z0, z1 - box.z0), slice(y0 - box.y0, y1 - box.y0), slice(x0 - box.x0, x1 - box.x0))
        sdf = capsule_sdf_grid(zc[sl[0]], yc[sl[1]], xc[sl[2]], caps.a[c], caps.b[c], caps.ra[c], caps.rb[c])
        sub = best[sl]
        m = sdf < sub
        np.copyto(sub, sdf, where=m)
        if own is not None:
            np.copyto(own[sl], caps.owner[c] if owner_map is None else owner_map[c], where=m)


class ClearanceGrid:
    """Coarse isotropic grid of the smallest signed distance to everything placed so far.

    Values are clipped at ``reach_nm`` (far = free). ``lookup(p) - r`` is the clearance a
    sphere of radius r at p would have; negative means it would overlap something.
    """

    def __init__(self, lo_nm, hi_nm, cell_nm: float, reach_nm: float):
        self.lo = np.asarray(lo_nm, float)
        self.cell = float(cell_nm)
        self.reach = float(reach_nm)
        shape = np.maximum(1, np.ceil((np.asarray(hi_nm, float) - self.lo) / self.cell).astype(int))
        self.c = np.full(tuple(shape), self.reach, np.float32)
        self._cells = VoxelBox(0, shape[0], 0, shape[1], 0, shape[2])
        self._last = np.array(shape) - 1
        self._inv = 1.0 / self.cell

    def lookup(self, pts) -> np.ndarray:
        """Grid value at each point (points outside the grid read the nearest edge cell)."""
        i = ((np.atleast_2d(pts) - self.lo) * self._inv).astype(np.intp)
        np.clip(i, 0, self._last, out=i)
        return self.c[i[:, 0], i[:, 1], i[:, 2]]

    def commit_chain(self, points: np.ndarray, radii: np.ndarray) -> None:
        """Add one smooth chain; every other skeleton point is enough at the grid's resolution
        (the chord of two ~100 nm steps deviates < 10 nm from the arc)."""
        keep = np.r_[np.arange(0, len(points) - 1, 2), len(points) - 1]
        self.commit(Capsules.from_polylines([(points[keep], radii[keep], 1)]))

    def commit(self, caps: Capsules) -> None:
        """Add capsules (their signed distance, within ``reach``) to the grid."""
        shifted = Capsules(caps.a - self.lo, caps.b - self.lo, caps.ra, caps.rb, caps.owner)
        raster_min(shifted, self._cells, (self.cell,) * 3, self.c, pad_nm=self.reach)

    def covered_fraction(self, lo_nm, hi_nm) -> float:
        i0 = np.clip(np.floor((np.asarray(lo_nm) - self.lo) / self.cell).astype(int), 0, self.c.shape)
        i1 = np.clip(np.ceil((np.asarray(hi_nm) - self.lo) / self.cell).astype(int), 0, self.c.shape)
        sub = self.c[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]]
        return float(np.count_nonzero(sub < 0)) / max(1, sub.size)


class LabelOracle:
    """Pointwise owner lookup with the voxel rasteriser's rule (smallest signed distance),
    vessel first. Returns -1 inside a vessel, 0 where no surface is within ``fill_reach_nm``.

    Capsules are split into thin and thick ones, each with its own k-d tree of midpoints and
    search reach, so a query near thin axons does not have to visit every dendrite segment.
    """

    def __init__(self, caps: Capsules, vessel: Capsules | None, fill_reach_nm: float = 200.0):
        from scipy.spatial import cKDTree

        self.caps = caps
        self.vessel = vessel if vessel is not None and len(vessel) else None
        self.fill_reach = fill_reach_nm
        r = np.maximum(caps.ra, caps.rb)
        mid = 0.5 * (caps.a + caps.b)
        half = 0.5 * np.linalg.norm(caps.b - caps.a, axis=1)
        self.groups = []
        for sel in (np.nonzero(r <= 250.0)[0], np.nonzero(r > 250.0)[0]):
            if len(sel):
                reach = float(half[sel].max() + r[sel].max() + fill_reach_nm)
                self.groups.append((sel, cKDTree(mid[sel]), reach))

    def labels(self, pts) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(pts, float))
        out = np.zeros(len(pts), np.int64)
        centre = pts.mean(axis=0)
        spread = float(np.max(np.linalg.norm(pts - centre, axis=1)))
        near = [
            sel[np.asarray(tree.query_ball_point(centre, spread + reach), dtype=np.int64)]
            for sel, tree, reach in self.groups
        ]
        idx = np.concatenate(near) if near else np.zeros(0, np.int64)
        if len(idx):
            sdf = capsule_sdf_points(pts, self.caps, idx)
            k = np.argmin(sdf, axis=1)
            best = sdf[np.arange(len(pts)), k]
            out = np.where(best <= self.fill_reach, self.caps.owner[idx[k]], 0)
        if self.vessel is not None:
            vs = capsule_sdf_points(pts, self.vessel, np.arange(len(self.vessel))).min(axis=1)
            out = np.where(vs < 0, -1, out)
        return out
