"""``connectome skeletonize``: skeletons of every segment of a workspace segmentation.

Reads ``WS/volume.zarr/<input>`` (default ``segmentation``; refused while incomplete) and writes::

    WS/blockwise/skeletonize/          done-markers (resumable, as every blockwise stage)
    WS/skeletons/blocks/<block>.npz    one block's pieces (cropped skeletons + cut edges, voxel counts)
    WS/skeletons/precomputed/          the joined skeletons, Neuroglancer precomputed (the stage's copy)
    WS/skeletons/swc/<id>.swc          with ``swc: true`` (``--swc``): one SWC file per segment
    WS/skeletons/summary.json          what was made from what (fingerprint, counts, cable length)
    WS/precomputed/segmentation/skeletons/   the same skeletons beside the mesh, linked from the
                                       layer's ``info`` (``skeletons`` key) when the layer exists;
                                       ``export-precomputed`` restores them from the stage's copy
                                       whenever it rewrites the layer

Blocks run on any executor (:mod:`connectome.skeletons.skeletonize` explains the halo, crop and
join). A second run with the same segmentation, voxel size and config does nothing; a changed
segmentation discards the old block pieces and redoes them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, cast

import numpy as np

from connectome.skeletons.skeletonize import SkeletonizeConfig, check_voxel_size

log = logging.getLogger(__name__)

STAGE = "skeletonize"
OUT_DIR = "skeletons"
LAYER_SUBDIR = "skeletons"


def out_dir(workspace) -> Path:
    return Path(workspace) / OUT_DIR


@dataclass(frozen=True)
class SkeletonBlock:
    """Skeletonizes one block and writes its pieces to ``WS/skeletons/blocks/<block>.npz``."""

    workspace: str
    input: str
    voxel_size_nm: tuple[float, float, float]
    config: SkeletonizeConfig

    def __call__(self, block) -> None:
        from connectome.atomic import atomic_write_bytes
        from connectome.skeletons.skeletonize import pack, process_region
        from connectome.workspace import open_array

        arr = open_array(self.workspace, self.input)
        pieces, counts = process_region(
            arr, block.write_box.begin_zyx, block.write_box.end_zyx, self.voxel_size_nm, self.config
        )
        atomic_write_bytes(out_dir(self.workspace) / "blocks" / f"{block.block_id}.npz", pack(pieces, counts))


def plan(workspace, cfg: SkeletonizeConfig = SkeletonizeConfig(), voxel_size_nm=None):
    """The blockwise task (and whether its old markers came from another segmentation)."""
    from connectome.blockwise import BlockGrid, Task
    from connectome.config import config_to_dict
    from connectome.viewer.fsutil import tree_signature
    from connectome.workspace import VOLUME, Workspace

    ws = Workspace.open(workspace)
    ws.require_complete(cfg.input, "skeletonize")
    vs = check_voxel_size(ws.voxel_size_nm if voxel_size_nm is None else voxel_size_nm)
    block = cast("tuple[int, int, int]", tuple(min(b, s) for b, s in zip(cfg.blockwise.block_shape_zyx, ws.shape_zyx)))
    grid = BlockGrid(ws.shape_zyx, block)
    fingerprint = {
        "config": config_to_dict(cfg),
        "voxel_size_nm": list(vs),
        "source": tree_signature(ws.path / VOLUME / cfg.input),
    }
    proc = SkeletonBlock(str(ws.path), cfg.input, vs, cfg)
    return Task(STAGE, ws.path, grid, proc, fingerprint, (), max_retries=cfg.blockwise.max_retries), vs


def _stale_markers(task) -> bool:
    """True when the stage's markers were made from another segmentation / config (then they are
    discarded rather than refused: skeletons are derived data)."""
    path = task.workspace / "blockwise" / task.stage / "layout.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return old != json.loads(json.dumps(task.layout()))


def skeletonize_workspace(
    workspace,
    cfg: SkeletonizeConfig = SkeletonizeConfig(),
    voxel_size_nm=None,
    executor=None,
    progress: bool = False,
    restart: bool = False,
) -> dict:
    """Run the stage; returns its summary (also written to ``WS/skeletons/summary.json``)."""
    from connectome.blockwise import run_task
    from connectome.errors import StageFailed

    t0 = time.perf_counter()
    task, vs = plan(workspace, cfg, voxel_size_nm)
    odir = out_dir(task.workspace)
    summary_path = odir / "summary.json"
    try:
        old = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        old = None
    fp = json.loads(json.dumps(task.layout()))
    if (
        not restart
        and old
        and old.get("layout") == fp
        and (odir / "precomputed" / "info").is_file()
        and (not cfg.swc or (odir / "swc").is_dir())
    ):
        installed = install_in_export(task.workspace)
        log.info(
            "skeletonize: up to date (%d skeletons)%s",
            old.get("segments", 0),
            "; linked in the export" if installed else "",
        )
        return {**old, "status": "up to date", "seconds": round(time.perf_counter() - t0, 2)}
    if not restart and _stale_markers(task):
        log.info("skeletonize: the segmentation or config changed since the last run; redoing every block")
        restart = True
    report = run_task(task, executor, progress=progress, restart=restart)
    if executor is not None and not executor.is_driver:
        return {}
    if report.failed:
        raise StageFailed(f"skeletonize: {report.failed} block(s) failed; see the log, then rerun to retry them")
    summary = finish(task, cfg, vs, progress)
    summary.update(
        status="written", blocks=report.total, blocks_run=report.processed, seconds=round(time.perf_counter() - t0, 2)
    )
    from connectome.viewer.fsutil import write_json

    write_json(summary_path, {**summary, "layout": fp})
    summary["in_export"] = install_in_export(task.workspace)
    write_json(summary_path, {**summary, "layout": fp})
    if summary["in_export"]:
        log.info("skeletonize: skeletons linked in %s", task.workspace / "precomputed" / "segmentation")
    return summary


def finish(task, cfg: SkeletonizeConfig, vs, progress: bool = False) -> dict:
    """Join every block's pieces; write the stage's precomputed copy and SWC files (on request)."""
    import shutil

    from tqdm import tqdm

    from connectome.skeletons.precomputed import write_skeletons
    from connectome.skeletons.skeletonize import join_pieces, join_radius, unpack

    t0 = time.perf_counter()
    odir = out_dir(task.workspace)
    blocks = [unpack((odir / "blocks" / f"{b.block_id}.npz").read_bytes()) for b in task.grid.blocks()]
    skels = join_pieces(blocks, join_radius(cfg, vs), cfg.dust_voxels, progress=progress)
    write_skeletons(odir / "precomputed", skels)
    swc_dir = odir / "swc"
    shutil.rmtree(swc_dir, ignore_errors=True)
    if cfg.swc:
        from connectome.skeletons.swc import write_swc

        swc_dir.mkdir(parents=True)
        for seg_id, sk in tqdm(skels.items(), disable=not progress, desc="skeletonize: swc", unit="file"):
            write_swc(swc_dir / f"{seg_id}.swc", sk, f"segment {seg_id} of {task.workspace}; nm; x y z")
    lengths = np.array([s.length_nm() for s in skels.values()]) if skels else np.zeros(0)
    n_comp = [s.components()[0] for s in skels.values()]
    log.info(
        "skeletonize: %d skeletons, %.1f mm cable, joined in %.1f s",
        len(skels),
        lengths.sum() / 1e6,
        time.perf_counter() - t0,
    )
    return {
        "segments": len(skels),
        "cable_length_nm": float(lengths.sum()),
        "vertices": int(sum(s.n_vertices for s in skels.values())),
        "segments_in_several_pieces": int(sum(k > 1 for k in n_comp)),
        "swc": str(swc_dir) if cfg.swc else None,
        "precomputed": str(odir / "precomputed"),
        "voxel_size_nm": list(vs),
    }


def install_in_export(workspace, out: Optional[Path] = None) -> bool:
    """Copy the stage's skeletons into ``OUT/segmentation/skeletons`` (default OUT =
    ``WS/precomputed``) when the stage's skeletons were made from the workspace's current
    segmentation, and link them from the layer's ``info``. True when linked (the layer's info
    exists: ``export-precomputed`` has run; it calls this again whenever it rewrites the layer)."""
    import shutil

    from connectome.skeletons.precomputed import link_skeletons
    from connectome.viewer.fsutil import tree_signature
    from connectome.workspace import VOLUME

    workspace = Path(workspace)
    src = out_dir(workspace) / "precomputed"
    layer = (Path(out) if out else workspace / "precomputed") / "segmentation"
    try:
        summary = json.loads((out_dir(workspace) / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if summary is not None:
        layout = summary.get("layout") or {}
        name = ((layout.get("fingerprint") or {}).get("config") or {}).get("input", "segmentation")
        if name != "segmentation" or (layout.get("fingerprint") or {}).get("source") != tree_signature(
            workspace / VOLUME / "segmentation"
        ):
            return False  # made from another array or an older segmentation
    if not (src / "info").is_file():
        return False
    dst = layer / LAYER_SUBDIR
    if not (dst / "info").is_file() or sorted(p.name for p in dst.iterdir()) != sorted(p.name for p in src.iterdir()):
        tmp = layer / (LAYER_SUBDIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        layer.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    return link_skeletons(layer, LAYER_SUBDIR)
