"""Alignment criteria against the synthetic truth's section transforms (and two derived ones).

Inputs::

    WS/align/transforms/zNNNNN.npz   T_z: aligned-frame point p = (y, x) -> section z's stitched
                                     montage frame (a :class:`connectome.montage.warp.DisplacementGrid`)
    WS/align/sections.json           per section "z" and "status" (reference/aligned/bridged/bad/missing)
    WS/stitch/tiles.csv              estimated tile top-lefts in the stitched montage frame
    TRUTH/truth/sections.json        per section "transform" (aligned -> stage frame, evaluated with
                                     :func:`connectome.montage.testdata.forward`), "missing", "damaged"
    TRUTH/truth/tiles.csv            true tile top-lefts in the stage frame

The stitched montage frame differs from the stage frame by a per-section translation::

    d_z = component-wise median over the tiles of section z present in both tables of (estimated - true)

and the misplacement of aligned point p of section z is (px, montage frame)::

    D_z(p) = T_z(p) - d_z - F_z(p)          F_z = the true transform of section z

evaluated on a dense grid of the aligned frame: p = (y, x) for y = 0, g, 2g, ... < H and x = 0, g, 2g,
... < W with g = ``EvaluateConfig.align_grid_px`` (16; raised, and reported as ``grid_px``, only
when a section would have more than 2^16 grid points). A section is *scored* when it has a
transform file, is not QC-flagged (status "bad" or "missing" in WS/align/sections.json), has a
truth transform and is not missing in the truth, and shares at least one tile with the truth
(so d_z is defined); every other section is listed in ``excluded_sections`` with its reason.

Criteria (each with its target and a ``pass`` flag; ``|v|`` is the Euclidean norm of a 2-vector):

(a) adjacent-pair error: e_z(p) = |D_{z+1}(p) - D_z(p)| for every pair of consecutive sections
    (z, z+1), z = 0 .. nz-2, with both sections scored; pairs with an unscored (flagged, missing,
    no transform, no truth) section are excluded and counted (``n_pairs_scored``,
    ``n_pairs_excluded``). Reported: median and 95th percentile (numpy linear interpolation) of
    e over all points of all scored pairs. Targets: median <= 1 px, p95 <= 2 px.
(b) accumulated error: ONE global affine G (2 x 3) for the whole volume, least squares over all
    points of all scored sections, D_z(p) ~ G (p, 1); the residual R_z(p) = D_z(p) - G (p, 1);
    per-section RMS_z = sqrt(mean_p |R_z(p)|^2). Reported: the worst (largest) RMS_z and its z
    (the lowest z on a tie, to 1e-9 px). Target <= 5 px.
(c) drift: m_z = mean_p R_z(p) (a 2-vector per scored section); the least-squares line
    m_z ~ a + b z over the scored sections; drift = |b| (px per section). Needs >= 2 scored
    sections. Target <= 0.1 px/section.
(d) over-registration: mean over pairs (z, z+1) of the Pearson correlation of the aligned volume's
    sections minus the same mean for the true raw volume, over the same pairs: pairs touching a
    QC-flagged section (WS status bad/missing) or a section missing in the truth are left out of
    both, as are pairs where either volume has a flat (zero-variance) section. Both volumes are
    first smoothed in (y, x) by a Gaussian of ``EvaluateConfig.over_registration_smooth_px``
    (1 px): the aligned volume has been resampled twice (stitch, align), and resampling alone
    smooths the pixel noise, which raises the raw NCC far more than any registration does (the
    truth of demo seed 2001 resampled twice by cubic splines: raw NCC 0.359 -> 0.466; smoothed
    by 1 px: 0.6719 -> 0.6731). The unsmoothed difference is reported too
    (``delta_ncc_unsmoothed``). Target <= +0.02 (the aligned volume should not look more alike
    between neighbours than the truth does).
(e) downstream (opt-in, :mod:`.downstream`): ARAND (and VOI = split + merge) of the default
    segmenter on the aligned volume minus the same on the true raw volume. Target delta
    ARAND <= +0.02.

In ``evaluation.json`` they sit in the ``alignment`` section next to the residual and NCC
entries: ``transform_scoring`` (grid, scored and excluded sections), ``adjacent_pair_error``,
``accumulated_error``, ``drift``, ``over_registration``, ``downstream``; each has a ``status``
("ok"; "not run" when the workspace lacks WS/align or WS/stitch/tiles.csv, or for (e) a
segmentation; "no truth" when the truth folder lacks sections.json transforms, tiles.csv or raw;
"no data" when nothing could be scored; (e) "not requested" without ``--downstream``), a
``reason`` when not "ok", its ``target*`` values and, when scored, ``pass`` (for (a) also
``pass_median`` and ``pass_p95``).

Memory: sections are read one at a time in z order; (a) keeps the errors of all pairs as float32
(at most 2^16 per pair), (b) and (c) use per-section sums (``X^T D_z``, ``sum |D_z|^2``, mean
D_z, with X = (y, x, 1) of the grid), so the fit is exact without holding every D_z.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

#: largest number of grid points per section (the grid step is raised to stay below it)
MAX_POINTS = 1 << 16
QC_FLAGGED = ("bad", "missing")
#: targets of (a)-(c) (``EvaluateConfig.target_*`` override them)
DEFAULT_TARGETS = {
    "adjacent_median_px": 1.0,
    "adjacent_p95_px": 2.0,
    "accumulated_px": 5.0,
    "drift_px_per_section": 0.1,
}


def _skip(status: str, reason: str) -> dict:
    return {"status": status, "reason": reason}


def _targets(key: str, t: Mapping) -> dict:
    """The target fields of criterion ``key`` (also carried by a criterion that was not scored)."""
    if key == "adjacent_pair_error":
        return {"target_median_px": t["adjacent_median_px"], "target_p95_px": t["adjacent_p95_px"]}
    if key == "accumulated_error":
        return {"target_px": t["accumulated_px"]}
    if key == "drift":
        return {"target_px_per_section": t["drift_px_per_section"]}
    return {}


KEYS = ("adjacent_pair_error", "accumulated_error", "drift")


def grid_points(frame_hw, grid_px: int) -> tuple[np.ndarray, int]:
    """The (n, 2) grid of (y, x) points over the aligned frame and the step actually used."""
    h, w = (int(v) for v in frame_hw)
    g = max(1, int(grid_px))
    while math.ceil(h / g) * math.ceil(w / g) > MAX_POINTS:
        g += 1
    yy, xx = np.meshgrid(np.arange(0, h, g, dtype=np.float64), np.arange(0, w, g, dtype=np.float64), indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1), g


def tile_offsets(estimated: Optional[dict], truth: Optional[dict]) -> dict[int, np.ndarray]:
    """d_z (y, x) per section: component-wise median of estimated - true over the common tiles.
    Both arguments are column dicts of ``section,row,col,x,y`` (see :data:`.tables.TILES`)."""
    if estimated is None or truth is None:
        return {}
    tru = {
        (int(s), int(r), int(c)): (float(y), float(x))
        for s, r, c, x, y in zip(truth["section"], truth["row"], truth["col"], truth["x"], truth["y"])
    }
    per: dict[int, list] = {}
    for s, r, c, x, y in zip(estimated["section"], estimated["row"], estimated["col"], estimated["x"], estimated["y"]):
        key = (int(s), int(r), int(c))
        if key in tru:
            per.setdefault(key[0], []).append((float(y) - tru[key][0], float(x) - tru[key][1]))
    return {s: np.median(np.asarray(v, dtype=np.float64), axis=0) for s, v in per.items()}


def transform_criteria(
    n_sections: int,
    frame_hw,
    transforms: Mapping[int, Callable[[np.ndarray], np.ndarray]],
    status: Mapping[int, str],
    truth_sections: Mapping[int, Mapping],
    offsets: Mapping[int, np.ndarray],
    grid_px: int = 16,
    targets: Optional[Mapping] = None,
) -> dict:
    """Criteria (a), (b), (c) of the module docstring.

    ``transforms[z](points) -> montage points`` (T_z, e.g. ``DisplacementGrid.apply``; a missing key
    = no transform file); ``status[z]`` the WS QC status; ``truth_sections[z]`` the truth record
    (``transform``, ``missing``); ``offsets[z]`` = d_z (y, x). Returns ``{"scoring": ...,
    "adjacent_pair_error": ..., "accumulated_error": ..., "drift": ...}``."""
    from connectome.montage.testdata import forward

    t = dict(DEFAULT_TARGETS, **(targets or {}))
    pts, step = grid_points(frame_hw, grid_px)
    n_pts = pts.shape[0]
    X = np.concatenate([pts, np.ones((n_pts, 1))], axis=1)  # (n, 3): y, x, 1
    XtX = X.T @ X
    x_mean = X.mean(axis=0)

    excluded: list[dict] = []
    scored: list[int] = []
    xtd: dict[int, np.ndarray] = {}
    sum_dd: dict[int, float] = {}
    mean_d: dict[int, np.ndarray] = {}
    pair_errors: list[np.ndarray] = []
    pair_stats: list[tuple[int, float]] = []  # (z, max error of pair (z, z+1))
    excluded_pairs: list[int] = []
    prev: Optional[tuple[int, np.ndarray]] = None
    for z in range(int(n_sections)):
        reason = None
        rec = truth_sections.get(z)
        if status.get(z) in QC_FLAGGED:
            reason = f"QC-flagged ({status[z]})"
        elif z not in transforms:
            reason = "no transform"
        elif rec is None or rec.get("missing"):
            reason = "missing in the truth"
        elif not rec.get("transform"):
            reason = "no truth transform"
        elif z not in offsets:
            reason = "no tile in common with truth/tiles.csv"
        D = None
        if reason is None:
            assert rec is not None  # else a reason above
            D = (
                np.asarray(transforms[z](pts), dtype=np.float64)
                - np.asarray(offsets[z], dtype=np.float64)
                - forward(rec["transform"], pts)
            )
            if not np.all(np.isfinite(D)):
                reason, D = "non-finite transform", None
        if D is None:
            excluded.append({"z": z, "reason": reason})
        else:
            scored.append(z)
            xtd[z] = X.T @ D
            sum_dd[z] = float((D * D).sum())
            mean_d[z] = D.mean(axis=0)
        if z > 0:
            if D is not None and prev is not None and prev[0] == z - 1:
                e = np.hypot(*(D - prev[1]).T)
                pair_errors.append(e.astype(np.float32))
                pair_stats.append((z - 1, float(e.max())))
            else:
                excluded_pairs.append(z - 1)
        prev = (z, D) if D is not None else None

    scoring = {
        "status": "ok",
        "grid_px": step,
        "n_points_per_section": n_pts,
        "n_sections": int(n_sections),
        "n_sections_scored": len(scored),
        "excluded_sections": excluded,
    }
    out: dict = {"scoring": scoring}
    if not scored:
        reason = "no section could be scored (all flagged, missing or without truth)"
        scoring.update(status="no data", reason=reason)
        for key in KEYS:
            out[key] = {**_skip("no data", reason), **_targets(key, t)}
        return out

    # (a)
    a: dict = {
        "n_pairs_scored": len(pair_errors),
        "n_pairs_excluded": len(excluded_pairs),
        "excluded_pairs": [[z, z + 1] for z in excluded_pairs],
        **_targets("adjacent_pair_error", t),
    }
    if pair_errors:
        e = np.concatenate(pair_errors).astype(np.float64)
        worst_z, worst_max = max(pair_stats, key=lambda s: (round(s[1], 9), -s[0]))
        a.update(
            status="ok",
            median_px=float(np.median(e)),
            p95_px=float(np.percentile(e, 95)),
            max_px=float(e.max()),
            worst_pair=[worst_z, worst_z + 1],
            worst_pair_max_px=worst_max,
        )
        a["pass_median"] = bool(a["median_px"] <= t["adjacent_median_px"])
        a["pass_p95"] = bool(a["p95_px"] <= t["adjacent_p95_px"])
        a["pass"] = a["pass_median"] and a["pass_p95"]
    else:
        a.update(status="no data", reason="no pair of consecutive scored sections")
    out["adjacent_pair_error"] = a

    # (b): G^T (3 x 2) from the normal equations summed over the scored sections
    xtd_all = sum(xtd.values())
    gt, *_ = np.linalg.lstsq(len(scored) * XtX, xtd_all, rcond=None)
    quad = float(np.sum(gt * (XtX @ gt)))
    rms = {}
    resid_mean = {}
    for z in scored:
        ss = sum_dd[z] - 2.0 * float(np.sum(gt * xtd[z])) + quad
        rms[z] = math.sqrt(max(ss, 0.0) / n_pts)
        resid_mean[z] = mean_d[z] - x_mean @ gt
    worst = max(scored, key=lambda z: (round(rms[z], 9), -z))  # a tie (to 1e-9 px): the lowest z
    b = {
        "status": "ok",
        "worst_rms_px": rms[worst],
        "worst_z": worst,
        "mean_rms_px": float(np.mean(list(rms.values()))),
        "global_affine_yx": gt.T.tolist(),  # 2 x 3: D ~ G @ (y, x, 1)
        "per_section_rms_px": {str(z): round(v, 4) for z, v in rms.items()},
        **_targets("accumulated_error", t),
    }
    b["pass"] = bool(b["worst_rms_px"] <= t["accumulated_px"])
    out["accumulated_error"] = b

    # (c)
    c: dict = _targets("drift", t)
    if len(scored) >= 2:
        zs = np.asarray(scored, dtype=np.float64)
        m = np.stack([resid_mean[z] for z in scored])
        zc = zs - zs.mean()
        slope = (zc @ (m - m.mean(axis=0))) / float(zc @ zc)
        c.update(
            status="ok", slope_px_per_section=float(np.hypot(*slope)), slope_yx=slope.tolist(), n_sections=len(scored)
        )
        c["pass"] = bool(c["slope_px_per_section"] <= t["drift_px_per_section"])
    else:
        c.update(status="no data", reason="fewer than 2 scored sections")
    out["drift"] = c
    return out


def over_registration(ws_pairs: np.ndarray, truth_pairs: np.ndarray, left_out_sections, target: float = 0.02) -> dict:
    """Criterion (d) from per-pair NCCs (index z = pair (z, z+1); NaN = flat section)."""
    ws_pairs = np.asarray(ws_pairs, dtype=np.float64)
    truth_pairs = np.asarray(truth_pairs, dtype=np.float64)
    skip = {int(z) for z in left_out_sections}
    keep = [
        z
        for z in range(min(ws_pairs.size, truth_pairs.size))
        if z not in skip and z + 1 not in skip and np.isfinite(ws_pairs[z]) and np.isfinite(truth_pairs[z])
    ]
    n_left_out = min(ws_pairs.size, truth_pairs.size) - len(keep)
    out: dict = {"n_pairs": len(keep), "n_pairs_left_out": n_left_out, "target": target}
    if not keep:
        out.update(status="no data", reason="no pair of consecutive sections to compare")
        return out
    mw, mt = float(ws_pairs[keep].mean()), float(truth_pairs[keep].mean())
    out.update(status="ok", ncc_aligned=mw, ncc_truth=mt, delta_ncc=mw - mt)
    out["pass"] = bool(out["delta_ncc"] <= target)
    return out


# ------------------------------------------------------------------------------------- I/O


def read_ws_status(ws_path: Path) -> Optional[dict[int, str]]:
    """z -> status from WS/align/sections.json (None if there is none)."""
    p = Path(ws_path) / "align" / "sections.json"
    if not p.is_file():
        return None
    from connectome.errors import UserInputError

    try:
        doc = json.loads(p.read_text())
        records = doc["sections"] if isinstance(doc, dict) else doc
        return {int(r["z"]): str(r.get("status")) for r in records}
    except (ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{p}: not a readable align sections.json ({type(exc).__name__}: {exc})") from None


def read_truth_sections(truth_path: Path) -> Optional[dict]:
    """The truth sections.json document, with ``by_z`` (z -> record) added; None if absent."""
    p = Path(truth_path) / "truth" / "sections.json"
    if not p.is_file():
        return None
    from connectome.errors import UserInputError

    try:
        doc = json.loads(p.read_text())
        records = doc["sections"] if isinstance(doc, dict) else doc
        by_z = {int(r["section"] if "section" in r else r["z"]): r for r in records}
    except (ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{p}: not a readable truth sections.json ({type(exc).__name__}: {exc})") from None
    return {"doc": doc if isinstance(doc, dict) else {}, "by_z": by_z}


def flagged_sections(ws_path: Path, truth_path: Path) -> set[int]:
    """Sections left out of (d): QC-flagged in the workspace or missing in the truth."""
    status = read_ws_status(ws_path) or {}
    out = {z for z, s in status.items() if s in QC_FLAGGED}
    truth = read_truth_sections(truth_path)
    if truth is not None:
        out |= {z for z, r in truth["by_z"].items() if r.get("missing")}
    return out


def evaluate_transforms(
    ws_path: Path,
    truth_path: Path,
    ws_tiles: Optional[dict],
    truth_tiles: Optional[dict],
    shape_zyx,
    grid_px: int = 16,
    targets: Optional[Mapping] = None,
) -> dict:
    """(a), (b), (c) for a workspace and a truth folder; statuses instead of errors when an input
    is absent ("not run": the workspace lacks it; "no truth": the truth folder does)."""
    from connectome.montage.warp import DisplacementGrid

    ws_path, truth_path = Path(ws_path), Path(truth_path)
    t = dict(DEFAULT_TARGETS, **(targets or {}))

    def all_skip(status, reason):
        return {"scoring": _skip(status, reason), **{k: {**_skip(status, reason), **_targets(k, t)} for k in KEYS}}

    status = read_ws_status(ws_path)
    tdir = ws_path / "align" / "transforms"
    if status is None or not tdir.is_dir():
        return all_skip("not run", "no WS/align/sections.json and transforms (run `connectome align`)")
    if ws_tiles is None:
        return all_skip("not run", "no WS/stitch/tiles.csv (needed for the montage offset d_z)")
    truth = read_truth_sections(truth_path)
    if truth is None:
        return all_skip("no truth", "no truth/sections.json")
    if not any(r.get("transform") for r in truth["by_z"].values()):
        return all_skip("no truth", "truth/sections.json has no per-section transforms")
    if truth_tiles is None:
        return all_skip("no truth", "no truth/tiles.csv (needed for the montage offset d_z)")
    if shape_zyx is None:
        shape_zyx = truth["doc"].get("shape_zyx")
    if shape_zyx is None:
        return all_skip("not run", "frame shape unknown (no WS raw, no shape_zyx in truth/sections.json)")
    transforms = {}
    for p in sorted(tdir.glob("z*.npz")):
        try:
            z = int(p.stem[1:])
        except ValueError:
            continue
        transforms[z] = _lazy_grid(p, DisplacementGrid)
    return transform_criteria(
        int(shape_zyx[0]),
        shape_zyx[1:],
        transforms,
        status,
        truth["by_z"],
        tile_offsets(ws_tiles, truth_tiles),
        grid_px,
        targets,
    )


def _lazy_grid(path: Path, cls):
    def apply(points):
        from connectome.errors import UserInputError

        try:
            grid = cls.from_npz(path)
        except Exception as exc:  # numpy / zipfile raise a variety of errors for a broken file
            raise UserInputError(f"{path}: not a readable section transform ({type(exc).__name__}: {exc})") from None
        return grid.apply(points)

    return apply
