"""Run functions of the processing stages (``connectome import`` ... ``graph``): parse the options
into the stage's typed config, plan the blockwise task(s), run them. Declared in :mod:`.table`."""

from __future__ import annotations

import os
from typing import Any

from connectome.commands import runtime as rt
from connectome.errors import UserInputError
from connectome.inputs import finite_float


def import_volume(args) -> int:
    from connectome.stages import importer
    from connectome.workspace import parse_zyx

    voxel = parse_zyx(args.voxel_size, "--voxel-size")
    overrides = {}
    if args.intensity_range:
        parts = args.intensity_range.split(",")
        if len(parts) != 2:
            raise UserInputError(f"--intensity-range: expected LO,HI numbers, got {args.intensity_range!r}")
        lo, hi = (finite_float(v.strip(), "--intensity-range") for v in parts)
        overrides["intensity_range"] = [lo, hi]
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = rt.stage_config(args, importer.ImportConfig, overrides)
    task = importer.plan(args.src, args.workspace, voxel, cfg)
    return rt.run(args, task, "import")


def smooth(args) -> int:
    from connectome.stages import smooth
    from connectome.workspace import parse_zyx

    overrides = {}
    if args.sigma_nm:
        overrides["sigma_nm"] = list(parse_zyx(args.sigma_nm, "--sigma-nm", positive=False))
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = rt.stage_config(args, smooth.SmoothConfig, overrides)
    task = smooth.plan(args.workspace, cfg)
    return rt.run(args, task, "smooth")


def stitch(args) -> int:
    from connectome.montage import stitch_stage
    from connectome.workspace import parse_zyx

    overrides: dict[str, Any] = {}
    if args.voxel_size:
        overrides["voxel_size_nm"] = list(parse_zyx(args.voxel_size, "--voxel-size"))
    if args.frame_shape:
        overrides["frame_shape_yx"] = stitch_stage.parse_yx(args.frame_shape, "--frame-shape")
    if args.skip_bad_tiles:
        overrides["skip_bad_tiles"] = True
    if args.allow_absolute_paths:
        overrides["allow_absolute_paths"] = True
    cfg = rt.stage_config(args, stitch_stage.StitchConfig, overrides)
    task = stitch_stage.plan(args.tiles, args.workspace, cfg, restart=args.restart)
    rc = rt.run(args, task, "stitch")
    if stitch_stage.is_driver_process():
        stitch_stage.write_tables(args.workspace)
    return rc


def align(args) -> int:
    from connectome.montage import align_stage
    from connectome.workspace import parse_zyx

    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = rt.stage_config(args, align_stage.AlignConfig, overrides)
    rt.restart_later_steps(args, "align-bridge", "align-render")
    rc = rt.run(args, align_stage.plan_match(args.workspace, cfg, restart=args.restart), "align")
    rc = rc or rt.run(args, align_stage.plan_bridge(args.workspace, cfg), "align-bridge")
    rc = rc or rt.run(args, align_stage.plan_render(args.workspace, cfg), "align-render")
    if align_stage.is_driver_process():
        align_stage.write_report(args.workspace, cfg)
    return rc


def mask_vessels(args) -> int:
    from connectome.stages import load_stage
    from connectome.workspace import parse_zyx

    vessel = load_stage("mask-vessels")
    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = rt.stage_config(args, vessel.Config, overrides)
    rt.restart_later_steps(args, vessel.STAGE_MASK)
    rc = rt.run(args, vessel.plan_prob(args.workspace, cfg, args.model), "mask-vessels")
    return rc or rt.run(args, vessel.plan_mask(args.workspace, cfg), "mask-vessels-post")


def predict_boundaries(args) -> int:
    from connectome.stages import load_stage
    from connectome.workspace import parse_zyx

    bnd = load_stage("predict-boundaries")
    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = rt.stage_config(args, bnd.Config, overrides)
    return rt.run(args, bnd.plan(args.workspace, cfg, args.model), "predict-boundaries")


def segment(args) -> int:
    from connectome.stages import load_stage
    from connectome.workspace import parse_zyx

    seg = load_stage("segment")
    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    if args.method:
        overrides["method"] = args.method
    cfg = rt.stage_config(args, seg.Config, overrides)
    rt.restart_later_steps(args, seg.STAGE_WRITE)
    rc = rt.run(args, seg.plan_subvolumes(args.workspace, cfg, args.model), "segment")
    return rc or rt.run(args, seg.plan_write(args.workspace, cfg, args.model), "segment-write")


def synapses(args) -> int:
    from connectome.logsetup import add_log_file
    from connectome.stages import load_stage
    from connectome.synapses.detect import detect_synapses
    from connectome.workspace import parse_zyx

    syn = load_stage("synapses")
    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    if args.threshold is not None:
        overrides["threshold"] = args.threshold
    if args.min_size is not None:
        overrides["min_size_voxels"] = args.min_size
    cfg = rt.stage_config(args, syn.Config, overrides)
    rt.restart_later_steps(args, "synapses-label", "synapses-join", "synapses-partners")
    rc = rt.run(args, syn.plan_predict(args.workspace, cfg, args.model), "synapses")
    if rc:
        return rc
    with rt.executor(args) as executor:
        if executor.is_driver:
            add_log_file(args.workspace, "synapses-detect")
        summary = detect_synapses(
            args.workspace,
            syn.detect_config(args.workspace, cfg),
            executor,
            progress=rt.progress(args),
            restart=args.restart,
        )
    if executor.is_driver:
        print(summary.describe())
    return 0


def skeletonize(args) -> int:
    from connectome.logsetup import add_log_file
    from connectome.skeletons.skeletonize import SkeletonizeConfig
    from connectome.skeletons.stage import plan, skeletonize_workspace
    from connectome.workspace import parse_zyx

    overrides = {}
    if args.segmentation:
        overrides["input"] = args.segmentation
    if args.swc:
        overrides["swc"] = True
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    voxel = parse_zyx(args.anisotropy, "--anisotropy") if args.anisotropy else None
    cfg = rt.stage_config(args, SkeletonizeConfig, overrides)
    plan(args.workspace, cfg, voxel)  # bad input fails here, before any worker pool starts
    with rt.executor(args) as executor:
        if executor.is_driver and os.path.isdir(args.workspace):  # never create a missing workspace
            add_log_file(args.workspace, "skeletonize")
        summary = skeletonize_workspace(
            args.workspace, cfg, voxel, executor, progress=rt.progress(args), restart=args.restart
        )
    if executor.is_driver:
        print(
            f"skeletonize: {summary.get('segments', 0)} skeletons, "
            f"{summary.get('cable_length_nm', 0.0) / 1e3:.1f} um of cable, {summary['status']}"
            f"{', in the export' if summary.get('in_export') else ''}, {summary.get('seconds', 0):.1f} s"
        )
    return 0


def graph(args) -> int:
    from connectome.graph import build_graph

    summary = build_graph(args.workspace, min_score=args.min_score, min_synapses=args.min_synapses)
    print(summary.describe())
    return 0
