"""Joint solve of all section transforms from the pairwise matches, with drift control.

Unknowns: for every section ``z`` the displacement ``u_z(p) = T_z(p) - p`` at the nodes ``p`` of
one grid over the aligned frame (``T_z`` maps the aligned frame into section ``z``'s montage,
i.e. stage, frame). Each usable match ``P_{z<-r}`` (montage frame of ``r`` -> montage frame of
``z``, ``P(q) = q + D(q)``) says ``T_z = P o T_r``, linearised at the current estimate::

    u_z(p) - u_r(p) = D_zr(p + u_r(p))                                  weight w_zr

Composition along z simply sums these differences, and every pairwise estimate also carries the
apparent motion of structures that run obliquely through the sections (a neurite at 45 degrees
moves one section thickness per section: 5 px at 40 nm x 8 nm voxels). Content-based matching
cannot tell that motion from the sections' own drift, so summed over many sections it makes the
stack shear and wander. The solve therefore adds a weak prior that each section lies near its
stitched *stage* frame (``u_z = 0``), as Allen's EM_aligner / BigFeta regularise towards the
starting transforms. The prior is split over three kinds of motion, each with its own weight
relative to one match (per node, dimensionless):

* ``translation`` -- the node-mean of ``u_z`` (stage placement repeats to a few px),
* ``linear``      -- the linear part (rotation, scale, shear about the frame centre): sections
                     hardly rotate or stretch, while oblique content fakes such changes,
* ``warp``        -- what the best-fit affine leaves: the section's own elastic warp, which is
                     independent from section to section, not a running sum.

These three parts are orthogonal projections of the node field (an orthonormal basis of
``1, y, x`` over the nodes), and the match term acts along z only, so the least-squares problem
splits into one small ``n_sections x n_sections`` sparse system per part, solved for all nodes
and both components at once::

    (L + lambda_g I) U_g = B,    u = sum_g Pi_g U_g

``L`` is the weighted graph Laplacian of the matches with the reference section held at 0,
``B`` the summed match displacements. A weight of 0 gives plain composition (no drift control).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DriftPrior:
    """How far a section may lie from its stitched stage frame (px, one standard deviation of
    each kind of motion; 0 = no pull), and how uncertain a match between sections is."""

    #: node-mean translation of a section
    translation_px: float = 6.0
    #: linear part (rotation, scale, shear about the frame centre), RMS over the frame
    linear_px: float = 1.0
    #: non-affine warp, RMS over the frame
    warp_px: float = 1.5
    #: uncertainty of a match whose sections correlate with NCC ``c`` after registration:
    #: ``match_px * (1 - c) / c`` (identical sections pin each other; sections whose content
    #: changed a lot -- oblique structures -- say little about the sections' own drift)
    match_px: float = 1.0

    def __post_init__(self):
        for k in ("translation_px", "linear_px", "warp_px", "match_px"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"drift_prior.{k} must be >= 0, got {getattr(self, k)}")

    def weights(self) -> tuple[float, float, float]:
        """Prior weights (translation, linear, warp) in units of 1/px^2."""
        return tuple(1.0 / v ** 2 if v > 0 else 0.0 for v in (self.translation_px, self.linear_px, self.warp_px))

    def match_weight(self, ncc: float, distance: int) -> float:
        """Weight (1/px^2) of a match with correlation ``ncc`` between sections ``distance`` apart."""
        c = min(max(float(ncc) if ncc == ncc else 0.0, 0.05), 0.999)
        sigma = max(self.match_px * (1.0 - c) / c, 0.02)
        return 1.0 / (sigma ** 2 * max(1, distance))


@dataclass(frozen=True)
class Edge:
    """One usable match: ``u_z - u_r = D(p + u_r)``; ``disp`` maps (n, 2) montage points of
    section ``r`` to the displacement ``D`` there."""

    z: int
    r: int
    weight: float
    disp: object  # callable (n, 2) -> (n, 2)


def projectors(nodes_yx: np.ndarray) -> list[np.ndarray]:
    """(translation, linear, warp) orthogonal projectors (n x n) of node fields over ``nodes``."""
    pts = np.asarray(nodes_yx, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    c = pts - pts.mean(axis=0)
    b0 = np.ones((n, 1)) / np.sqrt(n)
    lin = c[:, [0, 1]]
    lin = lin[:, np.linalg.norm(lin, axis=0) > 1e-9]
    b1 = np.linalg.qr(lin)[0] if lin.shape[1] else np.zeros((n, 0))
    p0 = b0 @ b0.T
    p1 = b1 @ b1.T
    return [p0, p1, np.eye(n) - p0 - p1]


def solve(nodes_yx: np.ndarray, reference: int, unknowns: list[int], edges: list[Edge], prior: DriftPrior,
          iterations: int = 2) -> dict[int, np.ndarray]:
    """Node displacements ``u_z`` (ny, nx, 2) for every section of ``unknowns``; ``reference``
    is held at 0. Every unknown must be connected to the reference through ``edges``."""
    from scipy.sparse import coo_matrix, identity
    from scipy.sparse.linalg import splu

    shape = np.asarray(nodes_yx).shape
    pts = np.asarray(nodes_yx, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    index = {z: i for i, z in enumerate(unknowns)}
    m = len(unknowns)
    if not m:
        return {}
    rows, cols, vals = [], [], []
    for e in edges:
        iz, ir = index[e.z], index.get(e.r)
        rows.append(iz), cols.append(iz), vals.append(e.weight)
        if ir is not None:
            rows += [ir, iz, ir]
            cols += [ir, ir, iz]
            vals += [e.weight, -e.weight, -e.weight]
    lap = coo_matrix((vals, (rows, cols)), shape=(m, m)).tocsc()
    lams = prior.weights()
    factors = [splu((lap + (lam + 1e-9) * identity(m, format="csc")).tocsc()) for lam in lams]
    proj = projectors(pts)
    u = np.zeros((m, n, 2))
    for _ in range(max(1, iterations)):
        rhs = np.zeros((m, n, 2))
        for e in edges:
            ir = index.get(e.r)
            at = pts + (u[ir] if ir is not None else 0.0)
            d = e.weight * np.asarray(e.disp(at), dtype=np.float64)
            rhs[index[e.z]] += d
            if ir is not None:
                rhs[ir] -= d
        new = np.zeros_like(u)
        flat = rhs.reshape(m, 2 * n)
        for lu, pr in zip(factors, proj):
            sol = lu.solve(flat).reshape(m, n, 2)
            new += np.einsum("ij,mjk->mik", pr, sol)
        u = new
    return {z: u[index[z]].reshape(shape) for z in unknowns}
