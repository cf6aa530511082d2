"""The skeleton value type: vertices (nm, z y x), edges, optional radii (nm).

Small graph operations used by the skeletoniser and the metrics: concatenation, merging of
vertices at the same position (how block pieces are joined), cropping to a box, cable length,
connected components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass
class Skeleton:
    vertices_nm: np.ndarray  # (N, 3) float64, z y x, nm
    edges: np.ndarray  # (M, 2) int64, vertex indices
    radii_nm: Optional[np.ndarray] = None  # (N,) float32, nm

    def __post_init__(self) -> None:
        self.vertices_nm = np.asarray(self.vertices_nm, np.float64).reshape(-1, 3)
        self.edges = np.asarray(self.edges, np.int64).reshape(-1, 2)
        if self.radii_nm is not None:
            self.radii_nm = np.asarray(self.radii_nm, np.float32).reshape(-1)
            if self.radii_nm.size != len(self.vertices_nm):
                raise ValueError(f"radii: {self.radii_nm.size} values for {len(self.vertices_nm)} vertices")
        if self.edges.size and (self.edges.min() < 0 or self.edges.max() >= len(self.vertices_nm)):
            raise ValueError("edge refers to a missing vertex")

    # ------------------------------------------------------------------ queries
    @property
    def n_vertices(self) -> int:
        return len(self.vertices_nm)

    def edge_lengths_nm(self) -> np.ndarray:
        if not self.edges.size:
            return np.zeros(0)
        d = self.vertices_nm[self.edges[:, 0]] - self.vertices_nm[self.edges[:, 1]]
        return np.sqrt((d * d).sum(1))

    def length_nm(self) -> float:
        """Cable length: the sum of the edge lengths."""
        return float(self.edge_lengths_nm().sum())

    def components(self) -> tuple[int, np.ndarray]:
        """(number of connected components, component label of each vertex)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = self.n_vertices
        if n == 0:
            return 0, np.zeros(0, np.int64)
        g = coo_matrix((np.ones(len(self.edges)), (self.edges[:, 0], self.edges[:, 1])), shape=(n, n))
        k, labels = connected_components(g, directed=False)
        return int(k), labels.astype(np.int64)

    # ------------------------------------------------------------------ building
    @classmethod
    def empty(cls) -> "Skeleton":
        return cls(np.zeros((0, 3)), np.zeros((0, 2), np.int64), np.zeros(0, np.float32))

    @classmethod
    def concat(cls, parts: Sequence["Skeleton"]) -> "Skeleton":
        parts = [p for p in parts if p.n_vertices]
        if not parts:
            return cls.empty()
        offsets = np.cumsum([0] + [p.n_vertices for p in parts[:-1]])
        radii = None
        if all(p.radii_nm is not None for p in parts):
            radii = np.concatenate([p.radii_nm for p in parts])
        return cls(
            np.concatenate([p.vertices_nm for p in parts]),
            np.concatenate([p.edges + o for p, o in zip(parts, offsets)]),
            radii,
        )

    def merged_duplicates(self, decimals: int = 3) -> "Skeleton":
        """Vertices at the same position (to ``decimals`` nm) become one (the largest radius is
        kept); self-loops and repeated edges are dropped. Vertices come out sorted by position,
        so the result does not depend on the order of the pieces."""
        if self.n_vertices == 0:
            return Skeleton.empty()
        key = np.round(self.vertices_nm, decimals)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        radii = None
        if self.radii_nm is not None:
            radii = np.zeros(len(uniq), np.float32)
            np.maximum.at(radii, inv, self.radii_nm)
        e = np.sort(inv[self.edges], axis=1) if self.edges.size else np.zeros((0, 2), np.int64)
        e = e[e[:, 0] != e[:, 1]]
        e = np.unique(e, axis=0) if e.size else e.reshape(0, 2)
        return Skeleton(uniq, e, radii)

    def subset(self, keep: np.ndarray) -> "Skeleton":
        """The vertices where ``keep`` is True and the edges between them."""
        keep = np.asarray(keep, bool)
        new = np.full(self.n_vertices, -1, np.int64)
        new[keep] = np.arange(int(keep.sum()))
        e = new[self.edges] if self.edges.size else np.zeros((0, 2), np.int64)
        e = e[(e >= 0).all(1)]
        return Skeleton(self.vertices_nm[keep], e, None if self.radii_nm is None else self.radii_nm[keep])

    def cropped(self, lo_nm, hi_nm) -> "Skeleton":
        """The part inside the box ``[lo_nm, hi_nm)`` (z, y, x): vertices outside are dropped with
        their edges."""
        v = self.vertices_nm
        return self.subset(np.all((v >= np.asarray(lo_nm)) & (v < np.asarray(hi_nm)), axis=1))

    def joined_close_components(self, radius_nm: float) -> "Skeleton":
        """Connect components closer than ``radius_nm`` (closest vertex pair first, until one
        component is left or none are that close). Joins pieces that block borders left a
        little apart; pieces further apart stay separate."""
        out = self
        while True:
            k, labels = out.components()
            if k <= 1 or radius_nm <= 0:
                return out
            from scipy.spatial import cKDTree

            best = None
            big = np.bincount(labels).argmax()
            inside, outside = np.flatnonzero(labels == big), np.flatnonzero(labels != big)
            d, j = cKDTree(out.vertices_nm[inside]).query(out.vertices_nm[outside], k=1)
            i = int(np.argmin(d))
            if d[i] <= radius_nm:
                best = (int(inside[j[i]]), int(outside[i]))
            if best is None:
                # the largest component is isolated; try the others among themselves once
                rest = out.subset(labels != big)
                joined = rest.joined_close_components(radius_nm)
                if joined.edges.shape[0] == rest.edges.shape[0]:
                    return out
                return Skeleton.concat([out.subset(labels == big), joined])
            out = Skeleton(out.vertices_nm, np.vstack([out.edges, np.array([sorted(best)])]), out.radii_nm)
