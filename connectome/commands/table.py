"""The command table: every ``connectome`` command, declared once.

Each entry says what the command is called, its options (``arg``: the argparse flags and keywords,
plus ``pipeline=KIND`` when a pipeline may set the option and ``key=`` when it overrides a config
key), its typed config, how a pipeline launches it (``kind``; None: not a pipeline stage) and its
run function (``"module:function"``, imported only when the command runs). The CLI parser
(:mod:`.parser`) and the pipeline registry (:data:`connectome.pipeline.STAGES`) are both built from
:data:`ENTRIES`; the order here is the order of ``connectome --help``.

Adding a stage: write its module (plan + blocks, and a ``run(args)`` function, or add one to
:mod:`.stages`), then one ``Command(...)`` here — see docs/add-a-stage.md.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional, Union

from connectome.commands.spec import Arg, Command, Group, arg
from connectome.inputs import float_option

#: ``--workspace WS``, the workspace a command reads and writes
WORKSPACE = arg("--workspace", required=True, metavar="WS")


def _block_shape(help: Optional[str] = None) -> Arg:
    """``--block-shape Z,Y,X``: overrides ``blockwise.block_shape_zyx`` of the stage's config."""
    kw = {"help": help} if help else {}
    return arg("--block-shape", metavar="Z,Y,X", **kw, pipeline="zyx", key="blockwise.block_shape_zyx")


def _finetune_args(kind: str, what: str) -> tuple[Arg, ...]:
    """``--init`` / ``--corrections`` of ``connectome train KIND`` (fine-tuning on a review, issue 23)."""
    return (
        arg(
            "--init",
            metavar="MODEL_DIR",
            help=f"fine-tune: start from this {kind} model's weights (needs --corrections)",
            pipeline="path",
        ),
        arg(
            "--corrections",
            metavar="DIR",
            help=(
                f"fine-tune on {what}; --data folders are then replayed (half of each batch); "
                "validates on held-back items"
            ),
            pipeline="path",
        ),
    )


def _train(
    kind: str,
    *,
    help: str,
    description: str,
    config: str,
    val_help: str,
    config_help: str,
    data_required: bool = True,
    val_default: Optional[tuple] = (),
    extra: tuple[Arg, ...] = (),
) -> Command:
    """``connectome train KIND``: the options every trainer shares (``extra`` after --out)."""
    data: dict[str, Any] = {"required": True} if data_required else {"default": []}
    val: dict[str, Any] = {} if val_default is None else {"default": list(val_default)}
    return Command(
        ("train", kind),
        help=help,
        description=description,
        kind="model",
        config=config,
        mpi=True,
        run=f"connectome.commands.train:{kind}",
        args=(
            arg(
                "--data",
                action="append",
                **data,
                metavar="DIR",
                help="a `connectome synth` output folder (repeat for several)",
                pipeline="list",
            ),
            arg("--val", action="append", **val, metavar="DIR", help=val_help, pipeline="list"),
            arg("--out", required=True, metavar="MODEL_DIR", help="the model directory to write", pipeline="path"),
            *extra,
            arg("--config", metavar="FILE.yaml", help=config_help),
            arg(
                "--steps",
                type=int,
                metavar="N",
                help="total training steps (overrides trainer.steps)",
                pipeline="int",
                key="trainer.steps",
            ),
            arg("--restart", action="store_true", help="discard MODEL_DIR/train and start over"),
            arg(
                "--overwrite",
                action="store_true",
                help="replace MODEL_DIR if it already holds a finished model (refused otherwise); the new "
                "model is swapped in only once it is complete",
                pipeline="bool",
            ),
        ),
    )


ENTRIES: tuple[Union[Command, Group], ...] = (
    Command(
        ("import",),
        help="import an aligned volume into WS/volume.zarr/raw",
        description=(
            "Import an aligned volume (zarr array, multi-page TIFF, folder of per-section TIFF/PNG, "
            "or file.h5:/dataset) as WS/volume.zarr/raw (uint8). uint16 input is rescaled: the "
            "0.1..99.9th percentiles of a sample map to 0..255."
        ),
        parents=("common", "stage"),
        kind="blockwise",
        config="connectome.stages.importer:ImportConfig",
        run="connectome.commands.stages:import_volume",
        args=(
            arg("src", metavar="SRC", pipeline="path"),
            WORKSPACE,
            arg("--voxel-size", required=True, metavar="Z,Y,X", help="voxel size in nm, e.g. 40,8,8", pipeline="zyx"),
            arg(
                "--intensity-range",
                metavar="LO,HI",
                help="fixed input range mapped to 0..255",
                pipeline="range",
                key="intensity_range",
            ),
            _block_shape("block (and chunk) shape in voxels"),
        ),
    ),
    Command(
        ("smooth",),
        help="Gaussian-smoothed copy of raw (blockwise, with halo)",
        parents=("common", "stage"),
        kind="blockwise",
        config="connectome.stages.smooth:SmoothConfig",
        run="connectome.commands.stages:smooth",
        args=(
            WORKSPACE,
            arg(
                "--sigma-nm",
                metavar="Z,Y,X",
                help="Gaussian sigma in nm (default 40,16,16)",
                pipeline="zyx",
                key="sigma_nm",
            ),
            _block_shape(),
        ),
    ),
    Command(
        ("stitch",),
        help="stitch tiles into section montages",
        description=(
            "Register overlapping neighbour tiles, place all tiles of a section by robust least "
            "squares and render one montage per section (WS/stitch/montages.zarr); creates the "
            "workspace; QC in WS/stitch/{tiles,pairs,sections}.csv."
        ),
        parents=("common", "stage"),
        kind="blockwise",
        config="connectome.montage.stitch_stage:StitchConfig",
        run="connectome.commands.stages:stitch",
        args=(
            arg(
                "--tiles",
                required=True,
                metavar="MANIFEST.csv",
                help="tile manifest: section,row,col,path,x,y",
                pipeline="path",
            ),
            WORKSPACE,
            arg(
                "--voxel-size",
                metavar="Z,Y,X",
                help="voxel size in nm of the workspace (default 40,8,8)",
                pipeline="zyx",
                key="voxel_size_nm",
            ),
            arg(
                "--frame-shape",
                metavar="Y,X",
                help="(y, x) size of the aligned frame (default: the first section's montage extent)",
                pipeline="yx",
                key="frame_shape_yx",
            ),
            arg(
                "--skip-bad-tiles",
                action="store_true",
                help="report and leave out missing, unreadable or odd-sized tiles instead of stopping",
                pipeline="bool",
                key="skip_bad_tiles",
            ),
            arg(
                "--allow-absolute-paths",
                action="store_true",
                help="accept tile paths outside the manifest's folder (absolute, or leading out with ..)",
                pipeline="bool",
                key="allow_absolute_paths",
            ),
        ),
    ),
    Command(
        ("align",),
        help="align the stitched sections into WS/volume.zarr/raw",
        description=(
            "Register every section to its predecessor (coarse affine + elastic field; bad sections "
            "bridged from z-2..z-4), compose the transforms along z and render the aligned volume "
            "blockwise; QC in WS/align/pairs.csv and preview PNGs."
        ),
        parents=("common", "stage"),
        kind="blockwise",
        config="connectome.montage.align_config:AlignConfig",
        run="connectome.commands.stages:align",
        args=(
            WORKSPACE,
            _block_shape("render block (and raw chunk) shape in voxels"),
        ),
    ),
    Command(
        ("mask-vessels",),
        help="blood-vessel mask with a 2D U-Net",
        description=(
            "Predict WS/volume.zarr/vessel_prob (uint8, 0..255 = 0..1) from raw with a 2D U-Net on "
            "a global tile grid, then threshold, fill holes and remove specks per section into "
            "WS/volume.zarr/vessel_mask (uint8 {0,1}). Both steps are blockwise and resumable."
        ),
        parents=("common", "stage"),
        kind="blockwise",
        config="unet.vessel:VesselMaskConfig",
        run="connectome.commands.stages:mask_vessels",
        args=(
            WORKSPACE,
            arg(
                "--model",
                metavar="DIR",
                help="model directory (default: the shipped unet/models/vessel)",
                pipeline="path",
            ),
            _block_shape("block (and chunk) shape in voxels"),
        ),
    ),
    Command(
        ("predict-boundaries",),
        help="cell boundaries and affinities with a 3D U-Net (input of segment)",
        description=(
            "Predict WS/volume.zarr/boundary: uint8 (0..255 = 0..1), channel-first (4, z, y, x) = "
            "boundary probability and the affinities to the predecessor along z, y, x, with the "
            "boundary 3D U-Net on a global tile grid (blockwise == whole volume; resumable)."
        ),
        parents=("common", "stage"),
        kind="blockwise",
        config="unet.boundary:BoundaryConfig",
        run="connectome.commands.stages:predict_boundaries",
        args=(
            WORKSPACE,
            arg(
                "--model",
                metavar="DIR",
                help="model directory (default: the shipped unet/models/boundary)",
                pipeline="path",
            ),
            _block_shape("block (and chunk) shape in voxels"),
        ),
    ),
    Command(
        ("segment",),
        help="neuron segmentation (learned-boundary watershed, FFN or classical baseline)",
        description=(
            "Segment neurons into WS/volume.zarr/segmentation (uint64, 0 = none) over overlapping "
            "subvolumes (one block each, resumable), then ids reconciled across the overlaps "
            "(union-find). Methods: watershed (default: supervoxels from WS/volume.zarr/boundary of "
            "`connectome predict-boundaries`, agglomerated by mean affinity), ffn (the "
            "Flood-Filling Network, --model), baseline (classical watershed on the raw image). "
            "vessel_mask voxels are never claimed."
        ),
        parents=("common", "stage"),
        kind="model",
        config="ffn.segment:SegmentConfig",
        mpi=True,
        run="connectome.commands.stages:segment",
        args=(
            WORKSPACE,
            arg(
                "--model",
                metavar="DIR",
                help="FFN model directory (method ffn; default: the shipped one)",
                pipeline="path",
            ),
            arg(
                "--method",
                choices=["auto", "watershed", "ffn", "ffn-agglomerate", "baseline"],
                help=(
                    "segmenter (overrides the config's method). Default auto: ffn when --model is given, "
                    "else watershed (learned boundaries from `connectome predict-boundaries`)"
                ),
                pipeline="str",
                key="method",
            ),
            _block_shape("subvolume core (= block and chunk) shape in voxels"),
        ),
    ),
    Command(
        ("synapses",),
        help="synapse detection with a 3D U-Net",
        description=(
            "Predict WS/volume.zarr/synapse_prob (cleft) and synapse_post (postsynaptic side) with "
            "the synapse 3D U-Net on a global tile grid, then detect synapses (threshold + "
            "26-connected components + minimum size, consistent across block borders), assign "
            "pre/post partners from WS/volume.zarr/segmentation and write WS/synapses.csv. "
            "Blockwise and resumable."
        ),
        parents=("common", "stage"),
        kind="blockwise",
        config="connectome.synapses.predict:SynapsesConfig",
        run="connectome.commands.stages:synapses",
        args=(
            WORKSPACE,
            arg(
                "--model",
                metavar="DIR",
                help="model directory (default: the shipped unet/models/synapse)",
                pipeline="path",
            ),
            arg(
                "--threshold",
                type=float_option,
                metavar="T",
                help="cleft threshold (default: the model's)",
                pipeline="float",
                key="threshold",
            ),
            arg(
                "--min-size",
                type=int,
                metavar="N",
                help="minimum synapse size in voxels (default: the model's)",
                pipeline="int",
                key="min_size_voxels",
            ),
            _block_shape("block (and chunk) shape in voxels"),
        ),
    ),
    Command(
        ("skeletonize",),
        help="skeletons of every segment (kimimaro, blockwise)",
        description=(
            "TEASAR skeletons (kimimaro) of every segment of WS/volume.zarr/segmentation, blockwise "
            "with a halo and joined across block borders; written as neuroglancer precomputed "
            "skeletons to WS/skeletons/precomputed and beside the mesh in "
            "WS/precomputed/segmentation/skeletons (shown by `connectome view`), and with --swc as "
            "WS/skeletons/swc/<id>.swc."
        ),
        parents=("common", "stage"),
        kind="blockwise",
        config="connectome.skeletons.skeletonize:SkeletonizeConfig",
        run="connectome.commands.stages:skeletonize",
        args=(
            WORKSPACE,
            arg(
                "--segmentation",
                metavar="NAME",
                help="the array to skeletonize (default segmentation)",
                pipeline="str",
                key="input",
            ),
            arg("--anisotropy", metavar="Z,Y,X", help="voxel size in nm (default: the workspace's)", pipeline="zyx"),
            arg("--swc", action="store_true", help="also write one SWC file per segment", pipeline="bool", key="swc"),
            _block_shape("block shape in voxels (default 64,256,256)"),
        ),
    ),
    Command(
        ("graph",),
        help="the connectivity graph from WS/synapses.csv",
        description=(
            "Group the synapses of WS/synapses.csv by (pre, post) segment into WS/connectivity.csv "
            "and WS/connectivity.graphml (node attribute size_voxels from "
            "WS/volume.zarr/segmentation). Synapses with id 0, autapses and those below --min-score "
            "are dropped, then edges with fewer than --min-synapses synapses. Rules: "
            "connectome/graph.py."
        ),
        kind="single",
        run="connectome.commands.stages:graph",
        args=(
            WORKSPACE,
            arg(
                "--min-score",
                type=float_option,
                default=0.0,
                metavar="S",
                help="drop synapses with score < S (default 0: keep all)",
                pipeline="float",
            ),
            arg(
                "--min-synapses",
                type=int,
                default=1,
                metavar="K",
                help="drop edges with fewer than K synapses (default 1)",
                pipeline="int",
            ),
        ),
    ),
    Group(
        ("train",),
        help="train a model (KIND: vessel, ffn, synapse, boundary)",
        dest="kind",
        metavar="KIND",
        description=(
            "Train a model into a self-describing model directory. Runs as one process or "
            "data-parallel under horovodrun / mpiexec (one process per rank)."
        ),
    ),
    _train(
        "vessel",
        help="the 2D U-Net vessel model",
        description=(
            "Train the 2D vessel U-Net on `connectome synth` folders (truth.zarr: raw, vessels). "
            "Resumes from MODEL_DIR/train/checkpoints."
        ),
        config="unet.train:VesselTrainConfig",
        val_help="a held-out `connectome synth` folder for validation (repeat for several)",
        config_help="VesselTrainConfig (YAML); unknown keys are rejected",
        data_required=False,  # fine-tuning (--init --corrections) may replay no synthetic data
        extra=_finetune_args("vessel", "the dense corrections of a review folder (WS/review/vessels)"),
    ),
    _train(
        "ffn",
        help="the Flood-Filling Network (neurons)",
        description=(
            "Train the FFN on `connectome synth` folders (truth.zarr: raw, neurons, vessels) with "
            "FOV movement; data-parallel under horovodrun/mpiexec. Resumes from "
            "MODEL_DIR/train/checkpoints."
        ),
        config="ffn.train:FFNTrainConfig",
        val_help="held-out volume for checkpoint choice (repeatable)",
        config_help="FFN training config (model, examples, trainer)",
        val_default=None,
        data_required=False,  # fine-tuning (--init --corrections) may replay no synthetic data
        extra=_finetune_args("ffn", "the dense corrections of a review folder (WS/review/segmentation)"),
    ),
    _train(
        "synapse",
        help="the 3D U-Net synapse model",
        description=(
            "Train the synapse 3D U-Net (cleft + postsynaptic side) on `connectome synth` folders "
            "(truth.zarr: raw, neurons, synapse_clefts; truth/synapses.csv); calibrates the detection "
            "threshold and minimum size on --val. Resumes from MODEL_DIR/train/checkpoints."
        ),
        config="unet.synapse_train:SynapseTrainConfig",
        val_help="held-out volume for the checkpoint and the detection calibration (repeatable)",
        config_help="SynapseTrainConfig (YAML); unknown keys are rejected",
        data_required=False,  # fine-tuning (--init --corrections) may replay no synthetic data
        extra=_finetune_args(
            "synapse", "the decisions of a review folder (WS/review/synapses: accept, reject, missed points)"
        ),
    ),
    _train(
        "boundary",
        help="the 3D U-Net boundary/affinity model (neurons)",
        description=(
            "Train the boundary 3D U-Net (boundary probability + z/y/x affinities) on `connectome "
            "synth` folders (truth.zarr: raw, neurons); data-parallel under horovodrun/mpiexec. "
            "Resumes from MODEL_DIR/train/checkpoints."
        ),
        config="unet.boundary_train:BoundaryTrainConfig",
        val_help="held-out volume for the checkpoint choice (repeatable)",
        config_help="BoundaryTrainConfig (YAML); unknown keys are rejected",
        data_required=False,  # fine-tuning (--init --corrections) may replay no synthetic data
        extra=_finetune_args("boundary", "the dense corrections of a review folder (WS/review/segmentation)"),
    ),
    Command(
        ("synth",),
        help="synthesise an EM dataset with full ground truth",
        kind="single",
        run="connectome.commands.tools:synth",
        args=(
            arg("out", metavar="OUT", pipeline="path"),
            arg("--shape", metavar="Z,Y,X", help="volume shape in voxels (default: from the preset)", pipeline="zyx"),
            arg("--seed", type=int, default=0, pipeline="int"),
            arg("--preset", choices=["small", "demo", "bench", "fibres", "newbrain"], default="small", pipeline="str"),
            arg("--preview", action="store_true", help="also write OUT/preview.png", pipeline="bool"),
            arg(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help=(
                    "override a generator parameter (repeatable), e.g. --set noise_sigma=0.2 --set "
                    "psf_sigma_px=1.4 (fields of connectome/synth/presets.py SynthConfig)"
                ),
                pipeline="list",
            ),
            arg("--progress", action=argparse.BooleanOptionalAction),
        ),
    ),
    Command(
        ("evaluate",),
        help="score a workspace against ground truth",
        kind="single",
        config="connectome.evaluate.config:EvaluateConfig",
        run="connectome.commands.tools:evaluate",
        args=(
            WORKSPACE,
            arg("--truth", required=True, metavar="DIR", help="a `connectome synth` output folder", pipeline="path"),
            arg("--config", metavar="FILE.yaml", help="evaluation thresholds (EvaluateConfig)"),
            arg(
                "--downstream",
                action="store_true",
                key="downstream",
                help=(
                    "alignment criterion (e): segment the truth raw too (imported into "
                    "WS/evaluate/truth_raw/, predict-boundaries + segment with the workspace's stage "
                    "configs; reused while the truth is unchanged) and report ARAND/VOI of the aligned "
                    "volume minus the truth raw's; needs the WS segmentation. Minutes"
                ),
                pipeline="bool",
            ),
            arg(
                "--workers",
                type=int,
                metavar="N",
                help="worker processes for the --downstream stages (default: all cores)",
            ),
            arg(
                "--progress",
                action=argparse.BooleanOptionalAction,
                help="progress bars for the --downstream stages (default: when stderr is a terminal)",
            ),
        ),
    ),
    Command(
        ("demo",),
        help="the whole reconstruction on synthetic data, evaluated",
        description=(
            "Run pipelines/demo.yaml (synth -> stitch -> align -> mask-vessels -> segment -> "
            "synapses -> graph -> evaluate -> export-precomputed) on WS with the chosen synth "
            "preset, then print the metrics, the stage timings and the view command. Rerun to "
            "resume: finished stages are skipped."
        ),
        run="connectome.commands.tools:demo",
        args=(
            arg("--workspace", default="demo_ws", metavar="WS"),
            arg("--preset", choices=["small", "demo"], default="demo"),
            arg("--seed", type=int, default=1),
            arg("--progress", action=argparse.BooleanOptionalAction),
        ),
    ),
    Command(
        ("run",),
        help="run a pipeline (pipelines/*.yaml), stage by stage",
        description=(
            "Run the stages of PIPELINE.yaml in order on WS, each exactly as its own command with "
            "the pipeline's options and config; stages finished before (WS/pipeline/done) are "
            "skipped, an interrupted stage resumes from its block done-markers. Per-stage status, "
            "wall time, block counts and versions go to WS/run.json. Exit code: that of the first "
            "failing stage."
        ),
        run="connectome.commands.tools:run_pipeline",
        args=(
            arg("pipeline", metavar="PIPELINE.yaml"),
            WORKSPACE,
            arg("--from", dest="from_stage", metavar="STAGE", help="start at this stage id"),
            arg("--until", metavar="STAGE", help="stop after this stage id"),
            arg("--only", metavar="STAGE", help="run only this stage id (how PBS jobs run a pipeline stage)"),
            arg("--executor", help="override the executor of the blockwise stages: serial | local | dask | mpi"),
            arg("--workers", type=int, metavar="N", help="override the worker count of the blockwise stages"),
            arg("--scheduler-file", metavar="PATH", help="dask scheduler file (with --executor dask)"),
            arg("--progress", action=argparse.BooleanOptionalAction),
        ),
    ),
    Command(
        ("export-precomputed",),
        help="export the workspace for Neuroglancer",
        description=(
            "Write WS/volume.zarr's raw, segmentation (+ meshes, segment properties) and "
            "vessel_mask, and WS/synapses.csv, as neuroglancer precomputed layers in OUT (default "
            "WS/precomputed). Blockwise and incremental: unchanged layers are skipped, an "
            "interrupted export resumes; missing inputs are reported."
        ),
        kind="single",
        run="connectome.commands.tools:export_precomputed",
        args=(
            WORKSPACE,
            arg("--out", metavar="DIR", help="export folder (default WS/precomputed)", pipeline="path"),
            arg(
                "--no-compress",
                action="store_true",
                help="write volume chunks uncompressed (default gzip)",
                pipeline="bool",
            ),
        ),
    ),
    Command(
        ("view",),
        help="inspect the workspace in Neuroglancer",
        description=(
            "Bring the export up to date, serve it with the bundled neuroglancer client over HTTP "
            "(CORS) and print the viewer URL; --screenshot renders headlessly and exits; "
            "--print-url --base-url prints a URL for an export published elsewhere."
        ),
        run="connectome.commands.tools:view",
        args=(
            arg("--workspace", metavar="WS"),
            arg("--out", metavar="DIR", help="export folder (default WS/precomputed)"),
            arg("--bind", default="127.0.0.1", metavar="ADDR", help="address to listen on (default 127.0.0.1)"),
            arg("--port", type=int, metavar="P", help="port (default 8585; 0 = any free port)"),
            arg("--no-export", action="store_true", help="serve OUT as it is (no incremental export first)"),
            arg(
                "--cors",
                action="append",
                metavar="ORIGIN",
                help=(
                    "also let pages of ORIGIN (scheme://host:port) read the data; '*' = any page (default: "
                    "only the viewer's own origin); repeatable"
                ),
            ),
            arg("--screenshot", metavar="OUT.png", help="render headlessly into OUT.png and exit"),
            arg("--size", default="1280,960", metavar="W,H", help="screenshot size in pixels (default 1280,960)"),
            arg("--timeout", type=float_option, default=60.0, metavar="S", help="screenshot load timeout (default 60)"),
            arg("--print-url", action="store_true", help="print the URL for --base-url and exit"),
            arg("--base-url", metavar="URL", help="where the export's layer folders are published"),
            arg(
                "--client-url",
                metavar="URL",
                help="neuroglancer client for --print-url (default https://neuroglancer-demo.appspot.com/)",
            ),
        ),
    ),
    Group(
        ("review",),
        help="proofreading queues, decisions and dense corrections (ACTION: plan, open, decide, import, apply)",
        dest="action",
        metavar="ACTION",
        description=(
            "The review loop (docs/review.md): `plan` ranks where a person's time helps most "
            "(WS/review/<target>/queue.csv), `open` walks a person through the queue in Neuroglancer, "
            "`decide` records a decision on a queued item (decisions.csv), `import` keeps the voxels of "
            "a painted label volume inside the queued boxes as corrections (corrections.zarr) for "
            "fine-tuning, `apply` merges the segments of accepted merge candidates (a logged, "
            "reversible edit)."
        ),
    ),
    Command(
        ("review", "plan"),
        help="rank the items to review (WS/review/<target>/queue.csv)",
        description=(
            "Write WS/review/<target>/queue.csv (item_id,target,kind,z0,y0,x0,z1,y1,x1,score,reason; "
            "most useful first) and review.json. vessels: the non-overlapping boxes where vessel_prob "
            "is most uncertain; synapses: detections near the threshold or with weak partners, and "
            "cleft signal just below it; segmentation: merge candidates (touching segments across a "
            "weak boundary) and split candidates (thin necks, boundaries inside a segment). A queue "
            "with decisions or corrections is replaced only with --overwrite."
        ),
        run="connectome.review.commands:plan",
        args=(
            WORKSPACE,
            arg("--target", required=True, choices=["vessels", "synapses", "segmentation"]),
            arg("--count", required=True, type=int, metavar="N", help="how many items to queue"),
            arg(
                "--strategy",
                default="uncertainty",
                metavar="NAME",
                help="uncertainty (default: most uncertain first) or random (the seeded control)",
            ),
            arg(
                "--box",
                metavar="Z,Y,X",
                help="item box shape in voxels (default: vessels 8,96,96; synapses 8,96,96; segmentation 8,64,64)",
            ),
            arg("--seed", type=int, default=0, help="seed of the random strategy"),
            arg(
                "--overwrite",
                action="store_true",
                help="replace a queue that has decisions or corrections (they move to superseded-<time>/)",
            ),
        ),
    ),
    Command(
        ("review", "decide"),
        help="record a decision on a queued item (decisions.csv)",
        description=(
            "Append item_id,decision,author,time to WS/review/<target>/decisions.csv (atomically). "
            "accept: the model is right there; reject: it is wrong; missed: it missed something there."
        ),
        run="connectome.review.commands:decide",
        args=(
            WORKSPACE,
            arg("--target", required=True, choices=["vessels", "synapses", "segmentation"]),
            arg("--item", required=True, metavar="ID", help="an item_id of queue.csv"),
            arg("--decision", required=True, choices=["accept", "reject", "missed"]),
            arg("--author", metavar="A", help="who decided (default: the login name)"),
            arg(
                "--point",
                metavar="Z,Y,X",
                help="missed: where the missed object is (voxels of raw, inside the item's box; WS/review/<target>/points.csv)",
            ),
        ),
    ),
    Command(
        ("review", "open"),
        help="review the queue in Neuroglancer (keys: accept, reject, missed, next, previous)",
        description=(
            "Serve the workspace's layers and the queue (an annotation layer of boxes) with "
            "neuroglancer's Python server on --bind (loopback by default) and print the URL. The "
            "view jumps to the first undecided item; keys: a accept, r reject, m missed (a point "
            "at the mouse), n next, p previous. Every decision goes at once (atomically) to "
            "WS/review/<target>/decisions.csv (missed points to points.csv), so a killed session "
            "loses nothing and the next `review open` resumes at the first undecided item."
        ),
        run="connectome.review.viewer:run_open",
        args=(
            WORKSPACE,
            arg("--target", required=True, choices=["vessels", "synapses", "segmentation"]),
            arg("--bind", default="127.0.0.1", metavar="ADDR", help="address to listen on (default 127.0.0.1)"),
            arg("--port", type=int, default=0, metavar="P", help="port (default 0: a free one)"),
            arg("--author", metavar="A", help="who decides (default: the login name)"),
            arg(
                "--exit-when-done",
                action="store_true",
                help="stop serving once every item has a decision",
            ),
        ),
    ),
    Command(
        ("review", "apply"),
        help="merge the segments of accepted merge candidates (logged, reversible)",
        description=(
            "Apply the accepted merge-candidate decisions of WS/review/segmentation to the "
            "segmentation: each pair's segments get one id (the smaller), written blockwise; the "
            "edit (old id -> new id) goes to WS/review/segmentation/edits/<edit_id>.json and "
            "edits.csv. --undo EDIT_ID restores the ids that edit changed; --list shows the edits."
        ),
        run="connectome.review.apply:run_apply",
        args=(
            WORKSPACE,
            arg("--undo", metavar="EDIT_ID", help="revert this edit (the latest edit first)"),
            arg("--list", action="store_true", help="list the edits and exit"),
            arg("--author", metavar="A", help="who applies (default: the login name)"),
        ),
    ),
    Command(
        ("review", "import"),
        help="import a painted label volume as dense corrections",
        description=(
            "Read FILE (zarr array, multi-page TIFF, folder of section images, file.h5:/dataset): "
            "the workspace's shape, or a box placed at --offset. Only its voxels inside queued boxes "
            "are kept, in WS/review/<target>/corrections.zarr (labels + mask) and corrections.json. "
            "vessels: values 0/1 (255 = not corrected); segmentation: non-negative segment ids."
        ),
        run="connectome.review.commands:import_",
        args=(
            WORKSPACE,
            arg("--target", required=True, choices=["vessels", "segmentation"]),
            arg("--labels", required=True, metavar="FILE", help="the painted label volume"),
            arg("--offset", metavar="Z,Y,X", help="where FILE's first voxel lies in the workspace (voxels)"),
        ),
    ),
    Command(
        ("info",),
        help="describe a workspace",
        run="connectome.commands.tools:info",
        args=(WORKSPACE,),
    ),
    Group(
        ("pbs",),
        help="ALCF job scripts (ACTION: render, submit)",
        dest="action",
        metavar="ACTION",
        description=(
            "Job scripts for ALCF systems (Polaris and Aurora: PBS Pro + mpiexec; Theta: Cobalt + "
            "aprun). Templates: pbs/."
        ),
    ),
    Command(
        ("pbs", "render"),
        help="render one stage's job script",
        description=(
            "Render the job script for one STAGE. Model stages (train-ffn, train-vessel, segment) "
            "run under mpiexec, one rank per GPU (tile); blockwise stages (stitch, align, "
            "mask-vessels) start a dask scheduler and workers and run the stage with --executor "
            "dask; graph runs as one process. Prints the script, or writes "
            "OUT/<stage>.<system>.pbs."
        ),
        run="connectome.commands.tools:pbs_render",
        args=(
            arg(
                "stage",
                metavar="STAGE",
                help=(
                    "train-ffn | train-vessel | segment | hpo | stitch | align | mask-vessels | graph, or a "
                    "PIPELINE.yaml (one script per stage, OUT/NN-<id>.<system>.pbs; needs --workspace)"
                ),
            ),
            arg(
                "--system",
                required=True,
                metavar="SYSTEM",
                help="aurora | polaris | theta | local (this machine's Torque-compatible qsub)",
            ),
            arg("--nodes", required=True, type=int, metavar="N", help="number of nodes"),
            arg("--ppn", type=int, metavar="P", help="ranks per node (default: Polaris 4, Aurora 12, Theta 4)"),
            arg("--depth", type=int, metavar="D", help="hardware threads per rank (default: cores / ppn)"),
            arg("--walltime", default="01:00:00", metavar="HH:MM:SS", help="default 01:00:00"),
            arg("--queue", default="debug", metavar="Q", help="default debug"),
            arg("--project", metavar="A", help="allocation to charge (required)"),
            arg(
                "--filesystems",
                metavar="FS",
                help="e.g. home:eagle (default: Polaris home:eagle, Aurora home:flare, Theta home:grand)",
            ),
            arg("--workspace", metavar="WS", help="the workspace (required except for train-*)"),
            arg(
                "--stage-args",
                metavar="'ARGS'",
                help=("extra arguments for the stage command (required for train-*: '--data DIR --out MODEL_DIR')"),
            ),
            arg("--setup", metavar="'CMDS'", help="environment set-up lines (default: the system's modules)"),
            arg("--out", metavar="DIR", help="write DIR/<stage>.<system>.pbs (mode 0755) instead of printing"),
            arg("--dry-run", action="store_true", help="print the script even with --out"),
            arg("--from", dest="from_stage", metavar="STAGE", help="pipelines: start at this stage id"),
            arg("--until", metavar="STAGE", help="pipelines: stop after this stage id"),
        ),
    ),
    Command(
        ("pbs", "submit"),
        help="qsub a pipeline's job scripts, chained",
        description=(
            "Render one job script per pipeline stage into WS/pbs/scripts/ and submit them with "
            "qsub, each after the one before (-W depend=afterok:JOBID), so a failing stage stops "
            "the chain; job ids go to WS/pbs/jobs.json. Without qsub on PATH: exit 2."
        ),
        defaults={"stage_args": None, "out": None},
        run="connectome.commands.tools:pbs_submit",
        args=(
            arg("stage", metavar="PIPELINE.yaml"),
            WORKSPACE,
            arg("--system", required=True, metavar="SYSTEM", help="aurora | polaris | theta | local"),
            arg("--nodes", required=True, type=int, metavar="N", help="nodes per job (a stage's pbs: overrides)"),
            arg("--project", metavar="A", help="allocation to charge (required except for --system local)"),
            arg("--ppn", type=int, metavar="P", help="ranks per node (default: the system's)"),
            arg("--depth", type=int, metavar="D", help="hardware threads per rank (default: cores / ppn)"),
            arg("--walltime", default="01:00:00", metavar="HH:MM:SS", help="per job, default 01:00:00"),
            arg("--queue", default="debug", metavar="Q", help="default debug"),
            arg("--filesystems", metavar="FS", help="default: the system's (ALCF)"),
            arg("--setup", metavar="'CMDS'", help="environment set-up lines (default: the system's)"),
            arg("--from", dest="from_stage", metavar="STAGE", help="start at this stage id"),
            arg("--until", metavar="STAGE", help="stop after this stage id"),
            arg("--after", metavar="JOBID", help="the first job waits for this job (afterok)"),
            arg("--dry-run", action="store_true", help="print the scripts, submit nothing"),
        ),
    ),
    Group(
        ("hpo",),
        help="DeepHyper sweeps over stage configs (ACTION: run, report)",
        dest="action",
        metavar="ACTION",
        description=(
            "Hyperparameter sweeps (DeepHyper CBO) over the fields of a stage's typed config, scored "
            "by `connectome evaluate` on a validation volume. See hpo/space.py for the SPACE file."
        ),
    ),
    Command(
        ("hpo", "run"),
        help="run (or continue) a sweep",
        description=(
            "CBO search (fixed random state) over SPACE; DIR/results.csv. --max-evals is the total: "
            "a rerun continues from DIR/results.csv."
        ),
        run="connectome.commands.tools:hpo_run",
        args=(
            arg("space", metavar="SPACE.yaml"),
            arg("--max-evals", required=True, type=int, metavar="N", help="evaluations in total"),
            arg(
                "--evaluator",
                default="serial",
                metavar="E",
                help="serial (default) | thread | process | mpicomm (under mpiexec: rank 0 is the master)",
            ),
            arg("--workers", type=int, metavar="N", help="trials at once for thread/process (default 1)"),
            arg("--out", required=True, metavar="DIR", help="the sweep's folder (results.csv, trials/)"),
        ),
    ),
    Command(
        ("hpo", "report"),
        help="best config, top runs, plot",
        description=(
            "Write DIR/best.yaml (usable with the stage's --config), DIR/top.csv and "
            "DIR/objective.png; print the top runs."
        ),
        run="connectome.commands.tools:hpo_report",
        args=(
            arg("dir", metavar="DIR"),
            arg("--top", type=int, default=10, metavar="K", help="runs in the table (default 10)"),
        ),
    ),
)
