"""SWC files: ``n type x y z radius parent`` per line (x, y, z and radius in nm; parent -1 for a
root; type 0 = undefined). One tree per connected component; vertices are numbered from 1 in
depth-first order from each component's first vertex, so the file is deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from connectome.skeletons.model import Skeleton


def to_swc(sk: Skeleton, comment: str = "") -> str:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import depth_first_order

    n = sk.n_vertices
    lines = [f"# {c}" for c in comment.splitlines()] + ["# n type x y z radius parent (nm)"]
    if n == 0:
        return "\n".join(lines) + "\n"
    e = sk.edges
    g = coo_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(n, n)).tocsr()
    seen = np.zeros(n, bool)
    number = np.zeros(n, np.int64)
    rows: list[str] = []
    radii = sk.radii_nm if sk.radii_nm is not None else np.zeros(n)
    for root in range(n):
        if seen[root]:
            continue
        order, pred = depth_first_order(g, root, directed=False, return_predecessors=True)
        for v in order:
            seen[v] = True
            number[v] = len(rows) + 1
            parent = int(number[pred[v]]) if pred[v] >= 0 else -1
            z, y, x = sk.vertices_nm[v]
            rows.append(f"{number[v]} 0 {x:.3f} {y:.3f} {z:.3f} {float(radii[v]):.3f} {parent}")
    return "\n".join(lines + rows) + "\n"


def from_swc(text: str) -> Skeleton:
    ids, verts, radii, parents = [], [], [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) < 7:
            raise ValueError(f"SWC line has {len(f)} fields, expected 7: {line!r}")
        ids.append(int(f[0]))
        verts.append((float(f[4]), float(f[3]), float(f[2])))
        radii.append(float(f[5]))
        parents.append(int(f[6]))
    index = {i: k for k, i in enumerate(ids)}
    edges = [(index[p], k) for k, p in enumerate(parents) if p != -1 and p in index]
    return Skeleton(
        np.array(verts).reshape(-1, 3), np.array(edges, np.int64).reshape(-1, 2), np.array(radii, np.float32)
    )


def write_swc(path: str | Path, sk: Skeleton, comment: str = "") -> None:
    from connectome.atomic import atomic_write_text

    atomic_write_text(path, to_swc(sk, comment))


def read_swc(path: str | Path) -> Skeleton:
    return from_swc(Path(path).read_text())
