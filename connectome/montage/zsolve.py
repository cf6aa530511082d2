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
splits into one small sparse system per part, solved for all nodes and both components at once.

Two more unknowns (node fields, shared by all sections) make the prior fair:

* ``mu`` -- the common offset of the sections from their stage frames: the prior pulls each
  section (the reference, which defines the aligned frame, excepted) towards ``mu``, not towards
  0, so a systematic offset of every stitched frame is not fought against;
* ``c``  -- the *content flow*: the motion of the tissue from one section to the next that the
  matches carry (oblique fibres). Each match reads ``u_z - u_r + kappa c = D``, where ``kappa``
  is the match's distance in sections times its uncertainty in units of ``match_px``
  (sections that look alike had no content move between them). Sections scatter around their
  stage frames while the flow accumulates along z, so a trend of the matches along z is told
  from drift by the stage frames (the stationarity the prior encodes); ``c`` has a weak prior
  (``flow_px``) and is reported (``info['flow_yx']``, px per section), never applied to the
  transforms: the aligned volume keeps the tissue's real motion.

Without a prior weight (0) ``c`` is not estimated and the solve is plain composition.

"""

from __future__ import annotations

from collections.abc import Callable
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
    #: estimate the content flow (a motion shared by the whole stack, in proportion to how much
    #: a match's sections differ) with the transforms and keep it out of them (only where the
    #: prior pulls, i.e. its weight > 0); ``flow_px`` is its prior sigma, px per section for a
    #: match of uncertainty ``match_px``
    estimate_flow: bool = True
    flow_px: float = 0.5
    flow_scales_with_match: bool = True

    def __post_init__(self):
        for k in ("translation_px", "linear_px", "warp_px", "match_px", "flow_px"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"drift_prior.{k} must be >= 0, got {getattr(self, k)}")

    def weights(self) -> tuple[float, float, float]:
        """Prior weights (translation, linear, warp) in units of 1/px^2."""
        t, lin, w = (1.0 / v**2 if v > 0 else 0.0 for v in (self.translation_px, self.linear_px, self.warp_px))
        return t, lin, w

    def match_weight(self, ncc: float, distance: int) -> float:
        """Weight (1/px^2) of a match with correlation ``ncc`` between sections ``distance`` apart."""
        c = min(max(float(ncc) if ncc == ncc else 0.0, 0.05), 0.999)
        sigma = max(self.match_px * (1.0 - c) / c, 0.02)
        return 1.0 / (sigma**2 * max(1, distance))


@dataclass(frozen=True)
class Edge:
    """One usable match: ``u_z - u_r = D(p + u_r)``; ``disp`` maps (n, 2) montage points of
    section ``r`` to the displacement ``D`` there."""

    z: int
    r: int
    weight: float
    disp: Callable[[np.ndarray], np.ndarray]  # (n, 2) -> (n, 2)


def flow_coefficient(edge: Edge, prior: DriftPrior) -> float:
    """How much content flow a match carries: its distance in sections times its uncertainty in
    units of ``match_px`` (sections that look alike had no content move between them)."""
    k = max(1, edge.z - edge.r)
    if not prior.flow_scales_with_match:
        return float(k)
    sigma = 1.0 / np.sqrt(max(edge.weight, 1e-12) * k)
    return float(k * sigma / prior.match_px) if prior.match_px > 0 else float(k)


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


def solve(
    nodes_yx: np.ndarray,
    reference: int,
    unknowns: list[int],
    edges: list[Edge],
    prior: DriftPrior,
    iterations: int = 2,
    info: dict | None = None,
) -> dict[int, np.ndarray]:
    """Node displacements ``u_z`` (ny, nx, 2) for every section of ``unknowns``; ``reference``
    is held at 0. Every unknown must be connected to the reference through ``edges``.

    With ``prior.estimate_flow`` the content flow ``c`` (a node field, px per section) is
    estimated with the transforms and kept out of them; ``info`` (a dict), when given,
    receives ``flow_yx`` (its node mean) and ``flow_field`` (ny, nx, 2)."""
    from scipy.linalg import cho_factor, cho_solve

    shape = np.asarray(nodes_yx).shape
    pts = np.asarray(nodes_yx, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    index = {z: i for i, z in enumerate(unknowns)}
    m = len(unknowns)
    if not m:
        return {}
    # unknowns per node and component: u_0..u_{m-1}, mu (the sections' common offset from their
    # stage frames), c (content flow per section)
    imu, ic = m, m + 1
    design = []  # (weight, coefficients {column: value}) of the match equations
    for e in edges:
        coef = {index[e.z]: 1.0}
        if e.r in index:
            coef[index[e.r]] = -1.0
        coef[ic] = flow_coefficient(e, prior)
        design.append((e.weight, coef))
    factors = []
    for lam in prior.weights():
        mat = np.zeros((m + 2, m + 2))
        for w, coef in design:
            cols = [k for k in coef if k != ic or (prior.estimate_flow and lam > 0)]
            for a in cols:
                for b in cols:
                    mat[a, b] += w * coef[a] * coef[b]
        if lam > 0:  # every section near the common offset mu (not the reference: it defines the frame)
            for z in range(m):
                mat[z, z] += lam
                mat[z, imu] -= lam
                mat[imu, z] -= lam
            mat[imu, imu] += lam * m
        mat[np.diag_indices(m + 2)] += 1e-9
        mat[imu, imu] += 1e-6
        mat[ic, ic] += 1e-6 + (1.0 / prior.flow_px**2 if prior.flow_px > 0 else 0.0)
        factors.append((cho_factor(mat), prior.estimate_flow and lam > 0))
    proj = projectors(pts)
    u = np.zeros((m, n, 2))
    flow = np.zeros((n, 2))
    for _ in range(max(1, iterations)):
        rhs = np.zeros((m + 2, n, 2))
        for (w, coef), e in zip(design, edges):
            ir = index.get(e.r)
            at = pts + (u[ir] if ir is not None else 0.0)
            d = w * np.asarray(e.disp(at), dtype=np.float64)
            for k, v in coef.items():
                rhs[k] += v * d
        new = np.zeros_like(u)
        flow = np.zeros((n, 2))
        for (fac, with_flow), pr in zip(factors, proj):
            r = rhs.copy()
            if not with_flow:
                r[ic] = 0.0
            sol = cho_solve(fac, r.reshape(m + 2, 2 * n)).reshape(m + 2, n, 2)
            new += np.einsum("ij,mjk->mik", pr, sol[:m])
            flow += pr @ sol[ic]
        u = new
    if info is not None:  # in px per section, for the typical match of this stack
        typical = float(np.median([flow_coefficient(e, prior) / max(1, e.z - e.r) for e in edges])) if edges else 0.0
        info["flow_yx"] = [float(v) * typical for v in flow.mean(axis=0)]
        info["flow_field"] = flow.reshape(shape) * typical
    return {z: u[index[z]].reshape(shape) for z in unknowns}
