"""The ``connectome`` command line: parse, validate, call the library.

Exit codes: 0 done; 2 bad input or usage (one line on stderr naming what is wrong);
1 internal failure (a block kept failing, a bug). See ``shared/CONTRACT.md``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
from typing import Sequence

from connectome import __version__
from connectome.errors import ConnectomeError, UserInputError
from connectome.inputs import finite_float, float_option

log = logging.getLogger("connectome")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit code 2 (no usage dump)."""

    def error(self, message):  # noqa: D401
        raise UserInputError(f"{self.prog}: {message}")


# ---------------------------------------------------------------------------------------------
# shared options (defined once)

def _stage_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("execution")
    g.add_argument("--config", metavar="FILE.yaml", help="the stage's typed config (YAML); unknown keys are rejected")
    g.add_argument("--executor", default="local", help="serial | local (default) | dask | mpi")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes for --executor local")
    g.add_argument("--scheduler-file", metavar="PATH", help="dask scheduler file for --executor dask")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    g.add_argument("--restart", action="store_true",
                   help="discard this stage's done-markers and recompute every block")
    return p


def _common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _executor(args):
    from connectome.blockwise import EXECUTORS, make_executor

    if args.executor not in EXECUTORS:
        raise UserInputError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {args.executor!r}")
    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers: expected a positive number, got {args.workers}")
    return make_executor(args.executor, workers=args.workers, scheduler_file=args.scheduler_file)


def _progress(args) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def _run(args, task, command: str) -> int:
    """Run a planned task with the executor chosen on the command line."""
    from connectome.blockwise import run_task
    from connectome.logsetup import add_log_file

    with _executor(args) as executor:
        if executor.is_driver:
            path = add_log_file(task.workspace, command)
            if path:
                log.debug("log file %s", path)
        else:  # MPI ranks > 0 stay quiet
            logging.getLogger().handlers[0].setLevel(logging.ERROR)
        report = run_task(task, executor, progress=_progress(args), restart=args.restart)
    if executor.is_driver:
        print(f"{command}: {report.processed} blocks processed, {report.already_done} already done, "
              f"{report.total} total, {report.seconds:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# commands

def cmd_import(args) -> int:
    from connectome.config import load_config
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
    cfg = load_config(importer.ImportConfig, args.config, overrides)
    task = importer.plan(args.src, args.workspace, voxel, cfg)
    return _run(args, task, "import")


def cmd_smooth(args) -> int:
    from connectome.config import load_config
    from connectome.stages import smooth
    from connectome.workspace import parse_zyx

    overrides = {}
    if args.sigma_nm:
        overrides["sigma_nm"] = list(parse_zyx(args.sigma_nm, "--sigma-nm", positive=False))
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = load_config(smooth.SmoothConfig, args.config, overrides)
    task = smooth.plan(args.workspace, cfg)
    return _run(args, task, "smooth")


def cmd_stitch(args) -> int:
    from connectome.config import load_config
    from connectome.montage import stitch_stage
    from connectome.workspace import parse_zyx

    overrides = {}
    if args.voxel_size:
        overrides["voxel_size_nm"] = list(parse_zyx(args.voxel_size, "--voxel-size"))
    if args.frame_shape:
        overrides["frame_shape_yx"] = stitch_stage.parse_yx(args.frame_shape, "--frame-shape")
    if args.skip_bad_tiles:
        overrides["skip_bad_tiles"] = True
    if args.allow_absolute_paths:
        overrides["allow_absolute_paths"] = True
    cfg = load_config(stitch_stage.StitchConfig, args.config, overrides)
    task = stitch_stage.plan(args.tiles, args.workspace, cfg, restart=args.restart)
    rc = _run(args, task, "stitch")
    if stitch_stage.is_driver_process():
        stitch_stage.write_tables(args.workspace)
    return rc


def cmd_align(args) -> int:
    from connectome.config import load_config
    from connectome.montage import align_stage
    from connectome.workspace import parse_zyx

    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = load_config(align_stage.AlignConfig, args.config, overrides)
    rc = _run(args, align_stage.plan_match(args.workspace, cfg, restart=args.restart), "align")
    rc = rc or _run(args, align_stage.plan_bridge(args.workspace, cfg), "align-bridge")
    rc = rc or _run(args, align_stage.plan_render(args.workspace, cfg), "align-render")
    if align_stage.is_driver_process():
        align_stage.write_report(args.workspace, cfg)
    return rc


def cmd_mask_vessels(args) -> int:
    from connectome.config import load_config
    from connectome.stages import load_stage
    from connectome.workspace import parse_zyx

    vessel = load_stage("mask-vessels")
    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = load_config(vessel.Config, args.config, overrides)
    rc = _run(args, vessel.plan_prob(args.workspace, cfg, args.model), "mask-vessels")
    return rc or _run(args, vessel.plan_mask(args.workspace, cfg), "mask-vessels-post")


def cmd_predict_boundaries(args) -> int:
    from connectome.config import load_config
    from connectome.stages import load_stage
    from connectome.workspace import parse_zyx

    bnd = load_stage("predict-boundaries")
    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    cfg = load_config(bnd.Config, args.config, overrides)
    return _run(args, bnd.plan(args.workspace, cfg, args.model), "predict-boundaries")


def cmd_segment(args) -> int:
    from connectome.config import load_config
    from connectome.stages import load_stage
    from connectome.workspace import parse_zyx

    seg = load_stage("segment")
    overrides = {}
    if args.block_shape:
        overrides["blockwise.block_shape_zyx"] = list(parse_zyx(args.block_shape, "--block-shape", cast=int))
    if args.method:
        overrides["method"] = args.method
    cfg = load_config(seg.Config, args.config, overrides)
    rc = _run(args, seg.plan_subvolumes(args.workspace, cfg, args.model), "segment")
    return rc or _run(args, seg.plan_write(args.workspace, cfg, args.model), "segment-write")


def _train(args, kind: str, describe) -> int:
    """``connectome train KIND``: config (+ --steps), train or resume, print a one-line summary
    (``describe(summary)`` adds the kind's validation figures)."""
    from connectome.config import load_config
    from connectome.stages import load_stage
    from connectome.training.export import check_out_dir

    check_out_dir(args.out, args.overwrite)  # before anything is loaded or trained
    train = load_stage(f"train-{kind}")
    overrides = {}
    if args.steps is not None:
        if args.steps < 1:
            raise UserInputError(f"--steps: expected a positive number, got {args.steps}")
        overrides["trainer.steps"] = args.steps
    cfg = load_config(train.Config, args.config, overrides)
    summary = getattr(train, f"train_{kind}")(args.data, args.out, cfg, val_dirs=args.val or (), restart=args.restart,
                                              overwrite=args.overwrite)
    if summary.get("stopped"):
        print(f"train {kind}: stopped at step {summary['steps']} of {summary['total_steps']} (checkpoint saved); "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    if summary:  # rank 0
        print(f"train {kind}: {summary['steps']} steps on {summary['ranks']} rank(s) in {summary['seconds']:.0f} s; "
              f"model in {summary['model_dir']}" + describe(summary))
    return 0


def cmd_train_vessel(args) -> int:
    def describe(summary):
        ious = ", ".join(f"seed {v['seed']}: {v['iou']:.4f}" for v in summary["validation"].get("volumes", []))
        return f"; validation IoU {ious}" if ious else ""

    return _train(args, "vessel", describe)


def cmd_train_ffn(args) -> int:
    def describe(summary):
        m = summary["validation"]["episodes_f1_at_0.9"]
        return "; validation episodes P/R/F1 at 0.9: " + "/".join(f"{m.get(k, float('nan')):.3f}"
                                                                  for k in ("precision", "recall", "f1"))

    return _train(args, "ffn", describe)


def cmd_train_synapse(args) -> int:
    def describe(summary):
        vols = summary["validation"].get("volumes", [])
        f1 = ", ".join(f"{v['path'].rstrip('/').split('/')[-1]}: F1 {v['f1']}" for v in vols)
        return f"; validation {f1}" if f1 else ""

    return _train(args, "synapse", describe)


def cmd_train_boundary(args) -> int:
    def describe(summary):
        m = summary["validation"].get("crops_at_model_resolution") or {}
        return (f"; validation boundary Dice {m.get('boundary_dice', float('nan')):.4f}, affinity balanced accuracy "
                f"{m.get('affinity_balanced_accuracy', float('nan')):.4f}")

    return _train(args, "boundary", describe)


def cmd_synapses(args) -> int:
    from connectome.config import load_config
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
    cfg = load_config(syn.Config, args.config, overrides)
    rc = _run(args, syn.plan_predict(args.workspace, cfg, args.model), "synapses")
    if rc:
        return rc
    with _executor(args) as executor:
        if executor.is_driver:
            add_log_file(args.workspace, "synapses-detect")
        summary = detect_synapses(args.workspace, syn.detect_config(args.workspace, cfg), executor,
                                  progress=_progress(args), restart=args.restart)
    if executor.is_driver:
        print(summary.describe())
    return 0


def cmd_graph(args) -> int:
    from connectome.graph import build_graph

    summary = build_graph(args.workspace, min_score=args.min_score, min_synapses=args.min_synapses)
    print(summary.describe())
    return 0


def cmd_synth(args) -> int:
    from connectome.synth import generate
    from connectome.workspace import parse_zyx

    shape = parse_zyx(args.shape, "--shape", cast=int) if args.shape else None
    overrides = _parse_sets(args.set or [], "--set")
    out = generate(args.out, shape_zyx=shape, seed=args.seed, preset=args.preset, preview=args.preview,
                   progress=_progress(args), **overrides)
    print(f"synth: wrote {out}")
    return 0


def _parse_sets(items, what: str) -> dict:
    """``KEY=VALUE`` pairs (VALUE read as YAML: numbers, booleans, lists) -> dict."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"{what} {item!r}: expected KEY=VALUE, e.g. noise_sigma=0.2")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserInputError(f"{what} {item!r}: the value is not a number, boolean, string or list") from None
        for v in out[key.strip()] if isinstance(out[key.strip()], list) else [out[key.strip()]]:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserInputError(f"{what} {item!r}: expected a finite number, got {v!r}")
    return out


def cmd_evaluate(args) -> int:
    from connectome.config import load_config
    from connectome.evaluate import EvaluateConfig, evaluate_workspace, format_table

    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers: expected a positive number, got {args.workers}")
    cfg = load_config(EvaluateConfig, args.config, {"downstream": True} if args.downstream else None)
    results = evaluate_workspace(args.workspace, args.truth, cfg, workers=args.workers,
                                 progress=_progress(args))
    print(format_table(results))
    return 0


def cmd_demo(args) -> int:
    from connectome.demo import run_demo

    return run_demo(args.workspace, preset=args.preset, seed=args.seed, progress=args.progress)


def cmd_info(args) -> int:
    from connectome.workspace import Workspace

    ws = Workspace.open(args.workspace, mode="r")
    print(f"workspace {ws.path}: shape (z,y,x) {list(ws.shape_zyx)}, voxel size {list(ws.voxel_size_nm)} nm")
    for name in ws.array_names():
        a = ws.array(name)
        st = ws.array_state(name)
        if st is None:
            state = "complete (no state recorded)"
        elif ws.is_complete(name):
            state = f"complete (stage '{st.get('stage')}')"
        else:
            state = f"INCOMPLETE (stage '{st.get('stage')}' did not finish; rerun `connectome {st.get('stage')}`)"
        print(f"  {name:16s} {str(a.dtype):8s} chunks {list(a.chunks)}  {state}")
    return 0


def cmd_hpo_run(args) -> int:
    from hpo.run import run_search

    return run_search(args.space, args.out, args.max_evals, args.evaluator, args.workers)


def cmd_hpo_report(args) -> int:
    from hpo.report import report

    return report(args.dir, top=args.top)


def cmd_pbs_render(args):
    from connectome import pbs

    spec = pbs.JobSpec(stage=args.stage, system=args.system, nodes=args.nodes, project=args.project,
                       ppn=args.ppn, depth=args.depth, walltime=args.walltime, queue=args.queue,
                       filesystems=args.filesystems, workspace=args.workspace, stage_args=args.stage_args,
                       setup=args.setup)
    if pbs.is_pipeline(args.stage):  # one script per pipeline stage
        jobs = pbs.pipeline_jobs(spec, getattr(args, "from_stage", None), getattr(args, "until", None))
        if args.func is cmd_pbs_submit:
            pbs.submit(jobs, after=args.after, dry_run=args.dry_run)
        elif args.out and not args.dry_run:
            print("\n".join(str(p) for p in pbs.write_pipeline(jobs, args.out)))
        else:
            pbs.print_pipeline(jobs)
        return 0
    if args.out and not args.dry_run:
        path = pbs.write(spec, args.out)
        print(path)
    else:
        sys.stdout.write(pbs.render(spec))
    return 0


def cmd_pbs_submit(args):
    from connectome.pbs import is_pipeline

    if not is_pipeline(args.stage):
        raise UserInputError(f"PIPELINE: expected a pipeline YAML file, got {args.stage!r}")
    return cmd_pbs_render(args)


def cmd_run(args) -> int:
    from connectome.pipeline import run_pipeline

    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers: expected a positive number, got {args.workers}")
    return run_pipeline(args.pipeline, args.workspace, from_=args.from_stage, until=args.until, only=args.only,
                        executor=args.executor, workers=args.workers, scheduler_file=args.scheduler_file,
                        progress=args.progress)


def cmd_export_precomputed(args) -> int:
    from connectome.viewer.commands import export_command

    return export_command(args)


def cmd_view(args) -> int:
    from connectome.viewer.commands import view_command

    return view_command(args)


def build_parser() -> argparse.ArgumentParser:
    common, stage = _common_options(), _stage_options()
    parser = _Parser(prog="connectome", description="Reconstruct neural circuits from serial-section EM.")
    parser.add_argument("--version", action="version", version=f"connectome {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("import", parents=[common, stage], help="import an aligned volume into WS/volume.zarr/raw",
                       description="Import an aligned volume (zarr array, multi-page TIFF, folder of per-section "
                                   "TIFF/PNG, or file.h5:/dataset) as WS/volume.zarr/raw (uint8). uint16 input is "
                                   "rescaled: the 0.1..99.9th percentiles of a sample map to 0..255.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--voxel-size", required=True, metavar="Z,Y,X", help="voxel size in nm, e.g. 40,8,8")
    p.add_argument("--intensity-range", metavar="LO,HI", help="fixed input range mapped to 0..255")
    p.add_argument("--block-shape", metavar="Z,Y,X", help="block (and chunk) shape in voxels")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("smooth", parents=[common, stage], help="Gaussian-smoothed copy of raw (blockwise, with halo)")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--sigma-nm", metavar="Z,Y,X", help="Gaussian sigma in nm (default 40,16,16)")
    p.add_argument("--block-shape", metavar="Z,Y,X")
    p.set_defaults(func=cmd_smooth)

    p = sub.add_parser("stitch", parents=[common, stage], help="stitch tiles into section montages",
                       description="Register overlapping neighbour tiles, place all tiles of a section by robust "
                                   "least squares and render one montage per section (WS/stitch/montages.zarr); "
                                   "creates the workspace; QC in WS/stitch/{tiles,pairs,sections}.csv.")
    p.add_argument("--tiles", required=True, metavar="MANIFEST.csv", help="tile manifest: section,row,col,path,x,y")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--voxel-size", metavar="Z,Y,X", help="voxel size in nm of the workspace (default 40,8,8)")
    p.add_argument("--frame-shape", metavar="Y,X",
                   help="(y, x) size of the aligned frame (default: the first section's montage extent)")
    p.add_argument("--skip-bad-tiles", action="store_true",
                   help="report and leave out missing, unreadable or odd-sized tiles instead of stopping")
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept tile paths outside the manifest's folder (absolute, or leading out with ..)")
    p.set_defaults(func=cmd_stitch)

    p = sub.add_parser("align", parents=[common, stage], help="align the stitched sections into WS/volume.zarr/raw",
                       description="Register every section to its predecessor (coarse affine + elastic field; bad "
                                   "sections bridged from z-2..z-4), compose the transforms along z and render the "
                                   "aligned volume blockwise; QC in WS/align/pairs.csv and preview PNGs.")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--block-shape", metavar="Z,Y,X", help="render block (and raw chunk) shape in voxels")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("mask-vessels", parents=[common, stage], help="blood-vessel mask with a 2D U-Net",
                       description="Predict WS/volume.zarr/vessel_prob (uint8, 0..255 = 0..1) from raw with a 2D "
                                   "U-Net on a global tile grid, then threshold, fill holes and remove specks per "
                                   "section into WS/volume.zarr/vessel_mask (uint8 {0,1}). Both steps are blockwise "
                                   "and resumable.")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the shipped unet/models/vessel)")
    p.add_argument("--block-shape", metavar="Z,Y,X", help="block (and chunk) shape in voxels")
    p.set_defaults(func=cmd_mask_vessels)

    p = sub.add_parser("predict-boundaries", parents=[common, stage],
                       help="cell boundaries and affinities with a 3D U-Net (input of segment)",
                       description="Predict WS/volume.zarr/boundary: uint8 (0..255 = 0..1), channel-first "
                                   "(4, z, y, x) = boundary probability and the affinities to the predecessor along "
                                   "z, y, x, with the boundary 3D U-Net on a global tile grid (blockwise == whole "
                                   "volume; resumable).")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the shipped unet/models/boundary)")
    p.add_argument("--block-shape", metavar="Z,Y,X", help="block (and chunk) shape in voxels")
    p.set_defaults(func=cmd_predict_boundaries)

    p = sub.add_parser("segment", parents=[common, stage],
                       help="neuron segmentation (learned-boundary watershed, FFN or classical baseline)",
                       description="Segment neurons into WS/volume.zarr/segmentation (uint64, 0 = none) over "
                                   "overlapping subvolumes (one block each, resumable), then ids reconciled across "
                                   "the overlaps (union-find). Methods: watershed (default: supervoxels from "
                                   "WS/volume.zarr/boundary of `connectome predict-boundaries`, agglomerated by mean "
                                   "affinity), ffn (the Flood-Filling Network, --model), baseline (classical "
                                   "watershed on the raw image). vessel_mask voxels are never claimed.")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--model", metavar="DIR", help="FFN model directory (method ffn; default: the shipped one)")
    p.add_argument("--method", choices=["auto", "watershed", "ffn", "ffn-agglomerate", "baseline"],
                   help="segmenter (overrides the config's method). Default auto: ffn when --model is given, else "
                        "watershed (learned boundaries from `connectome predict-boundaries`)")
    p.add_argument("--block-shape", metavar="Z,Y,X", help="subvolume core (= block and chunk) shape in voxels")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("synapses", parents=[common, stage], help="synapse detection with a 3D U-Net",
                       description="Predict WS/volume.zarr/synapse_prob (cleft) and synapse_post (postsynaptic side) "
                                   "with the synapse 3D U-Net on a global tile grid, then detect synapses (threshold "
                                   "+ 26-connected components + minimum size, consistent across block borders), "
                                   "assign pre/post partners from WS/volume.zarr/segmentation and write "
                                   "WS/synapses.csv. Blockwise and resumable.")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the shipped unet/models/synapse)")
    p.add_argument("--threshold", type=float_option, metavar="T", help="cleft threshold (default: the model's)")
    p.add_argument("--min-size", type=int, metavar="N", help="minimum synapse size in voxels (default: the model's)")
    p.add_argument("--block-shape", metavar="Z,Y,X", help="block (and chunk) shape in voxels")
    p.set_defaults(func=cmd_synapses)

    p = sub.add_parser("graph", parents=[common], help="the connectivity graph from WS/synapses.csv",
                       description="Group the synapses of WS/synapses.csv by (pre, post) segment into "
                                   "WS/connectivity.csv and WS/connectivity.graphml (node attribute size_voxels from "
                                   "WS/volume.zarr/segmentation). Synapses with id 0, autapses and those below "
                                   "--min-score are dropped, then edges with fewer than --min-synapses synapses. "
                                   "Rules: connectome/graph.py.")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--min-score", type=float_option, default=0.0, metavar="S",
                   help="drop synapses with score < S (default 0: keep all)")
    p.add_argument("--min-synapses", type=int, default=1, metavar="K",
                   help="drop edges with fewer than K synapses (default 1)")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("train", help="train a model (KIND: vessel, ffn, synapse, boundary)",
                       description="Train a model into a self-describing model directory. Runs as one process or "
                                   "data-parallel under horovodrun / mpiexec (one process per rank).")
    train_kinds = p.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser, required=True)
    def train_kind(kind, func, help_text, description, val_help, config_help, val_default=()):
        k = train_kinds.add_parser(kind, parents=[common], help=help_text, description=description)
        k.add_argument("--data", action="append", required=True, metavar="DIR",
                       help="a `connectome synth` output folder (repeat for several)")
        k.add_argument("--val", action="append", default=None if val_default is None else list(val_default),
                       metavar="DIR", help=val_help)
        k.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model directory to write")
        k.add_argument("--config", metavar="FILE.yaml", help=config_help)
        k.add_argument("--steps", type=int, metavar="N", help="total training steps (overrides trainer.steps)")
        k.add_argument("--restart", action="store_true", help="discard MODEL_DIR/train and start over")
        k.add_argument("--overwrite", action="store_true",
                       help="replace MODEL_DIR if it already holds a finished model (refused otherwise); the "
                            "new model is swapped in only once it is complete")
        k.set_defaults(func=func)

    train_kind("vessel", cmd_train_vessel, "the 2D U-Net vessel model",
               "Train the 2D vessel U-Net on `connectome synth` folders (truth.zarr: raw, vessels). Resumes from "
               "MODEL_DIR/train/checkpoints.",
               "a held-out `connectome synth` folder for validation (repeat for several)",
               "VesselTrainConfig (YAML); unknown keys are rejected")
    train_kind("ffn", cmd_train_ffn, "the Flood-Filling Network (neurons)",
               "Train the FFN on `connectome synth` folders (truth.zarr: raw, neurons, vessels) with FOV movement; "
               "data-parallel under horovodrun/mpiexec. Resumes from MODEL_DIR/train/checkpoints.",
               "held-out volume for checkpoint choice (repeatable)",
               "FFN training config (model, examples, trainer)", val_default=None)
    train_kind("synapse", cmd_train_synapse, "the 3D U-Net synapse model",
               "Train the synapse 3D U-Net (cleft + postsynaptic side) on `connectome synth` folders (truth.zarr: raw, "
               "neurons, synapse_clefts; truth/synapses.csv); calibrates the detection threshold and minimum size on "
               "--val. Resumes from MODEL_DIR/train/checkpoints.",
               "held-out volume for the checkpoint and the detection calibration (repeatable)",
               "SynapseTrainConfig (YAML); unknown keys are rejected")
    train_kind("boundary", cmd_train_boundary, "the 3D U-Net boundary/affinity model (neurons)",
               "Train the boundary 3D U-Net (boundary probability + z/y/x affinities) on `connectome synth` folders "
               "(truth.zarr: raw, neurons); data-parallel under horovodrun/mpiexec. Resumes from "
               "MODEL_DIR/train/checkpoints.",
               "held-out volume for the checkpoint choice (repeatable)",
               "BoundaryTrainConfig (YAML); unknown keys are rejected")

    p = sub.add_parser("synth", parents=[common], help="synthesise an EM dataset with full ground truth")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--shape", metavar="Z,Y,X", help="volume shape in voxels (default: from the preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=["small", "demo", "bench", "fibres"], default="small")
    p.add_argument("--preview", action="store_true", help="also write OUT/preview.png")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a generator parameter (repeatable), e.g. --set noise_sigma=0.2 --set psf_sigma_px=1.4 "
                        "(fields of connectome/synth/presets.py SynthConfig)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("evaluate", parents=[common], help="score a workspace against ground truth")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--truth", required=True, metavar="DIR", help="a `connectome synth` output folder")
    p.add_argument("--config", metavar="FILE.yaml", help="evaluation thresholds (EvaluateConfig)")
    p.add_argument("--downstream", action="store_true",
                   help="alignment criterion (e): segment the truth raw too (imported into WS/evaluate/truth_raw/, "
                        "predict-boundaries + segment with the workspace's stage configs; reused while the truth "
                        "is unchanged) and report ARAND/VOI of the aligned volume minus the truth raw's; needs the "
                        "WS segmentation. Minutes")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes for the --downstream stages (default: all cores)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars for the --downstream stages (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", parents=[common], help="the whole reconstruction on synthetic data, evaluated",
                       description="Run pipelines/demo.yaml (synth -> stitch -> align -> mask-vessels -> segment -> "
                                   "synapses -> graph -> evaluate -> export-precomputed) on WS with the chosen synth "
                                   "preset, then print the metrics, the stage timings and the view command. Rerun "
                                   "to resume: finished stages are skipped.")
    p.add_argument("--workspace", default="demo_ws", metavar="WS")
    p.add_argument("--preset", choices=["small", "demo"], default="demo")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", parents=[common], help="run a pipeline (pipelines/*.yaml), stage by stage",
                       description="Run the stages of PIPELINE.yaml in order on WS, each exactly as its own command "
                                   "with the pipeline's options and config; stages finished before (WS/pipeline/done) "
                                   "are skipped, an interrupted stage resumes from its block done-markers. Per-stage "
                                   "status, wall time, block counts and versions go to WS/run.json. Exit code: that "
                                   "of the first failing stage.")
    p.add_argument("pipeline", metavar="PIPELINE.yaml")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="start at this stage id")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage id")
    p.add_argument("--only", metavar="STAGE", help="run only this stage id (how PBS jobs run a pipeline stage)")
    p.add_argument("--executor", help="override the executor of the blockwise stages: serial | local | dask | mpi")
    p.add_argument("--workers", type=int, metavar="N", help="override the worker count of the blockwise stages")
    p.add_argument("--scheduler-file", metavar="PATH", help="dask scheduler file (with --executor dask)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("export-precomputed", parents=[common], help="export the workspace for Neuroglancer",
                       description="Write WS/volume.zarr's raw, segmentation (+ meshes, segment properties) and "
                                   "vessel_mask, and WS/synapses.csv, as neuroglancer precomputed layers in OUT "
                                   "(default WS/precomputed). Blockwise and incremental: unchanged layers are "
                                   "skipped, an interrupted export resumes; missing inputs are reported.")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.add_argument("--out", metavar="DIR", help="export folder (default WS/precomputed)")
    p.add_argument("--no-compress", action="store_true", help="write volume chunks uncompressed (default gzip)")
    p.set_defaults(func=cmd_export_precomputed)

    p = sub.add_parser("view", parents=[common], help="inspect the workspace in Neuroglancer",
                       description="Bring the export up to date, serve it with the bundled neuroglancer client "
                                   "over HTTP (CORS) and print the viewer URL; --screenshot renders headlessly "
                                   "and exits; --print-url --base-url prints a URL for an export published "
                                   "elsewhere.")
    p.add_argument("--workspace", metavar="WS")
    p.add_argument("--out", metavar="DIR", help="export folder (default WS/precomputed)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, metavar="P", help="port (default 8585; 0 = any free port)")
    p.add_argument("--no-export", action="store_true", help="serve OUT as it is (no incremental export first)")
    p.add_argument("--cors", action="append", metavar="ORIGIN",
                   help="also let pages of ORIGIN (scheme://host:port) read the data; '*' = any page "
                        "(default: only the viewer's own origin); repeatable")
    p.add_argument("--screenshot", metavar="OUT.png", help="render headlessly into OUT.png and exit")
    p.add_argument("--size", default="1280,960", metavar="W,H", help="screenshot size in pixels (default 1280,960)")
    p.add_argument("--timeout", type=float_option, default=60.0, metavar="S", help="screenshot load timeout (default 60)")
    p.add_argument("--print-url", action="store_true", help="print the URL for --base-url and exit")
    p.add_argument("--base-url", metavar="URL", help="where the export's layer folders are published")
    p.add_argument("--client-url", metavar="URL", help="neuroglancer client for --print-url "
                                                       "(default https://neuroglancer-demo.appspot.com/)")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("info", parents=[common], help="describe a workspace")
    p.add_argument("--workspace", required=True, metavar="WS")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("pbs", help="ALCF job scripts (ACTION: render, submit)",
                       description="Job scripts for ALCF systems (Polaris and Aurora: PBS Pro + mpiexec; "
                                   "Theta: Cobalt + aprun). Templates: pbs/.")
    pbs_actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    k = pbs_actions.add_parser("render", parents=[common], help="render one stage's job script",
                               description="Render the job script for one STAGE. Model stages (train-ffn, "
                                           "train-vessel, segment) run under mpiexec, one rank per GPU (tile); "
                                           "blockwise stages (stitch, align, mask-vessels) start a dask scheduler "
                                           "and workers and run the stage with --executor dask; graph runs as one "
                                           "process. Prints the script, or writes OUT/<stage>.<system>.pbs.")
    k.add_argument("stage", metavar="STAGE",
                   help="train-ffn | train-vessel | segment | hpo | stitch | align | mask-vessels | graph, or a "
                        "PIPELINE.yaml (one script per stage, OUT/NN-<id>.<system>.pbs; needs --workspace)")
    k.add_argument("--system", required=True, metavar="SYSTEM",
                   help="aurora | polaris | theta | local (this machine's Torque-compatible qsub)")
    k.add_argument("--nodes", required=True, type=int, metavar="N", help="number of nodes")
    k.add_argument("--ppn", type=int, metavar="P", help="ranks per node (default: Polaris 4, Aurora 12, Theta 4)")
    k.add_argument("--depth", type=int, metavar="D", help="hardware threads per rank (default: cores / ppn)")
    k.add_argument("--walltime", default="01:00:00", metavar="HH:MM:SS", help="default 01:00:00")
    k.add_argument("--queue", default="debug", metavar="Q", help="default debug")
    k.add_argument("--project", metavar="A", help="allocation to charge (required)")
    k.add_argument("--filesystems", metavar="FS", help="e.g. home:eagle (default: Polaris home:eagle, "
                                                       "Aurora home:flare, Theta home:grand)")
    k.add_argument("--workspace", metavar="WS", help="the workspace (required except for train-*)")
    k.add_argument("--stage-args", metavar="'ARGS'",
                   help="extra arguments for the stage command (required for train-*: '--data DIR --out MODEL_DIR')")
    k.add_argument("--setup", metavar="'CMDS'", help="environment set-up lines (default: the system's modules)")
    k.add_argument("--out", metavar="DIR", help="write DIR/<stage>.<system>.pbs (mode 0755) instead of printing")
    k.add_argument("--dry-run", action="store_true", help="print the script even with --out")
    k.add_argument("--from", dest="from_stage", metavar="STAGE", help="pipelines: start at this stage id")
    k.add_argument("--until", metavar="STAGE", help="pipelines: stop after this stage id")
    k.set_defaults(func=cmd_pbs_render)

    k = pbs_actions.add_parser("submit", parents=[common], help="qsub a pipeline's job scripts, chained",
                               description="Render one job script per pipeline stage into WS/pbs/scripts/ and "
                                           "submit them with qsub, each after the one before "
                                           "(-W depend=afterok:JOBID), so a failing stage stops the chain; job ids "
                                           "go to WS/pbs/jobs.json. Without qsub on PATH: exit 2.")
    k.add_argument("stage", metavar="PIPELINE.yaml")
    k.add_argument("--workspace", required=True, metavar="WS")
    k.add_argument("--system", required=True, metavar="SYSTEM", help="aurora | polaris | theta | local")
    k.add_argument("--nodes", required=True, type=int, metavar="N", help="nodes per job (a stage's pbs: overrides)")
    k.add_argument("--project", metavar="A", help="allocation to charge (required except for --system local)")
    k.add_argument("--ppn", type=int, metavar="P", help="ranks per node (default: the system's)")
    k.add_argument("--depth", type=int, metavar="D", help="hardware threads per rank (default: cores / ppn)")
    k.add_argument("--walltime", default="01:00:00", metavar="HH:MM:SS", help="per job, default 01:00:00")
    k.add_argument("--queue", default="debug", metavar="Q", help="default debug")
    k.add_argument("--filesystems", metavar="FS", help="default: the system's (ALCF)")
    k.add_argument("--setup", metavar="'CMDS'", help="environment set-up lines (default: the system's)")
    k.add_argument("--from", dest="from_stage", metavar="STAGE", help="start at this stage id")
    k.add_argument("--until", metavar="STAGE", help="stop after this stage id")
    k.add_argument("--after", metavar="JOBID", help="the first job waits for this job (afterok)")
    k.add_argument("--dry-run", action="store_true", help="print the scripts, submit nothing")
    k.set_defaults(func=cmd_pbs_submit, stage_args=None, out=None)

    p = sub.add_parser("hpo", help="DeepHyper sweeps over stage configs (ACTION: run, report)",
                       description="Hyperparameter sweeps (DeepHyper CBO) over the fields of a stage's typed "
                                   "config, scored by `connectome evaluate` on a validation volume. See hpo/space.py "
                                   "for the SPACE file.")
    hpo_actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    k = hpo_actions.add_parser("run", parents=[common], help="run (or continue) a sweep",
                               description="CBO search (fixed random state) over SPACE; DIR/results.csv. --max-evals "
                                           "is the total: a rerun continues from DIR/results.csv.")
    k.add_argument("space", metavar="SPACE.yaml")
    k.add_argument("--max-evals", required=True, type=int, metavar="N", help="evaluations in total")
    k.add_argument("--evaluator", default="serial", metavar="E",
                   help="serial (default) | thread | process | mpicomm (under mpiexec: rank 0 is the master)")
    k.add_argument("--workers", type=int, metavar="N", help="trials at once for thread/process (default 1)")
    k.add_argument("--out", required=True, metavar="DIR", help="the sweep's folder (results.csv, trials/)")
    k.set_defaults(func=cmd_hpo_run)
    k = hpo_actions.add_parser("report", parents=[common], help="best config, top runs, plot",
                               description="Write DIR/best.yaml (usable with the stage's --config), DIR/top.csv "
                                           "and DIR/objective.png; print the top runs.")
    k.add_argument("dir", metavar="DIR")
    k.add_argument("--top", type=int, default=10, metavar="K", help="runs in the table (default 10)")
    k.set_defaults(func=cmd_hpo_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from connectome.logsetup import setup_logging

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        setup_logging(args.verbose, args.quiet)
        if args.verbose < 2:
            # TensorFlow's C++ start-up chatter (CPU features, oneDNN notes) would break the
            # one-line-on-stderr rule of exit code 2; it is imported later, by the stages
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"connectome: error: {exc}", file=sys.stderr)
        return 2
    except ConnectomeError as exc:
        print(f"connectome: failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("connectome: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            return _internal(exc)
        # a workspace, output or input the user cannot write (or read): bad input, not a bug
        where = exc.filename or "a file"
        print(f"connectome: error: {where}: {exc.strerror or exc}; make it writable (or readable) for this user, "
              "or choose another --workspace / output", file=sys.stderr)
        return 2
    except Exception as exc:  # an internal failure
        return _internal(exc)


def _internal(exc: BaseException) -> int:
    """An internal failure: full traceback in the log, one line on stderr, exit 1."""
    log.debug("internal error", exc_info=exc)
    print(f"connectome: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    if os.environ.get("CONNECTOME_DEBUG"):
        raise exc
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
