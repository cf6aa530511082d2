"""``evaluate_workspace``: score every output a workspace has against a ground-truth folder
and write ``WS/evaluation.json``.

Each section of the result is a dict with ``status``: "ok" (scored), "not run" (the workspace
has no such output) or "no truth" (the truth folder lacks what it would be compared with),
plus ``reason`` when not "ok". Inputs are validated before any metric is computed: a missing
folder, an unreadable table, or arrays whose shapes or voxel sizes differ raise
:class:`UserInputError`, and nothing is written.

Which sections are computed from what::

    stitching     WS/stitch/tiles.csv             vs  truth/tiles.csv
    alignment     WS raw                          vs  truth raw            (NCC needs WS raw only)
                  WS/align/transforms + stitch/tiles.csv vs truth/sections.json + tiles.csv
                                                  criteria (a)-(c), and (d) NCC vs truth raw (align_truth)
                  (e) --downstream: WS segmentation vs the same segmenter on truth raw (downstream)
    vessels       WS vessel_mask                  vs  truth vessels
    segmentation  WS segmentation                 vs  truth neurons (minus truth vessels)
    skeletons     WS segmentation along truth/skeletons (or skeletons of truth neurons): ERL,
                  merges and splits on skeleton nodes; ERL of the truth neurons = the ceiling
    synapses      WS/synapses.csv                 vs  truth/synapses.csv   (+ segmentation for partners)
    connectivity  WS/connectivity.csv             vs  truth/connectivity.csv (needs segmentation)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from connectome.errors import UserInputError
from connectome.evaluate import (
    align_truth,
    alignment,
    connectivity,
    downstream,
    masks,
    segmentation,
    stitching,
    synapses,
    tables,
)
from connectome.evaluate.config import EvaluateConfig
from connectome.evaluate.inputs import TruthSet, WorkspaceOutputs, check_pair, check_voxel_size

log = logging.getLogger("connectome.evaluate")

RESULT_FILE = "evaluation.json"


def _skip(status: str, reason: str) -> dict:
    return {"status": status, "reason": reason}


def evaluate_workspace(
    workspace: str | Path,
    truth_dir: str | Path,
    config: Optional[EvaluateConfig] = None,
    workers: Optional[int] = None,
    progress: bool = False,
) -> dict:
    """Evaluate what the workspace has; write ``WS/evaluation.json``; return the results.

    ``workers`` / ``progress``: for the stages the downstream criterion runs (``config.downstream``)."""
    from connectome.config import config_to_dict

    cfg = config or EvaluateConfig()
    outputs = WorkspaceOutputs.open(workspace)
    truth = TruthSet.open(truth_dir)
    check_voxel_size(outputs, truth)
    for name in ("raw", "vessel_mask", "segmentation"):  # never score an unfinished array
        if outputs.has(name):
            assert outputs.workspace is not None  # has() is False without one
            outputs.workspace.require_complete(name, "evaluate")
    for ws_name, truth_name in (
        ("raw", "raw"),
        ("vessel_mask", "vessels"),
        ("segmentation", "neurons"),
        ("segmentation", "vessels"),
    ):
        if outputs.has(ws_name) and truth.has(truth_name):
            check_pair(outputs, ws_name, truth, truth_name)
    if (
        truth.has("neurons")
        and truth.has("vessels")
        and tuple(truth.array("neurons").shape) != tuple(truth.array("vessels").shape)
    ):
        raise UserInputError(
            f"truth {truth.path}: arrays 'neurons' {list(truth.array('neurons').shape)} and "
            f"'vessels' {list(truth.array('vessels').shape)} differ in shape"
        )
    voxel_size = outputs.voxel_size_nm or truth.voxel_size_nm()

    # tables are read (and so validated) before any volume is scanned
    ws_tiles = _read(outputs.table("stitch/tiles.csv"), tables.TILES)
    truth_tiles = _read(truth.table("tiles.csv"), tables.TILES)
    ws_syn = _read(outputs.table("synapses.csv"), tables.SYNAPSES)
    truth_syn = _read(truth.table("synapses.csv"), tables.SYNAPSES)
    ws_conn = _read(outputs.table("connectivity.csv"), tables.CONNECTIVITY)
    truth_conn = _read(truth.table("connectivity.csv"), tables.CONNECTIVITY)
    if ws_syn is not None and truth_syn is not None and voxel_size is None:
        raise UserInputError(
            f"workspace {outputs.path}: no voxel size known (no volume.zarr and no "
            "voxel_size_nm on the truth arrays); cannot compare synapse locations in nm"
        )

    results: dict = {
        "workspace": str(outputs.path),
        "truth": str(truth.path),
        "shape_zyx": list(outputs.shape_zyx) if outputs.shape_zyx else None,
        "voxel_size_nm": list(voxel_size) if voxel_size else None,
        "config": config_to_dict(cfg),
    }
    block = cfg.block_shape_zyx

    # ---- stitching
    if ws_tiles is None:
        results["stitching"] = _skip("not run", "no WS/stitch/tiles.csv")
    elif truth_tiles is None:
        results["stitching"] = _skip("no truth", "no truth/tiles.csv")
    else:
        results["stitching"] = _timed(
            "stitching",
            stitching.tile_position_errors,
            ws_tiles,
            truth_tiles,
            stitching.read_placed(Path(outputs.path) / "stitch" / "tiles.csv"),
        )

    # ---- alignment
    if not outputs.has("raw"):
        results["alignment"] = _skip("not run", "no raw in WS/volume.zarr")
    else:
        results["alignment"] = _timed("alignment", _alignment, outputs, truth, cfg, ws_tiles, truth_tiles)

    # ---- vessels
    if not outputs.has("vessel_mask"):
        results["vessels"] = _skip("not run", "no vessel_mask in WS/volume.zarr")
    elif not truth.has("vessels"):
        results["vessels"] = _skip("no truth", "no vessels in truth.zarr")
    else:
        results["vessels"] = _timed(
            "vessels", masks.mask_overlap, outputs.array("vessel_mask"), truth.array("vessels"), block
        )

    # ---- segmentation (and the segment -> truth id map used by synapses and connectivity)
    seg_map = None
    if not outputs.has("segmentation"):
        results["segmentation"] = _skip("not run", "no segmentation in WS/volume.zarr")
    elif not truth.has("neurons"):
        results["segmentation"] = _skip("no truth", "no neurons in truth.zarr")
    else:
        t0 = time.perf_counter()
        table = segmentation.contingency_from_arrays(
            truth.array("neurons"),
            outputs.array("segmentation"),
            truth.array("vessels") if truth.has("vessels") else None,
            block,
        )
        results["segmentation"] = segmentation.segmentation_metrics(
            table, cfg.overlap_min_fraction, cfg.overlap_min_voxels
        )
        results["segmentation"]["ignored_truth_vessels"] = truth.has("vessels")
        seg_map = segmentation.segment_to_truth_map(table)
        log.info("evaluate: segmentation done in %.1f s", time.perf_counter() - t0)

    # ---- skeletons: ERL, merges and splits along the true skeletons (needs the segmentation)
    if not outputs.has("segmentation"):
        results["skeletons"] = _skip("not run", "no segmentation in WS/volume.zarr")
    elif not truth.has("neurons") and truth.table("skeletons/info") is None:
        results["skeletons"] = _skip("no truth", "no truth/skeletons and no neurons in truth.zarr")
    else:
        results["skeletons"] = _timed("skeletons", _skeletons, outputs, truth, cfg, voxel_size, progress)

    # ---- alignment criterion (e), downstream (needs the segmentation section)
    if results["alignment"].get("status") == "ok":
        if not cfg.downstream:
            results["alignment"]["downstream"] = {
                **_skip("not requested", "opt-in: connectome evaluate --downstream"),
                "target": cfg.target_downstream_arand,
            }
        else:
            results["alignment"]["downstream"] = _timed(
                "alignment downstream",
                downstream.run_downstream,
                outputs,
                truth,
                results.get("segmentation"),
                cfg,
                workers,
                progress,
            )

    # ---- synapses
    if ws_syn is None:
        results["synapses"] = _skip("not run", "no WS/synapses.csv")
    elif truth_syn is None:
        results["synapses"] = _skip("no truth", "no truth/synapses.csv")
    else:
        results["synapses"] = _timed(
            "synapses", synapses.synapse_metrics, ws_syn, truth_syn, voxel_size, cfg.synapse_match_distance_nm, seg_map
        )
        if seg_map is None:
            results["synapses"]["partner_note"] = "no segmentation: partner accuracy not computed"

    # ---- connectivity
    if ws_conn is None:
        results["connectivity"] = _skip("not run", "no WS/connectivity.csv")
    elif truth_conn is None:
        results["connectivity"] = _skip("no truth", "no truth/connectivity.csv")
    elif seg_map is None:
        results["connectivity"] = _skip("not run", "no segmentation to map segment ids to truth neurons")
    else:
        results["connectivity"] = _timed(
            "connectivity", connectivity.connectivity_metrics, ws_conn, truth_conn, seg_map, cfg.edge_min_synapses
        )

    results = tables.jsonable(results)
    tables.write_json_atomic(outputs.path / RESULT_FILE, results)
    return results


def _read(path: Optional[Path], columns) -> Optional[dict]:
    return None if path is None else tables.read_table(path, columns)


def _timed(name: str, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    log.info("evaluate: %s done in %.1f s", name, time.perf_counter() - t0)
    return out


def _skeletons(outputs: WorkspaceOutputs, truth: TruthSet, cfg: EvaluateConfig, voxel_size, progress) -> dict:
    from connectome.evaluate import skeletons

    true_skels, source = skeletons.truth_skeletons(truth, voxel_size, progress)
    neurons = truth.array("neurons") if truth.has("neurons") else None
    out = skeletons.evaluate_skeletons(
        true_skels,
        outputs.array("segmentation"),
        neurons,
        voxel_size,
        cfg.skeleton_min_overlap_nm,
        cfg.skeleton_top_mergers,
    )
    out["truth_source"] = source
    return out


def _alignment(outputs: WorkspaceOutputs, truth: TruthSet, cfg: EvaluateConfig, ws_tiles, truth_tiles) -> dict:
    ws_raw = outputs.array("raw")
    out: dict = {"status": "ok"}
    if truth.has("raw"):
        out.update(
            alignment.residuals(
                ws_raw, truth.array("raw"), cfg.patch_px, cfg.patch_min_std, cfg.residual_flag_px, cfg.block_shape_zyx
            )
        )
    else:
        out["residual_note"] = "no raw in truth.zarr: residuals not computed"
    ws_pairs = alignment.pair_ncc(ws_raw, cfg.block_shape_zyx)
    ncc = alignment.ncc_summary(ws_pairs)
    out["ncc_neighbour_mean"] = ncc["mean"]
    out["ncc_neighbour_min"] = ncc["min"]
    out["ncc_neighbour_pairs"] = ncc["n_pairs"]
    truth_pairs = None
    if truth.has("raw"):
        truth_pairs = alignment.pair_ncc(truth.array("raw"), cfg.block_shape_zyx)
        ref = alignment.ncc_summary(truth_pairs)
        out["truth_ncc_neighbour_mean"] = ref["mean"]
        out["truth_ncc_neighbour_min"] = ref["min"]

    # criteria (a)-(c): the section transforms against the truth's
    targets = {
        "adjacent_median_px": cfg.target_adjacent_median_px,
        "adjacent_p95_px": cfg.target_adjacent_p95_px,
        "accumulated_px": cfg.target_accumulated_px,
        "drift_px_per_section": cfg.target_drift_px_per_section,
    }
    crit = align_truth.evaluate_transforms(
        outputs.path, truth.path, ws_tiles, truth_tiles, outputs.shape_zyx, cfg.align_grid_px, targets
    )
    out["transform_scoring"] = crit.pop("scoring")
    out.update(crit)
    # criterion (d)
    if truth_pairs is None:
        out["over_registration"] = {
            **_skip("no truth", "no raw in truth.zarr"),
            "target": cfg.target_over_registration_ncc,
        }
    else:
        # on smoothed sections: resampling alone (stitch and align each interpolate once) smooths
        # the pixel noise and raises the raw neighbour NCC well above the truth's (see align_truth)
        sm = cfg.over_registration_smooth_px
        left_out = align_truth.flagged_sections(outputs.path, truth.path)
        ws_sm = alignment.pair_ncc(ws_raw, cfg.block_shape_zyx, sm) if sm > 0 else ws_pairs
        truth_sm = alignment.pair_ncc(truth.array("raw"), cfg.block_shape_zyx, sm) if sm > 0 else truth_pairs
        out["over_registration"] = align_truth.over_registration(
            ws_sm, truth_sm, left_out, cfg.target_over_registration_ncc
        )
        out["over_registration"]["smooth_px"] = sm
        raw = align_truth.over_registration(ws_pairs, truth_pairs, left_out, cfg.target_over_registration_ncc)
        out["over_registration"]["delta_ncc_unsmoothed"] = raw.get("delta_ncc")
    return out
