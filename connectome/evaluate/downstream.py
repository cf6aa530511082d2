"""Alignment criterion (e), downstream: what the alignment costs the segmentation.

    delta_arand = ARAND(default segmenter on the aligned volume) - ARAND(same on the true raw)
    delta_voi   = VOI(aligned) - VOI(true raw)            VOI = split + merge (bits)
    target: delta_arand <= +0.02

The aligned side is the workspace's own segmentation as scored by the evaluation's
segmentation section. The true-raw side is made in a scratch workspace
``WS/evaluate/truth_raw/``: ``TRUTH/truth.zarr/raw`` is imported (``connectome import``, a
plain copy for uint8), then the same stages as the default pipeline run there by the same
Python entry points the CLI uses -- ``predict-boundaries`` and ``segment`` (method auto ->
watershed), preceded by ``mask-vessels`` when the workspace has a ``vessel_mask`` (the segmenter
respects it, so leaving it out would not compare like with like). Each stage uses the config
the pipeline recorded for it in ``WS/pipeline/configs/<stage>.yaml`` if there is one, else the
config defaults; the models are those named in the workspace's arrays (``boundary``,
``vessel_prob`` attribute ``model``) when those folders exist, else the shipped defaults. The
result is scored against the truth neurons exactly like the workspace (truth vessels ignored).

The scratch workspace is reused while its fingerprint (``fingerprint.json``: the truth raw's
identity, the stage configs and models) matches, so a second ``--downstream`` run only
re-scores; on a mismatch it is deleted and rebuilt. Stages resume from their block markers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("connectome.evaluate")

SCRATCH = Path("evaluate") / "truth_raw"
FINGERPRINT = "fingerprint.json"


def _skip(status: str, reason: str) -> dict:
    return {"status": status, "reason": reason}


def truth_fingerprint(truth_path: Path) -> dict:
    """Identity of the truth raw volume: path, array metadata, synth.json digest."""
    truth_path = Path(truth_path).resolve()
    meta = truth_path / "truth.zarr" / "raw" / "zarr.json"
    out: dict = {"raw": str(meta.parent)}
    try:
        st = meta.stat()
        out["meta_mtime_ns"], out["meta_sha256"] = st.st_mtime_ns, hashlib.sha256(meta.read_bytes()).hexdigest()
    except OSError:
        pass
    synth = truth_path / "synth.json"
    if synth.is_file():
        out["synth_sha256"] = hashlib.sha256(synth.read_bytes()).hexdigest()
    return out


def _stage_config(ws_path: Path, stage: str, cls):
    from connectome.config import load_config

    p = ws_path / "pipeline" / "configs" / f"{stage}.yaml"
    return load_config(cls, p if p.is_file() else None), (str(p) if p.is_file() else "defaults")


def _model_of(ws, array: str) -> Optional[str]:
    if ws is None or not ws.has(array):
        return None
    m = ws.array(array).attrs.get("model")
    return str(m) if m and Path(str(m)).is_dir() else None


def plan_stages(ws_path: Path, ws, scratch: Path, truth_path: Path, voxel_size) -> tuple[list, dict]:
    """([(name, [plan thunks])], description) of the stages to run in the scratch workspace."""
    from connectome.config import config_to_dict
    from connectome.stages import importer, load_stage

    stages: list[tuple[str, list[Callable]]] = []
    desc: dict = {}
    src = str(Path(truth_path).resolve() / "truth.zarr" / "raw")
    imp_cfg = importer.ImportConfig()
    stages.append(("import", [lambda: importer.plan(src, scratch, voxel_size, imp_cfg)]))
    seg_mod = load_stage("segment")
    seg_cfg, seg_src = _stage_config(ws_path, "segment", seg_mod.Config)
    if ws is not None and ws.has("vessel_mask") and getattr(seg_cfg, "use_vessel_mask", False):
        ves = load_stage("mask-vessels")
        ves_cfg, ves_src = _stage_config(ws_path, "mask-vessels", ves.Config)
        ves_model = _model_of(ws, "vessel_prob")
        stages.append(
            (
                "mask-vessels",
                [lambda: ves.plan_prob(scratch, ves_cfg, ves_model), lambda: ves.plan_mask(scratch, ves_cfg)],
            )
        )
        desc["mask-vessels"] = {
            "config": ves_src,
            "model": ves_model or "default",
            "config_values": config_to_dict(ves_cfg),
        }
    bnd = load_stage("predict-boundaries")
    bnd_cfg, bnd_src = _stage_config(ws_path, "predict-boundaries", bnd.Config)
    bnd_model = _model_of(ws, "boundary")
    stages.append(("predict-boundaries", [lambda: bnd.plan(scratch, bnd_cfg, bnd_model)]))
    desc["predict-boundaries"] = {
        "config": bnd_src,
        "model": bnd_model or "default",
        "config_values": config_to_dict(bnd_cfg),
    }
    stages.append(
        (
            "segment",
            [
                lambda: seg_mod.plan_subvolumes(scratch, seg_cfg, None),
                lambda: seg_mod.plan_write(scratch, seg_cfg, None),
            ],
        )
    )
    desc["segment"] = {"config": seg_src, "config_values": config_to_dict(seg_cfg)}
    return stages, desc


def run_downstream(
    outputs,
    truth,
    ws_segmentation: Optional[dict],
    cfg,
    workers: Optional[int] = None,
    progress: bool = False,
    runner: Optional[Callable] = None,
) -> dict:
    """Criterion (e). ``ws_segmentation``: the evaluation's segmentation section of the workspace.
    ``runner(task)`` runs one planned task (default: :func:`connectome.blockwise.run_task` on a
    local executor with ``workers``)."""
    from connectome.evaluate import segmentation

    target = cfg.target_downstream_arand
    if not outputs.has("segmentation"):
        return {
            **_skip("not run", "no segmentation in WS/volume.zarr (run predict-boundaries + segment)"),
            "target": target,
        }
    if not isinstance(ws_segmentation, dict) or ws_segmentation.get("status", "ok") != "ok":
        return {**_skip("not run", "the workspace segmentation was not scored"), "target": target}
    if not truth.has("raw"):
        return {**_skip("no truth", "no raw in truth.zarr"), "target": target}
    if not truth.has("neurons"):
        return {**_skip("no truth", "no neurons in truth.zarr"), "target": target}

    ws_path = Path(outputs.path)
    scratch = ws_path / SCRATCH
    voxel = outputs.voxel_size_nm or truth.voxel_size_nm()
    stages, desc = plan_stages(ws_path, outputs.workspace, scratch, truth.path, voxel)
    fp = {"truth": truth_fingerprint(truth.path), "stages": desc, "voxel_size_nm": list(voxel)}
    fp_path = scratch / FINGERPRINT
    reused = False
    if scratch.exists():
        try:
            reused = json.loads(fp_path.read_text()) == json.loads(json.dumps(fp))
        except (OSError, ValueError):
            reused = False
        if not reused:
            log.info("evaluate: %s was made from another truth or config; rebuilding it", scratch)
            shutil.rmtree(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    if not reused:
        from connectome.atomic import atomic_write_text

        atomic_write_text(fp_path, json.dumps(fp, indent=1, sort_keys=True))

    run = runner or _default_runner(workers, progress)
    for name, plans in stages:
        for plan in plans:
            task = plan()
            log.info("evaluate --downstream: %s in %s", name, scratch)
            run(task)

    from connectome.workspace import Workspace

    sws = Workspace.open(scratch, mode="r")
    table = segmentation.contingency_from_arrays(
        truth.array("neurons"),
        sws.array("segmentation"),
        truth.array("vessels") if truth.has("vessels") else None,
        cfg.block_shape_zyx,
    )
    ref = segmentation.segmentation_metrics(table, cfg.overlap_min_fraction, cfg.overlap_min_voxels)
    ws_voi = float(ws_segmentation["voi_split"]) + float(ws_segmentation["voi_merge"])
    ref_voi = float(ref["voi_split"]) + float(ref["voi_merge"])
    out = {
        "status": "ok",
        "scratch_workspace": str(scratch),
        "reused_scratch": reused,
        "stages": [name for name, _ in stages],
        "method_aligned": _attr(outputs.workspace, "segmentation", "method"),
        "method_truth_raw": _attr(sws, "segmentation", "method"),
        "arand_aligned": float(ws_segmentation["arand_error"]),
        "arand_truth_raw": float(ref["arand_error"]),
        "voi_aligned": ws_voi,
        "voi_truth_raw": ref_voi,
        "truth_raw_segmentation": {
            k: ref[k]
            for k in ("voi_split", "voi_merge", "arand_error", "arand_precision", "arand_recall", "n_segments")
            if k in ref
        },
        "target": target,
    }
    out["delta_arand"] = out["arand_aligned"] - out["arand_truth_raw"]
    out["delta_voi"] = ws_voi - ref_voi
    out["pass"] = bool(out["delta_arand"] <= target)
    if out["method_aligned"] != out["method_truth_raw"]:
        out["note"] = (
            f"the workspace was segmented with method {out['method_aligned']!r}, the truth raw with "
            f"{out['method_truth_raw']!r}"
        )
    return out


def _attr(ws, array: str, key: str):
    try:
        return ws.array(array).attrs.get(key) if ws is not None and ws.has(array) else None
    except Exception:  # an unreadable attribute is only a note
        return None


def _default_runner(workers: Optional[int], progress: bool) -> Callable:
    def run(task):
        from connectome.blockwise import make_executor, run_task

        with make_executor("local", workers=workers) as executor:
            report = run_task(task, executor, progress=progress)
        log.info(
            "evaluate --downstream: %s: %d blocks processed, %d already done, %.1f s",
            task.stage,
            report.processed,
            report.already_done,
            report.seconds,
        )

    return run
