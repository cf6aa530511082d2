"""Run functions of the tools around the stages: synth, evaluate, demo, info, run, pbs, hpo,
export-precomputed and view (declared in :mod:`.table`)."""

from __future__ import annotations

import sys

from connectome.commands import runtime as rt
from connectome.errors import UserInputError


def synth(args) -> int:
    from connectome.synth import generate
    from connectome.workspace import parse_zyx

    shape = parse_zyx(args.shape, "--shape", cast=int) if args.shape else None
    overrides = rt.parse_sets(args.set or [], "--set")
    out = generate(
        args.out,
        shape_zyx=shape,
        seed=args.seed,
        preset=args.preset,
        preview=args.preview,
        progress=rt.progress(args),
        **overrides,
    )
    print(f"synth: wrote {out}")
    return 0


def evaluate(args) -> int:
    from connectome.evaluate import EvaluateConfig, evaluate_workspace, format_table

    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers: expected a positive number, got {args.workers}")
    cfg = rt.stage_config(args, EvaluateConfig, {"downstream": True} if args.downstream else None)
    results = evaluate_workspace(args.workspace, args.truth, cfg, workers=args.workers, progress=rt.progress(args))
    print(format_table(results))
    return 0


def demo(args) -> int:
    from connectome.demo import run_demo

    return run_demo(args.workspace, preset=args.preset, seed=args.seed, progress=args.progress)


def info(args) -> int:
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


def hpo_run(args) -> int:
    from hpo.run import run_search

    return run_search(args.space, args.out, args.max_evals, args.evaluator, args.workers)


def hpo_report(args) -> int:
    from hpo.report import report

    return report(args.dir, top=args.top)


def pbs_render(args):
    from connectome import pbs

    spec = pbs.JobSpec(
        stage=args.stage,
        system=args.system,
        nodes=args.nodes,
        project=args.project,
        ppn=args.ppn,
        depth=args.depth,
        walltime=args.walltime,
        queue=args.queue,
        filesystems=args.filesystems,
        workspace=args.workspace,
        stage_args=args.stage_args,
        setup=args.setup,
    )
    if pbs.is_pipeline(args.stage):  # one script per pipeline stage
        jobs = pbs.pipeline_jobs(spec, getattr(args, "from_stage", None), getattr(args, "until", None))
        if args._command.words == ("pbs", "submit"):
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


def pbs_submit(args):
    from connectome.pbs import is_pipeline

    if not is_pipeline(args.stage):
        raise UserInputError(f"PIPELINE: expected a pipeline YAML file, got {args.stage!r}")
    return pbs_render(args)


def run_pipeline(args) -> int:
    from connectome.pipeline import run_pipeline as run

    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers: expected a positive number, got {args.workers}")
    return run(
        args.pipeline,
        args.workspace,
        from_=args.from_stage,
        until=args.until,
        only=args.only,
        executor=args.executor,
        workers=args.workers,
        scheduler_file=args.scheduler_file,
        progress=args.progress,
    )


def export_precomputed(args) -> int:
    from connectome.viewer.commands import export_command

    return export_command(args)


def view(args) -> int:
    from connectome.viewer.commands import view_command

    return view_command(args)
