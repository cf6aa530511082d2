"""What every ``connectome train KIND --init MODEL_DIR --corrections WS/review/<target>`` shares
(vessel: :mod:`unet.finetune`, boundary: :mod:`unet.boundary_finetune`, synapse:
:mod:`unet.synapse_finetune`): finding the workspace of a review folder, the corrected boxes of a
dense import, and the records that go into the fine-tuned model's ``model.json``
(``fine_tuning``: the init model and the review it learnt from) and its training fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from connectome.errors import UserInputError
from connectome.training.provenance import portable_path

#: share of each batch drawn from the --data synth folders (replay), when any are given
REPLAY_FRACTION = 0.5
#: every this many-th reviewed box / item (in queue order) is held back for validation (at least one)
HOLDOUT_EVERY = 5


def split_boxes(n: int, what: str = "corrected box(es)") -> tuple[list[int], list[int]]:
    """Indices of (training, held-back) boxes: every HOLDOUT_EVERY-th held back, at least one."""
    if n < 2:
        raise UserInputError(
            f"--corrections: {n} {what}; fine-tuning needs at least 2 (one is held back for validation)"
        )
    val = list(range(HOLDOUT_EVERY - 1, n, HOLDOUT_EVERY)) or [n - 1]
    train = [i for i in range(n) if i not in val]
    return train, val


def review_workspace(corrections_dir, target: str):
    """(review folder, workspace path, the workspace opened read-only) of ``--corrections``
    (``WS/review/<target>``); exit 2 naming the problem."""
    from connectome.workspace import Workspace

    corr_dir = Path(corrections_dir)
    if not corr_dir.is_dir():
        raise UserInputError(f"--corrections {corr_dir}: not found (expected WS/review/{target})")
    ws_path = corr_dir.resolve().parent.parent
    if not (ws_path / "volume.zarr").is_dir():
        raise UserInputError(
            f"--corrections {corr_dir}: not inside a workspace (expected WS/review/{target} with "
            f"WS/volume.zarr; {ws_path} has none)"
        )
    return corr_dir, ws_path, Workspace.open(ws_path, mode="r")


def dense_corrections(corr_dir: Path, ws, target: str, kind: str):
    """The dense corrections of ``corr_dir`` for ``target`` and the boxes that carry corrected
    voxels: ``(corrections, boxes, item_ids)``; exit 2 for another target or none imported."""
    from connectome.review.corrections import load_corrections

    corr = load_corrections(corr_dir, ws)
    if corr.target != target:
        raise UserInputError(
            f"--corrections {corr_dir}: holds {corr.target} corrections; train {kind} needs "
            f"{target} corrections (WS/review/{target})"
        )
    voxels = corr.meta.get("voxels", {})
    if not corr.boxes or int(voxels.get("corrected", 0)) == 0:
        raise UserInputError(
            f"--corrections {corr_dir}: no corrected voxels (import a painted label volume with "
            f"`connectome review import --target {target}` first)"
        )
    boxes, ids = [], []
    for iid, b in zip(corr.item_ids, corr.boxes):  # only boxes that carry corrected voxels count
        sl = tuple(slice(int(b[i]), int(b[i + 3])) for i in range(3))
        if np.any(np.asarray(corr.mask[sl]) == 1):
            boxes.append(tuple(int(v) for v in b))
            ids.append(iid)
    return corr, boxes, ids


def init_record(init_dir, spec) -> dict:
    """The init model: path (absolute and portable) and weights sha256."""
    p = Path(init_dir).resolve()
    return {"path": str(p), "portable_path": portable_path(p), "weights_sha256": spec.weights_sha256}


def corrections_record(corr_dir: Path, meta: dict, review: dict, ids: Sequence[str], tr, va, **extra) -> dict:
    """The review a model learnt from: folder, import, items (trained / held back), workspace."""
    return {
        "review_dir": str(Path(corr_dir).resolve()),
        "import_id": meta.get("import_id"),
        "item_ids": list(ids),
        "train_item_ids": [ids[i] for i in tr],
        "validation_item_ids": [ids[i] for i in va],
        **extra,
        "workspace": meta.get("workspace"),
        "queue_created": meta.get("queue_created"),
        "strategy": review.get("strategy"),
    }


def finetune_fingerprint(task: str, cfg, not_training, init_rec: dict, record: dict, data, **extra) -> dict:
    """What a resumed fine-tuning run must agree on (the config without the fields that may
    change on resumption, the init weights, the review items, the replay folders)."""
    from connectome.config import config_to_dict

    return {
        "task": task,
        "config": {k: v for k, v in config_to_dict(cfg).items() if k not in not_training},
        "init": init_rec["weights_sha256"],
        "corrections": {k: record.get(k) for k in ("import_id", "item_ids")},
        "data": [str(Path(p).resolve()) for p in data],
        "replay_fraction": REPLAY_FRACTION,
        "holdout_every": HOLDOUT_EVERY,
        **extra,
    }


def fine_tuning_doc(init_rec: dict, record: dict) -> dict:
    """``model.json``'s ``fine_tuning`` section."""
    return {"init": init_rec, "corrections": record, "replay_fraction": REPLAY_FRACTION, "holdout_every": HOLDOUT_EVERY}


def run_finetune(job, tcfg, out: Path, session, restart: bool, what: str, ws_path, n_replay: int):
    """Log what is fine-tuned, run (or resume) the training; returns ``(result, stopped)`` where
    ``stopped`` is the summary of a run interrupted by a signal (else None)."""
    import logging

    from connectome.training.loop import run_training

    if session.is_root:
        logging.getLogger("unet.finetune").info(
            "fine-tuning on %s of %s%s", what, ws_path, f", replay of {n_replay} synth folder(s)" if n_replay else ""
        )
    result = run_training(job, tcfg, Path(out) / "train", session, restart=restart)
    if result.stopped_by_signal:
        session.barrier()
        return result, {"stopped": True, "steps": result.steps, "total_steps": tcfg.steps, "model_dir": str(out)}
    return result, None


def finetuned_doc(init_doc: dict, arrays: dict, result, training: dict, init_rec: dict, record: dict) -> dict:
    """``model.json`` of a fine-tuned U-Net: the init's input/output/inference sections, the new
    weights' step, the training record and the ``fine_tuning`` section."""
    import json

    doc = json.loads(json.dumps(init_doc))
    for k in ("test", "notes"):
        doc.pop(k, None)
    doc["weights"] = {
        "parameters": int(sum(int(np.prod(a.shape)) for a in arrays.values())),
        "from_step": result.best_step if result.best_step is not None else result.steps,
    }
    doc["training"] = training
    doc["fine_tuning"] = fine_tuning_doc(init_rec, record)
    return doc


def box_keep(inside: Sequence, outside: Sequence):
    """``keep(region)`` for the corrected-box volumes: voxels inside one of ``inside`` (all if empty)
    and inside none of ``outside`` (boxes in raw voxels)."""

    def keep(region):
        shape = tuple(s.stop - s.start for s in region)
        grid = [np.arange(s.start, s.stop) for s in region]

        def within(b):
            z, y, x = (((g >= b[k]) & (g < b[k + 3])) for k, g in enumerate(grid))
            return z[:, None, None] & y[None, :, None] & x[None, None, :]

        k = np.zeros(shape, bool) if inside else np.ones(shape, bool)
        for b in inside:
            k |= within(b)
        for b in outside:
            k &= ~within(b)
        return k

    return keep
