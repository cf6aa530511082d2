"""Neuropil geometry: packed, branching neurites with spines, boutons and mitochondria.

Every neurite is a smooth random tube grown by a *persistent random walk* in physical (nm)
space: each step keeps most of the previous direction (persistence length ~4 um for axons,
~10 um for dendrites), so neurites run straight-ish at all angles through the sections, not
only along z. Start points are drawn inside the volume (the emptiest of several candidates)
with isotropic directions; each walk is extended both ways until it leaves a box slightly larger
than the world, so neurites enter and leave through the faces as in a real block of tissue.

Packing: before each step a walker probes a few candidate directions, closest to its current
direction first, against a coarse :class:`~connectome.synth.geometry.ClearanceGrid` of the
neurites already placed, and takes the first one where its sphere fits; if none fits it takes
the roomiest and squeezes its radius (down to a floor), as real axons do between boutons. So
neurites bend around each other and touch closely instead of crossing. Order: vessel, dendrites
(with their spines), then axons until the bodies cover ``body_coverage`` of the volume; the
remaining thin gaps are given to the nearest neurite when voxels are made (``volume.py``), which
gives the dense, polygonal profiles of fixed neuropil.

Calibres and densities, with references:

* axons: radius median 60 nm (40-150; squeezed down to 35 nm where packed), after the fill
  0.1-0.3 um thin unmyelinated cortical axons
  (Shepherd & Harris 1998, J Neurosci 18:8300), en-passant boutons every ~4 um, 0.35-0.6 um
  wide (Shepherd & Harris 1998), rare collaterals;
* dendrites: radius median 380 nm (250-900), i.e. 0.5-1.8 um shafts, branching, with spines
  1.6 / um (Harris & Kater 1994, Annu Rev Neurosci 17:341): neck 80-130 nm wide, 0.3-0.9 um
  long, head 0.25-0.5 um wide;
* mitochondria: in dendrites ~1 per 1.2 um, in axons ~1 per 4 um, 0.25-3 um long, diameter
  30-45% of the neurite (Kasthuri et al. 2015, Cell 162:648, Fig. 3 statistics);
* volume fractions: ~30% dendrites, ~35-45% axons, the rest filled (Chklovskii et al. 2002,
  Neuron 34:341). Glia and somata are not modelled (their volume goes to neurites).

Oriented fibres (off by default): ``fibre_fraction`` of the axon volume is grown as oriented
fibres that run around one common axis instead of isotropically, as in a fibre tract, stratum
radiatum or a block cut at an angle to a fascicle. The free axons are grown first, up to their
share (1 - ``fibre_fraction``) of the axon volume, then the fibres until the bodies cover
``body_coverage``. The axis is given by the in-plane motion it produces, ``fibre_flow_px``
(dy, dx) px per section: axis ~ (z, y, x) = (vz, dy * vy, dx * vx) nm for voxel size
(vz, vy, vx), so a fibre on the axis moves by exactly (dy, dx) px from each section to the next
and the tissue content as a whole flows that way (measured as ``synth.json`` ->
``statistics.content_flow``, see :mod:`.flow`; the other content dilutes it, to ~0.6-0.8 of
``fibre_flow_px`` at 70% fibres). Each fibre's own direction is drawn around the axis
(``fibre_spread_deg``, sigma per axis); it walks with a longer persistence (``_FIBRE``), is
pulled back to its direction over ``FIBRE_PULL_NM``, and may only take the
``FIBRE_CANDIDATES`` directions closest to its current one, so where it is crowded it squeezes
(down to the radius floor) rather than turn away. Its collaterals branch off as ordinary axons.
With ``fibre_fraction`` 0 none of this runs and no random number is drawn for it, so the
default volumes are exactly those made before fibres existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from connectome.synth.geometry import Capsules, ClearanceGrid

AXON, DENDRITE, SPINE = 1, 2, 3
KIND_NAMES = {AXON: "axon", DENDRITE: "dendrite", SPINE: "spine"}

#: Neighbourhood the clearance grid knows about (nm); bigger spheres are probed in shells.
REACH_NM = 140.0
_SHELL_NM = 120.0
_DIRS = np.array(
    [[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)], float
)
_DIRS /= np.linalg.norm(_DIRS, axis=1, keepdims=True)
_CAND_SCALES = np.array([1.0, 1.5, 2.5, 2.5, 4.0, 4.0, 6.0, 6.0, 9.0, 9.0])


@dataclass(frozen=True)
class _Walk:
    persistence_nm: float
    step_factor: float
    step_min_nm: float
    step_max_nm: float
    r_min_nm: float
    branch_per_um: float
    log_radius_sigma: float
    bouton_per_um: float


_AXON = _Walk(4000.0, 1.2, 60.0, 150.0, 35.0, 0.03, 0.12, 0.25)
_FIBRE = _Walk(20000.0, 1.2, 60.0, 150.0, 35.0, 0.03, 0.12, 0.25)
#: Length (nm) over which an oriented fibre's direction is pulled back to its own direction.
FIBRE_PULL_NM = 500.0
#: How many of the candidate directions (closest first) an oriented fibre may take at a step.
FIBRE_CANDIDATES = 4
_DENDRITE = _Walk(10000.0, 0.5, 80.0, 250.0, 150.0, 0.08, 0.10, 0.0)


@dataclass
class Tube:
    points: np.ndarray  # (N, 3) nm, z y x
    radii: np.ndarray  # (N,) nm
    neuron: int
    kind: int


@dataclass
class Neuropil:
    tubes: list[Tube]
    neuron_kind: np.ndarray  # kind of each neuron, index = neuron id (0 unused)
    capsules: Capsules  # every tube segment, owner = neuron id
    mitos: Capsules  # mitochondria, owner = neuron id
    stats: dict = field(default_factory=dict)

    def point_table(self):
        """All skeleton points: (points, radii, neuron, kind, is_spine_head)."""
        pts = np.concatenate([t.points for t in self.tubes])
        rad = np.concatenate([t.radii for t in self.tubes])
        neu = np.concatenate([np.full(len(t.points), t.neuron) for t in self.tubes])
        kind = np.concatenate([np.full(len(t.points), t.kind) for t in self.tubes])
        head = np.concatenate(
            [
                np.arange(len(t.points)) == len(t.points) - 1 if t.kind == SPINE else np.zeros(len(t.points), bool)
                for t in self.tubes
            ]
        )
        return pts, rad, neu, kind, head


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _random_dirs(rng, n):
    return _unit(rng.standard_normal((n, 3)))


def _perpendicular(rng, t):
    e = np.cross(t, _random_dirs(rng, 1)[0])
    n = np.linalg.norm(e)
    return e / n if n > 1e-9 else _perpendicular(rng, t)


def fibre_axis(flow_px, voxel_size_nm) -> np.ndarray:
    """Unit (z, y, x) direction along which content moves by ``flow_px`` (dy, dx) px per section."""
    vz, vy, vx = (float(v) for v in voxel_size_nm)
    return _unit(np.array([vz, float(flow_px[0]) * vy, float(flow_px[1]) * vx]))


class NeuropilBuilder:
    """Grows the neurites of one world box (nm) into a shared clearance grid."""

    def __init__(self, cfg, world_lo_nm, world_hi_nm, grid: ClearanceGrid, rng, pad_nm: float = 300.0):
        self.cfg = cfg
        self.lo, self.hi = np.asarray(world_lo_nm, float), np.asarray(world_hi_nm, float)
        self.gen_lo, self.gen_hi = self.lo - pad_nm, self.hi + pad_nm
        self.grid = grid
        self.rng = rng
        self.tubes: list[Tube] = []
        self.kinds: list[int] = [0]
        longest = float(np.linalg.norm(self.gen_hi - self.gen_lo))
        self.max_steps = int(4 * longest / 50.0) + 100

    # ------------------------------------------------------------------ probing
    def _clearance(self, q: np.ndarray, r: float) -> np.ndarray:
        """Clearance of spheres of radius r at candidate centres q (K, 3).

        Spheres larger than the grid's reach are probed as a cloud of smaller spheres (radius
        ``_SHELL_NM``) on concentric shells in 26 directions: approximate, and good enough to
        keep thick dendrites from running through each other.
        """
        if r <= _SHELL_NM:
            return self.grid.lookup(q) - r
        c = self.grid.lookup(q) - _SHELL_NM
        for rho in np.arange(r - _SHELL_NM, 0.0, -_SHELL_NM):
            probes = q[:, None, :] + rho * _DIRS[None]
            v = self.grid.lookup(probes.reshape(-1, 3)).reshape(len(q), -1) - _SHELL_NM
            c = np.minimum(c, v.min(axis=1))
        return c

    def _inside_gen(self, p) -> bool:
        lo, hi = self.gen_lo, self.gen_hi
        return lo[0] <= p[0] <= hi[0] and lo[1] <= p[1] <= hi[1] and lo[2] <= p[2] <= hi[2]

    # ------------------------------------------------------------------ walking
    def _walk(self, start, d, r0: float, kp: _Walk, skip_nm: float = 0.0, toward=None):
        """One persistent random walk from ``start``; ``toward``: a unit direction the walk is
        pulled back to over ``FIBRE_PULL_NM`` (oriented fibres), None for a free walk."""
        rng = self.rng
        pts, rads = [np.asarray(start, float)], [r0]
        p, d = pts[0].copy(), _unit(np.asarray(d, float))
        lr, travelled = 0.0, 0.0
        bouton_pos, bouton_len, bouton_r = -1.0, 0.0, 0.0
        corr = 1000.0
        # a fibre tries only the directions near its own and squeezes rather than turn away
        scales = (_CAND_SCALES if toward is None else _CAND_SCALES[:FIBRE_CANDIDATES])[:, None]
        nbuf, bi = 128, 128
        for _ in range(self.max_steps):
            if bi == nbuf:  # random numbers in bulk: far fewer numpy calls per step
                noise = rng.standard_normal((nbuf, len(scales), 3))
                normal1, uniform1 = rng.standard_normal(nbuf), rng.random(nbuf)
                bi = 0
            r_nom = r0 * np.exp(lr)
            if bouton_pos >= 0:
                bump = np.sin(np.pi * bouton_pos / bouton_len)
                r_nom = max(r_nom, r_nom + (bouton_r - r_nom) * bump)
            step = min(max(kp.step_factor * r_nom, kp.step_min_nm), kp.step_max_nm)
            if toward is not None:
                d = _unit(d + min(1.0, step / FIBRE_PULL_NM) * (toward - d))
            cand = d + noise[bi] * (scales * np.sqrt(step / kp.persistence_nm))
            cand /= np.sqrt(np.einsum("ij,ij->i", cand, cand))[:, None]
            q = p + step * cand
            if travelled < skip_nm:
                k, r = 0, r_nom
            else:
                c = self._clearance(q, r_nom)
                c[cand @ d < 0.4] = -np.inf
                ok = np.flatnonzero(c >= 0)
                if len(ok):
                    k, r = int(ok[0]), r_nom
                else:
                    k = int(np.argmax(c))
                    r = max(kp.r_min_nm, r_nom + float(c[k])) if np.isfinite(c[k]) else kp.r_min_nm
            p, d = q[k], cand[k]
            pts.append(p)
            rads.append(r)
            travelled += step
            a = np.exp(-step / corr)
            lr = a * lr + np.sqrt(1 - a * a) * kp.log_radius_sigma * normal1[bi]
            if bouton_pos >= 0:
                bouton_pos += step
                if bouton_pos >= bouton_len:
                    bouton_pos = -1.0
            elif kp.bouton_per_um and uniform1[bi] < step * 1e-3 * kp.bouton_per_um:
                bouton_pos, bouton_len, bouton_r = 0.0, rng.uniform(450, 800), rng.uniform(170, 290)
            bi += 1
            if not self._inside_gen(p):
                break
        return np.array(pts), np.array(rads)

    def _root(self, r0: float, kp: _Walk, fibre: bool = False):
        """A new neurite through the emptiest of 16 random points, grown both ways; a fibre
        starts along its own direction near the common axis and is held to it."""
        cands = self.lo + self.rng.random((16, 3)) * (self.hi - self.lo)
        start = cands[int(np.argmax(self.grid.lookup(cands)))]
        if fibre:
            axis = fibre_axis(self.cfg.fibre_flow_px, self.cfg.voxel_size_nm)
            tilt = np.deg2rad(self.cfg.fibre_spread_deg) * self.rng.standard_normal(3)
            d = _unit(axis + tilt - (tilt @ axis) * axis)
            kp, fwd_to, back_to = _FIBRE, d, -d
        else:
            d = _random_dirs(self.rng, 1)[0]
            fwd_to = back_to = None
        fwd_p, fwd_r = self._walk(start, d, r0, kp, toward=fwd_to)
        back_p, back_r = self._walk(start, -d, r0, kp, toward=back_to)
        return (np.concatenate([back_p[::-1], fwd_p[1:]]), np.concatenate([back_r[::-1], fwd_r[1:]]))

    def _commit(self, tube: Tube) -> None:
        self.tubes.append(tube)
        self.grid.commit_chain(tube.points, tube.radii)

    def _volume_inside(self, pts, rads) -> float:
        mid = 0.5 * (pts[1:] + pts[:-1])
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        inside = np.all((mid >= self.lo) & (mid <= self.hi), axis=1)
        r = 0.5 * (rads[1:] + rads[:-1])
        return float(np.sum(np.pi * r * r * seg * inside))

    def _neurite(self, kind: int, kp: _Walk, r0: float, fibre: bool = False) -> float:
        """Grow one neuron (root + branches), commit it, return its volume inside the world."""
        neuron = len(self.kinds)
        self.kinds.append(kind)
        pts, rads = self._root(r0, kp, fibre)
        self._commit(Tube(pts, rads, neuron, kind))
        vol = self._volume_inside(pts, rads)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        n_branch = self.rng.poisson(kp.branch_per_um * arc[-1] * 1e-3)
        for s in np.sort(self.rng.uniform(0, arc[-1], n_branch)):
            i = int(np.clip(np.searchsorted(arc, s), 1, len(pts) - 1))
            t = _unit(pts[i] - pts[i - 1])
            ang = np.deg2rad(self.rng.uniform(35, 75))
            d = np.cos(ang) * t + np.sin(ang) * _perpendicular(self.rng, t)
            rc = max(kp.r_min_nm, rads[i] * self.rng.uniform(0.6, 0.85))
            bp, br = self._walk(pts[i], d, rc, kp, skip_nm=rads[i] + rc + 40.0)
            self._commit(Tube(bp, br, neuron, kind))
            vol += self._volume_inside(bp, br)
        return vol

    def _spines(self, tube: Tube, density_per_um: float) -> None:
        pts, rads, rng = tube.points, tube.radii, self.rng
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        for s in rng.uniform(0, arc[-1], rng.poisson(density_per_um * arc[-1] * 1e-3)):
            i = int(np.clip(np.searchsorted(arc, s), 1, len(pts) - 1))
            if not np.all((pts[i] >= self.lo) & (pts[i] <= self.hi)):
                continue
            t = _unit(pts[i] - pts[i - 1])
            rd, neck_r, neck_l = rads[i], rng.uniform(40, 65), rng.uniform(300, 900)
            head_r = rng.uniform(125, 250)
            for _ in range(3):
                d = _perpendicular(rng, t)
                head = pts[i] + d * (rd + neck_l + 0.7 * head_r)
                neck_mid = pts[i] + d * (rd + 0.5 * neck_l)
                if (
                    self._clearance(head[None], head_r)[0] >= -0.25 * head_r
                    and self._clearance(neck_mid[None], neck_r)[0] >= -0.5 * neck_r
                ):
                    sp = np.array(
                        [
                            pts[i],
                            pts[i] + d * (rd + 0.5 * neck_l),
                            pts[i] + d * (rd + neck_l),
                            head - d * 0.45 * head_r,
                            head,
                        ]
                    )
                    sr = np.array([neck_r, neck_r, neck_r * 1.15, head_r * 0.8, head_r])
                    self._commit(Tube(sp, sr, tube.neuron, SPINE))
                    break

    # ------------------------------------------------------------------ the whole neuropil
    def _grow_axons(self, target: float, world_vol: float, coverage: float, radius, fibre: bool = False):
        """Grow axons (oriented fibres if ``fibre``) until the bodies cover ``target`` of the
        world or there is no room left; returns (number grown, coverage)."""
        cfg = self.cfg
        length = float(np.linalg.norm(self.hi - self.lo))
        if fibre:  # a fibre crosses the box along the axis, often a shorter way than the diagonal
            axis = np.abs(fibre_axis(cfg.fibre_flow_px, cfg.voxel_size_nm))
            length = min(length, float(np.min((self.hi - self.lo) / np.maximum(axis, 1e-9))))
        axon_vol = np.pi * cfg.axon_radius_median_nm**2 * length
        expected = max(1, int((target - coverage) * world_vol / axon_vol))
        check_every = max(1, expected // 60)
        n_axon, history = 0, []
        while coverage < target and n_axon < 4 * expected + 10:
            self._neurite(AXON, _AXON, radius(cfg.axon_radius_median_nm, cfg.axon_radius_range_nm), fibre)
            n_axon += 1
            if n_axon % check_every == 0:
                coverage = self.grid.covered_fraction(self.lo, self.hi)
                history.append(coverage)
                if len(history) > 8 and history[-1] - history[-8] < 0.002:
                    break  # packed: no room left for another axon
        return n_axon, coverage

    def build(self) -> Neuropil:
        cfg, rng = self.cfg, self.rng
        world_vol = float(np.prod(self.hi - self.lo))

        def radius(median, lo_hi):
            return float(np.clip(median * np.exp(0.35 * rng.standard_normal()), *lo_hi))

        dend_vol, n_dend = 0.0, 0
        while dend_vol < cfg.dendrite_fraction * world_vol and n_dend < 10000:
            dend_vol += self._neurite(
                DENDRITE, _DENDRITE, radius(cfg.dendrite_radius_median_nm, cfg.dendrite_radius_range_nm)
            )
            n_dend += 1
        for tube in [t for t in self.tubes if t.kind == DENDRITE]:
            self._spines(tube, cfg.spine_density_per_um)
        cov_after_dendrites = self.grid.covered_fraction(self.lo, self.hi)

        if cfg.fibre_fraction > 0:  # free axons up to their share of the axon volume, then fibres
            target = cov_after_dendrites + (1.0 - cfg.fibre_fraction) * (cfg.body_coverage - cov_after_dendrites)
            n_axon, cov = self._grow_axons(target, world_vol, cov_after_dendrites, radius)
            n_fibre, _ = self._grow_axons(cfg.body_coverage, world_vol, cov, radius, fibre=True)
        else:
            (n_axon, _), n_fibre = self._grow_axons(cfg.body_coverage, world_vol, cov_after_dendrites, radius), 0
        coverage = self.grid.covered_fraction(self.lo, self.hi)

        neuron_kind = np.array(self.kinds, np.int64)
        caps = Capsules.from_polylines((t.points, t.radii, t.neuron) for t in self.tubes)
        mitos, n_mitos = _mitochondria(self.tubes, cfg, rng)
        stats = {
            "dendrites": n_dend,
            "axons": n_fibre + n_axon,
            **({"fibre_axons": n_fibre} if cfg.fibre_fraction > 0 else {}),
            "spines": sum(t.kind == SPINE for t in self.tubes),
            "mitochondria": n_mitos,
            "body_coverage_dendrites": round(cov_after_dendrites, 4),
            "body_coverage": round(coverage, 4),
        }
        return Neuropil(self.tubes, neuron_kind, caps, mitos, stats)


def _mitochondria(tubes, cfg, rng) -> tuple[Capsules, int]:
    """Elongated mitochondria along the skeletons, off-axis, fully inside their neurite."""
    chains = []
    for tube in tubes:
        if tube.kind == SPINE or len(tube.points) < 2:
            continue
        gap = (cfg.mito_gap_dendrite_um if tube.kind == DENDRITE else cfg.mito_gap_axon_um) * 1000.0
        mean_len = cfg.mito_length_um * 1000.0 * (1.6 if tube.kind == DENDRITE else 1.0)
        pts, rads = tube.points, tube.radii
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        pos = rng.exponential(gap)
        while pos < arc[-1]:
            length = float(np.clip(mean_len * np.exp(0.45 * rng.standard_normal()), 250.0, 3000.0))
            s1 = min(pos + length, arc[-1])
            s = np.linspace(pos, s1, max(2, int(np.ceil((s1 - pos) / 100.0)) + 1))
            mp = np.stack([np.interp(s, arc, pts[:, k]) for k in range(3)], axis=1)
            r_loc = float(np.interp(s, arc, rads).min())
            r_m = float(np.clip(rng.uniform(0.3, 0.45) * r_loc, 22.0, 220.0))
            if r_loc - r_m >= 15.0 and len(mp) >= 2:
                t = _unit(np.gradient(mp, axis=0))
                e = _perpendicular(rng, t[0])
                e = _unit(e - (t @ e)[:, None] * t)
                off = rng.uniform(0.0, 0.8) * (r_loc - r_m - 12.0)
                chains.append((mp + off * e, r_m, tube.neuron))
            pos = s1 + rng.exponential(gap)
    return Capsules.from_polylines(chains), len(chains)
