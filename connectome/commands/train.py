"""Run functions of ``connectome train KIND`` (declared in :mod:`.table`)."""

from __future__ import annotations

import sys

from connectome.commands import runtime as rt
from connectome.errors import UserInputError


def _train(args, kind: str, describe) -> int:
    """``connectome train KIND``: config (+ --steps), train or resume, print a one-line summary
    (``describe(summary)`` adds the kind's validation figures)."""
    from connectome.stages import load_stage
    from connectome.training.export import check_out_dir

    check_out_dir(args.out, args.overwrite)  # before anything is loaded or trained
    train = load_stage(f"train-{kind}")
    overrides = {}
    if args.steps is not None:
        if args.steps < 1:
            raise UserInputError(f"--steps: expected a positive number, got {args.steps}")
        overrides["trainer.steps"] = args.steps
    cfg = rt.stage_config(args, train.Config, overrides)
    summary = getattr(train, f"train_{kind}")(
        args.data, args.out, cfg, val_dirs=args.val or (), restart=args.restart, overwrite=args.overwrite
    )
    if summary.get("stopped"):
        print(
            f"train {kind}: stopped at step {summary['steps']} of {summary['total_steps']} (checkpoint saved); "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    if summary:  # rank 0
        print(
            f"train {kind}: {summary['steps']} steps on {summary['ranks']} rank(s) in {summary['seconds']:.0f} s; "
            f"model in {summary['model_dir']}" + describe(summary)
        )
    return 0


#: kind -> (fine-tuning function "module:attr", its FINETUNE_DEFAULTS "module:attr", config class
#: "module:attr", the review folder's name, an example init model)
FINETUNE = {
    "vessel": (
        "unet.finetune:finetune_vessel",
        "unet.finetune:FINETUNE_DEFAULTS",
        "unet.train:VesselTrainConfig",
        "vessels",
        "unet/models/vessel",
    ),
    "synapse": (
        "unet.synapse_finetune:finetune_synapse",
        "unet.synapse_finetune:FINETUNE_DEFAULTS",
        "unet.synapse_train:SynapseTrainConfig",
        "synapses",
        "unet/models/synapse",
    ),
    "boundary": (
        "unet.boundary_finetune:finetune_boundary",
        "unet.boundary_finetune:FINETUNE_DEFAULTS",
        "unet.boundary_train:BoundaryTrainConfig",
        "segmentation",
        "unet/models/boundary",
    ),
    "ffn": (
        "ffn.finetune:finetune_ffn",
        "ffn.finetune:FINETUNE_DEFAULTS",
        "ffn.train:FFNTrainConfig",
        "segmentation",
        "ffn/models/boundary16",
    ),
}


def _wants_finetune(args, kind: str) -> bool:
    if getattr(args, "init", None) or getattr(args, "corrections", None):
        return True
    if not args.data:
        raise UserInputError(
            "--data: give at least one `connectome synth` folder (or --init MODEL_DIR --corrections DIR to fine-tune)"
        )
    return False


def _finetune(args, kind: str) -> int:
    """``connectome train KIND --init MODEL_DIR --corrections WS/review/<target>``: start from a
    model, train on a review's corrections (+ replay of --data), validate on held-back items."""
    from connectome.commands.spec import resolve
    from connectome.training.export import check_out_dir

    fn, defaults, config, target, example = FINETUNE[kind]
    if not args.init:
        raise UserInputError(
            f"--corrections: fine-tuning needs --init MODEL_DIR (the model to start from, e.g. {example})"
        )
    if not args.corrections:
        raise UserInputError(
            f"--init: give --corrections WS/review/{target} (the reviewed corrections to fine-tune "
            "on); to train from synth data only, leave --init out"
        )
    if args.val:
        raise UserInputError("--val: fine-tuning validates on held-back reviewed items; leave --val out")
    check_out_dir(args.out, args.overwrite)  # before anything is loaded or trained
    overrides = {} if args.config else dict(resolve(defaults))
    if args.steps is not None:
        if args.steps < 1:
            raise UserInputError(f"--steps: expected a positive number, got {args.steps}")
        overrides["trainer.steps"] = args.steps
    cfg = rt.stage_config(args, resolve(config), overrides)
    summary = resolve(fn)(
        args.init, args.corrections, args.data or (), args.out, cfg, restart=args.restart, overwrite=args.overwrite
    )
    if summary.get("stopped"):
        print(
            f"train {kind}: stopped at step {summary['steps']} of {summary['total_steps']} (checkpoint saved); "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    if summary:
        print(
            f"train {kind}: fine-tuned {summary['steps']} steps in {summary['seconds']:.0f} s; model in "
            f"{summary['model_dir']}{summary.get('headline', '')}"
        )
    return 0


def vessel(args) -> int:
    def describe(summary):
        ious = ", ".join(f"seed {v['seed']}: {v['iou']:.4f}" for v in summary["validation"].get("volumes", []))
        return f"; validation IoU {ious}" if ious else ""

    if _wants_finetune(args, "vessel"):
        return _finetune(args, "vessel")
    return _train(args, "vessel", describe)


def ffn(args) -> int:
    def describe(summary):
        m = summary["validation"]["episodes_f1_at_0.9"]
        return "; validation episodes P/R/F1 at 0.9: " + "/".join(
            f"{m.get(k, float('nan')):.3f}" for k in ("precision", "recall", "f1")
        )

    if _wants_finetune(args, "ffn"):
        return _finetune(args, "ffn")
    return _train(args, "ffn", describe)


def synapse(args) -> int:
    def describe(summary):
        vols = summary["validation"].get("volumes", [])
        f1 = ", ".join(f"{v['path'].rstrip('/').split('/')[-1]}: F1 {v['f1']}" for v in vols)
        return f"; validation {f1}" if f1 else ""

    if _wants_finetune(args, "synapse"):
        return _finetune(args, "synapse")
    return _train(args, "synapse", describe)


def boundary(args) -> int:
    def describe(summary):
        m = summary["validation"].get("crops_at_model_resolution") or {}
        return (
            f"; validation boundary Dice {m.get('boundary_dice', float('nan')):.4f}, affinity balanced accuracy "
            f"{m.get('affinity_balanced_accuracy', float('nan')):.4f}"
        )

    if _wants_finetune(args, "boundary"):
        return _finetune(args, "boundary")
    return _train(args, "boundary", describe)
