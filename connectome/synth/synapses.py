"""Chemical synapses: where an axon touches another neuron, with cleft, PSD and vesicles.

Placement works on the geometry, before any voxel exists, so every block of the volume sees
the same synapses:

1. first spine heads (up to 60% of the synapses; in cortex ~80% of excitatory synapses are
   on spines, Harris & Kater 1994): each with the axon that touches it most closely;
2. then boutons: axon skeleton points drawn with weight radius^3 so that swellings
   (0.35-0.6 um) are preferred, as en-passant synapses sit on boutons; the partner is a
   different neuron whose surface is within 40 nm: a spine head (weight 4) or a dendritic
   shaft (1); only if none touches, another axon with probability 0.05 (axo-axonic synapses
   are rare); spine necks never;
3. the contact is checked with :class:`~connectome.synth.geometry.LabelOracle` (the voxel
   rule, pointwise): walking from the axon axis to the partner axis the owner must switch from
   the axon straight to the partner (no third neurite in between); the switch point, refined
   by bisection, is the cleft centre and the walk direction its normal; the interface must
   also hold the pre/post owners 0.6 PSD radii to the side (else the PSD is made smaller,
   down to 60 nm: small contacts get small synapses);
4. synapses are at least 400 nm apart, one per spine head, and as many as
   ``synapse_density_per_um3`` (~1 / um^3 in cortex: DeFelipe et al. 1999, 0.6-1.1) times the
   volume, counted separately inside the truth frame and in the margins.

What is drawn (``volume.py`` / ``imaging.py``), with sizes from Schikorski & Stevens 1997
(J Neurosci 17:5858) and Harris & Weinberg 2012:

* cleft: a disc of radius R (100-190 nm; PSD diameter 0.2-0.4 um) on the interface, one voxel
  thick along the normal; these voxels are ``synapse_clefts`` = synapse id;
* post-synaptic density: up to 35 nm deep on the partner's side, strongly dark;
* pre-synaptic active zone: a thin dark band on the axon side;
* vesicle cloud: 35-44 nm vesicles (light lumen, dark rim) packed ~4000 / um^3 in a half
  ellipsoid up to 0.18-0.28 um deep behind the active zone, drawn only inside the axon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from connectome.synth.neurites import AXON, DENDRITE, SPINE

GAP_TOL_NM = 40.0
SPINE_SHARE = 0.6  # target share of synapses on spine heads (where spines allow)
AXO_AXONIC_P = 0.05  # chance to accept an axon partner when a bouton touches no dendrite
MIN_SPACING_NM = 400.0
TARGET_NAMES = {0: "spine", 1: "shaft", 2: "axon"}


@dataclass
class Synapses:
    centre: np.ndarray  # (S, 3) nm
    normal: np.ndarray  # (S, 3) unit, pre -> post
    radius: np.ndarray  # (S,) nm
    pre: np.ndarray  # (S,) neuron ids
    post: np.ndarray  # (S,)
    target: np.ndarray  # (S,) 0 spine head, 1 dendritic shaft, 2 axon
    ves_centre: np.ndarray  # (V, 3) nm
    ves_radius: np.ndarray  # (V,) nm
    ves_pre: np.ndarray  # (V,) neuron id of the pre-synaptic neurite

    def __len__(self) -> int:
        return len(self.pre)

    @classmethod
    def empty(cls) -> "Synapses":
        z3, z1, i1 = np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64)
        return cls(z3, z3.copy(), z1, i1, i1.copy(), i1.copy(), z3.copy(), z1.copy(), i1.copy())


def _frame(n):
    e1 = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(n, e1)


def _vesicles(c: np.ndarray, n: np.ndarray, R: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vesicle centres and radii behind the active zone (pre side = -n)."""
    e1, e2 = _frame(n)
    lat, depth = 1.25 * R, rng.uniform(180.0, 280.0)
    target = int(4000e-9 * (2.0 / 3.0) * np.pi * lat * lat * depth)
    u = rng.standard_normal((target * 6 + 10, 3))
    u *= (rng.random(len(u)) ** (1 / 3) / np.linalg.norm(u, axis=1))[:, None]
    cand = c + e1 * (u[:, 0:1] * lat) + e2 * (u[:, 1:2] * lat) - n * (14.0 + np.abs(u[:, 2:3]) * depth)
    keep: list[np.ndarray] = []
    for p in cand:
        if len(keep) >= target:
            break
        if not keep or np.min(np.linalg.norm(np.asarray(keep) - p, axis=1)) >= 42.0:
            keep.append(p)
    pts = np.asarray(keep).reshape(-1, 3)
    return pts, rng.uniform(17.5, 22.0, len(pts))


def place_synapses(
    cfg, neuropil, oracle, truth_hi_nm, world_lo_nm, world_hi_nm, rng: np.random.Generator
) -> tuple[Synapses, dict[str, int]]:
    """Synapses of the whole world (truth frame + margins). Returns (Synapses, stats)."""
    from scipy.spatial import cKDTree

    pts, rad, neu, kind, head = neuropil.point_table()
    if cfg.synapse_density_per_um3 <= 0 or not np.any(kind == AXON):
        return Synapses.empty(), {"placed": 0}
    tree = cKDTree(pts)
    rmax = float(rad.max())
    rmax_axon = float(rad[kind == AXON].max())
    truth_hi = np.asarray(truth_hi_nm, float)
    wlo, whi = np.asarray(world_lo_nm, float), np.asarray(world_hi_nm, float)

    def in_truth(p):
        return bool(np.all((p >= 0) & (p <= truth_hi)))

    def in_world(p):
        return bool(np.all((p >= wlo) & (p <= whi)))

    v_truth = float(np.prod(truth_hi)) * 1e-9
    v_world = float(np.prod(whi - wlo)) * 1e-9
    m_truth = np.all((pts >= 0) & (pts <= truth_hi), axis=1)
    m_world = np.all((pts >= wlo) & (pts <= whi), axis=1)
    regions = [
        (m_truth, in_truth, v_truth),
        (m_world & ~m_truth, lambda p: in_world(p) and not in_truth(p), v_world - v_truth),
    ]
    centres: list[np.ndarray] = []
    out: dict[str, list[Any]] = {k: [] for k in ("centre", "normal", "radius", "pre", "post", "target")}
    used_heads: set[int] = set()
    stats = {"candidates_tried": 0, "rejected_contact": 0}

    def accept(i: int, j: int, inside) -> bool:
        """Try a synapse from axon point i onto partner point j."""
        stats["candidates_tried"] += 1
        p, q, a, b = pts[i], pts[j], neu[i], neu[j]
        contact = _contact(oracle, p, q, a, b)
        if contact is None or not inside(contact[0]):
            stats["rejected_contact"] += 1
            return False
        c, n = contact
        if centres and np.min(np.linalg.norm(np.asarray(centres) - c, axis=1)) < MIN_SPACING_NM:
            return False
        target = 0 if head[j] else (1 if kind[j] in (DENDRITE, SPINE) else 2)
        R = rng.uniform(*((110.0, 190.0) if target == 0 else (100.0, 170.0) if target == 1 else (80.0, 140.0)))
        while R >= 60.0 and not _interface_holds(oracle, c, n, 0.6 * R, a, b):
            R *= 0.75  # the contact is smaller than drawn: a smaller active zone
        if R < 60.0:
            stats["rejected_contact"] += 1
            return False
        centres.append(c)
        if head[j]:
            used_heads.add(j)
        for key, val in zip(out, (c, n, R, a, b, target)):
            out[key].append(val)
        return True

    for region, inside, vol in regions:
        need = int(round(cfg.synapse_density_per_um3 * vol))
        if need == 0:
            continue
        got = 0
        # 1) spine heads first (most excitatory synapses are on spines): the touching axon
        heads = np.nonzero(head & region)[0]
        for j in rng.permutation(heads)[: 2 * need]:
            if got >= round(SPINE_SHARE * need):
                break
            nb = np.asarray(tree.query_ball_point(pts[j], rad[j] + rmax_axon + GAP_TOL_NM), dtype=np.int64)
            nb = nb[(kind[nb] == AXON) & (neu[nb] != neu[j])]
            if len(nb):
                gap = np.linalg.norm(pts[nb] - pts[j], axis=1) - rad[nb] - rad[j]
                i = int(nb[np.argmin(gap)])
                if gap.min() < GAP_TOL_NM and accept(i, int(j), inside):
                    got += 1
        # 2) the rest from boutons: axon points weighted by radius^3, onto any touching partner
        cand = np.nonzero((kind == AXON) & region)[0]
        if len(cand) == 0:
            continue
        w = rad[cand] ** 3
        for i in rng.choice(cand, size=min(len(cand), 80 * need + 50), replace=False, p=w / w.sum()):
            if got >= need:
                break
            p, r, a = pts[i], rad[i], neu[i]
            nb = np.asarray(tree.query_ball_point(p, r + rmax + GAP_TOL_NM), dtype=np.int64)
            nb = nb[neu[nb] != a]
            if len(nb) == 0:
                continue
            nb = nb[np.linalg.norm(pts[nb] - p, axis=1) - rad[nb] - r < GAP_TOL_NM]
            # dendritic partners first (heads 4 : shaft 1); another axon only rarely
            weight = np.where(head[nb], 4.0, np.where(kind[nb] == DENDRITE, 1.0, 0.0))
            weight[[j in used_heads for j in nb]] = 0.0
            if weight.sum() == 0:
                weight = (kind[nb] == AXON).astype(float)
                if weight.sum() == 0 or rng.random() > AXO_AXONIC_P:
                    continue
            if accept(int(i), int(rng.choice(nb, p=weight / weight.sum())), inside):
                got += 1
    if not centres:
        return Synapses.empty(), {**stats, "placed": 0}
    ves = [_vesicles(c, n, R, rng) for c, n, R in zip(out["centre"], out["normal"], out["radius"])]
    syn = Synapses(
        np.array(out["centre"]),
        np.array(out["normal"]),
        np.array(out["radius"]),
        np.array(out["pre"], np.int64),
        np.array(out["post"], np.int64),
        np.array(out["target"], np.int64),
        np.concatenate([v[0] for v in ves]),
        np.concatenate([v[1] for v in ves]),
        np.concatenate([np.full(len(v[0]), a, np.int64) for v, a in zip(ves, out["pre"])]),
    )
    stats["placed"] = len(syn)
    stats["on_spines"] = int(np.count_nonzero(syn.target == 0))
    stats["on_shafts"] = int(np.count_nonzero(syn.target == 1))
    stats["vesicles"] = int(len(syn.ves_radius))
    return syn, stats


def _contact(oracle, p, q, a, b):
    """Cleft centre and normal where the owner switches from a to b on p->q, or None."""
    s = np.linspace(0.0, 1.0, 25)
    labs = oracle.labels(p + s[:, None] * (q - p))
    if labs[0] != a or labs[-1] != b:
        return None
    k = int(np.argmax(labs != a))
    if labs[k] != b or not np.all(labs[k : k + 3] == b):
        return None
    lo, hi = s[k - 1], s[k]
    for _ in range(5):
        mid = 0.5 * (lo + hi)
        if oracle.labels((p + mid * (q - p))[None])[0] == a:
            lo = mid
        else:
            hi = mid
    n = (q - p) / np.linalg.norm(q - p)
    return p + 0.5 * (lo + hi) * (q - p), n


def _interface_holds(oracle, c, n, lateral, a, b) -> bool:
    e1, e2 = _frame(n)
    offs = np.array([e1, -e1, e2, -e2]) * lateral
    pre = oracle.labels(np.concatenate([c + offs - 25.0 * n, c + offs + 25.0 * n]))
    return int(np.sum(pre[:4] == a)) >= 3 and int(np.sum(pre[4:] == b)) >= 3


def synapse_fields(syn: Synapses, box, voxel_nm, labels: np.ndarray):
    """Cleft ids (int64, 0 = none), PSD mask and active-zone mask on ``box``.

    ``labels`` is the neuron-owner array of the box (before extracellular space is carved).
    """
    cleft = np.zeros(box.shape, np.int64)
    psd = np.zeros(box.shape, bool)
    az = np.zeros(box.shape, bool)
    if len(syn) == 0:
        return cleft, psd, az
    v = np.asarray(voxel_nm, float)
    lo_nm, hi_nm = box.bounds_nm(v)
    reach = syn.radius + 80.0
    sel = np.nonzero(np.all((syn.centre + reach[:, None] >= lo_nm) & (syn.centre - reach[:, None] <= hi_nm), axis=1))[0]
    zc, yc, xc = box.centres(v)
    for s in sel:
        c, n, R = syn.centre[s], syn.normal[s], syn.radius[s]
        sl = tuple(
            slice(int(np.searchsorted(cc, c[k] - R - 60.0)), int(np.searchsorted(cc, c[k] + R + 60.0)))
            for k, cc in enumerate((zc, yc, xc))
        )
        if any(x.start >= x.stop for x in sl):
            continue
        dz, dy, dx = (
            (zc[sl[0]] - c[0])[:, None, None],
            (yc[sl[1]] - c[1])[None, :, None],
            (xc[sl[2]] - c[2])[None, None, :],
        )
        ax = dz * n[0] + dy * n[1] + dx * n[2]
        rho2 = dz * dz + dy * dy + dx * dx - ax * ax
        h = 0.5 * float(np.sqrt(np.sum((n * v) ** 2))) + 2.0
        lab = labels[sl]
        is_pre, is_post = lab == syn.pre[s], lab == syn.post[s]
        m = (rho2 <= R * R) & (np.abs(ax) <= h) & (is_pre | is_post)
        sub = cleft[sl]
        sub[m & (sub == 0)] = s + 1
        psd[sl] |= (rho2 <= (0.95 * R) ** 2) & (ax > 0) & (ax <= h + 35.0) & is_post
        az[sl] |= (rho2 <= (0.9 * R) ** 2) & (ax < 0) & (ax >= -(h + 12.0)) & is_pre
    return cleft, psd, az
