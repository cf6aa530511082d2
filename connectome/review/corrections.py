"""Dense corrections: a label volume painted in any tool, kept only inside the queued boxes.

``connectome review import --labels FILE [--offset Z,Y,X]`` reads FILE with the readers of
``connectome import`` (:mod:`connectome.sources`: zarr array, multi-page TIFF, folder of
section images, ``file.h5:/dataset``; any integer dtype). FILE is either the workspace's shape
(no offset) or a box placed at ``--offset`` (voxels of ``raw``). Only its voxels inside boxes
of ``queue.csv`` are kept. Written to ``WS/review/<target>/``::

    corrections.zarr/            zarr group (format 3), the workspace's shape, chunks = the queue box
      labels                     vessels: uint8, 0 / 1 = corrected background / vessel,
                                 255 = not corrected (the fill value);
                                 segmentation: uint64 segment ids (0 = corrected to no object)
      mask                       uint8, 1 where a voxel was corrected, 0 elsewhere
    corrections.json             {"format": "connectome-corrections/1", "target", "import_id",
                                  "item_ids": [...every item covered so far...],
                                  "voxels": {"corrected": N, "foreground": N (vessels: 1s;
                                  segmentation: non-zero)}, "imports": [{"source", "offset_zyx",
                                  "shape_zyx", "item_ids", "voxels", "time"}, ...],
                                  "workspace": <the identity of review.json>}

Values: vessels {0, 1} (255 in FILE = leave that voxel uncorrected); segmentation non-negative
integers. A later import adds to the earlier ones (its voxels win where they overlap).

Atomicity: the new group is built beside the old one (a copy of it plus this import), swapped in
by two renames, and ``corrections.json`` (carrying the group's ``import_id``) is written last;
:func:`load_corrections` refuses a group and record whose ``import_id`` differ (a killed import:
rerun it).
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from connectome.atomic import atomic_write_text
from connectome.errors import UserInputError
from connectome.review.queue import QUEUE, check_identity, read_queue, read_review_json, review_dir

if TYPE_CHECKING:
    from connectome.sources import VolumeSource

FORMAT = "connectome-corrections/1"
CORR_ZARR, CORR_JSON = "corrections.zarr", "corrections.json"
IMPORT_TARGETS = ("vessels", "segmentation")
NOT_CORRECTED = 255  # vessels: labels value of a voxel nobody corrected


@dataclass
class Corrections:
    """What fine-tuning reads: ``labels`` and ``mask`` (zarr arrays of the workspace shape), the
    items covered and their boxes, and the record."""

    target: str
    labels: object
    mask: object
    item_ids: list
    boxes: list  # [(z0, y0, x0, z1, y1, x1), ...] of the covered items
    meta: dict
    review: dict


def _load_labels(path: str, target: str, ws_shape, offset) -> tuple[VolumeSource, tuple[int, ...], tuple[int, ...]]:
    from connectome.sources import open_source

    src = open_source(str(path), dtypes=None)
    dt = np.dtype(src.dtype)
    if dt.kind not in "ui":
        raise UserInputError(
            f"{path}: labels must be integers ({'0/1' if target == 'vessels' else 'segment ids'}), got dtype {dt}"
        )
    shape = tuple(int(s) for s in src.shape_zyx)
    if offset is None:
        if shape != tuple(ws_shape):
            raise UserInputError(
                f"{path}: shape {list(shape)} (z,y,x) is not the workspace's {list(ws_shape)}; "
                "give --offset Z,Y,X to place a smaller box"
            )
        offset = (0, 0, 0)
    if any(o < 0 for o in offset) or any(o + s > w for o, s, w in zip(offset, shape, ws_shape)):
        raise UserInputError(
            f"{path}: shape {list(shape)} at --offset {list(offset)} does not fit in the "
            f"workspace's {list(ws_shape)} (z,y,x)"
        )
    return src, shape, tuple(int(o) for o in offset)


def import_corrections(workspace: str | Path, target: str, labels: str, offset=None) -> dict:
    """Import a painted label volume as corrections; returns the new ``corrections.json``."""
    import zarr

    from connectome.blockwise.geometry import Box
    from connectome.review.plan import utc_now
    from connectome.workspace import Workspace

    if target not in IMPORT_TARGETS:
        raise UserInputError(f"--target: dense corrections are for {' or '.join(IMPORT_TARGETS)}, got {target!r}")
    folder = review_dir(workspace, target)
    items = read_queue(folder / QUEUE)
    review = read_review_json(folder)
    ws = Workspace.open(workspace, mode="r")
    check_identity(review.get("workspace"), ws, str(folder / "review.json"))
    src, shape, off = _load_labels(labels, target, ws.shape_zyx, offset)
    lo, hi = np.asarray(off), np.asarray(off) + np.asarray(shape)

    touched = []
    for it in items:
        a = np.maximum(lo, it.begin_zyx)
        b = np.minimum(hi, it.end_zyx)
        if np.all(a < b):
            touched.append((it, a, b))
    if not touched:
        raise UserInputError(
            f"{labels}: its box {list(map(int, lo))}..{list(map(int, hi))} (z,y,x) touches none of the "
            f"{len(items)} queued boxes of {folder / QUEUE}"
        )
    parts = []
    for it, a, b in touched:
        v = np.asarray(
            src.read(
                Box(
                    cast("tuple[int, int, int]", tuple(int(x) for x in a - lo)),
                    cast("tuple[int, int, int]", tuple(int(x) for x in b - lo)),
                )
            )
        )
        if target == "vessels":
            bad = (v != 0) & (v != 1) & (v != NOT_CORRECTED)
            if bad.any():
                raise UserInputError(
                    f"{labels}: vessel labels must be 0 or 1 (255 = not corrected), found "
                    f"{int(v[bad].flat[0])} inside queued item {it.item_id}"
                )
        elif v.dtype.kind == "i" and v.size and v.min() < 0:
            raise UserInputError(
                f"{labels}: segment ids must be non-negative, found {int(v.min())} inside queued item {it.item_id}"
            )
        parts.append((it, a, b, v))

    final = folder / CORR_ZARR
    tmp = folder / f".{CORR_ZARR}.{uuid.uuid4().hex}.partial"
    import_id = uuid.uuid4().hex
    try:
        if final.exists():
            shutil.copytree(final, tmp)
            g = zarr.open_group(str(tmp), mode="r+")
        else:
            chunks = tuple(int(min(b, s)) for b, s in zip(review.get("box_zyx") or (8, 96, 96), ws.shape_zyx))
            g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            attrs: dict[str, Any] = {"voxel_size_nm": list(ws.voxel_size_nm), "target": target}
            if target == "vessels":
                g.create_array(
                    "labels",
                    shape=ws.shape_zyx,
                    chunks=chunks,
                    dtype="uint8",
                    fill_value=NOT_CORRECTED,
                    attributes=attrs,
                )
            else:
                g.create_array(
                    "labels", shape=ws.shape_zyx, chunks=chunks, dtype="uint64", fill_value=0, attributes=attrs
                )
            g.create_array("mask", shape=ws.shape_zyx, chunks=chunks, dtype="uint8", fill_value=0, attributes=attrs)
        lab, msk = g["labels"], g["mask"]
        assert isinstance(lab, zarr.Array) and isinstance(msk, zarr.Array)  # arrays this import wrote
        n_corr = n_fg = 0
        for _it, a, b, v in parts:
            sl = tuple(slice(int(x), int(y)) for x, y in zip(a, b))
            keep = v != NOT_CORRECTED if target == "vessels" else np.ones(v.shape, bool)
            old_l, old_m = np.asarray(lab[sl]), np.asarray(msk[sl])
            new_l = np.where(keep, v, old_l).astype(lab.dtype)
            lab[sl] = new_l
            msk[sl] = np.where(keep, 1, old_m).astype(np.uint8)
            n_corr += int(keep.sum())
            n_fg += int(((v == 1) if target == "vessels" else (v > 0))[keep].sum())
        g.attrs["import_id"] = import_id
        # swap in: old -> backup, new -> final, drop backup
        backup = folder / f".{CORR_ZARR}.{import_id}.old"
        if final.exists():
            final.rename(backup)
        tmp.rename(final)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prev = _read_json(folder) if (folder / CORR_JSON).is_file() else None
    this = {
        "source": str(Path(str(labels).split(":")[0]).resolve())
        + (":" + str(labels).split(":", 1)[1] if ":" in str(labels) else ""),
        "offset_zyx": list(off),
        "shape_zyx": list(shape),
        "item_ids": [p[0].item_id for p in parts],
        "voxels": {"corrected": n_corr, "foreground": n_fg},
        "time": utc_now(),
    }
    imports = (prev or {}).get("imports", []) + [this]
    ids = list(dict.fromkeys([i for imp in imports for i in imp["item_ids"]]))
    boxes = {it.item_id: it.box for it in items}
    total, fg = _count(zarr.open_group(str(final), mode="r"), [boxes[i] for i in ids if i in boxes], target)
    meta = {
        "format": FORMAT,
        "target": target,
        "import_id": import_id,
        "item_ids": ids,
        "voxels": {"corrected": total, "foreground": fg},
        "imports": imports,
        "workspace": review.get("workspace"),
        "queue_created": review.get("created"),
    }
    atomic_write_text(folder / CORR_JSON, json.dumps(meta, indent=1) + "\n")
    return meta


def _count(g, boxes, target) -> tuple[int, int]:
    """Corrected and foreground voxels, visiting only the chunks under the covered boxes."""
    lab, msk = g["labels"], g["mask"]
    ch = np.asarray(msk.chunks)
    seen = set()
    total = fg = 0
    for b in boxes:
        lo, hi = np.asarray(b[:3]) // ch, (np.asarray(b[3:]) - 1) // ch
        for c in np.ndindex(*(hi - lo + 1)):
            key = tuple(int(v) for v in lo + np.asarray(c))
            if key in seen:
                continue
            seen.add(key)
            sl = tuple(slice(k * n, (k + 1) * n) for k, n in zip(key, ch))
            m = np.asarray(msk[sl]) > 0
            v = np.asarray(lab[sl])
            total += int(m.sum())
            fg += int((m & ((v == 1) if target == "vessels" else (v > 0))).sum())
    return total, fg


def _read_json(folder: Path) -> dict:
    p = folder / CORR_JSON
    try:
        meta = json.loads(p.read_text())
        assert isinstance(meta, dict) and meta.get("format") == FORMAT
    except Exception:
        raise UserInputError(f"{p}: not a corrections record of format {FORMAT}") from None
    return meta


def load_corrections(review_dir_path: str | Path, workspace=None) -> Corrections:
    """The corrections of a review folder (``WS/review/<target>/``), for fine-tuning.

    ``workspace`` (a path or an opened :class:`~connectome.workspace.Workspace`): the workspace
    they will be used with; exit 2 (:class:`UserInputError`) if the folder's ``review.json``
    names another one. Also exit 2 for a folder without corrections, or whose group and record
    disagree (an import was killed: rerun it)."""
    import zarr

    folder = Path(review_dir_path)
    review = read_review_json(folder)
    if workspace is not None:
        from connectome.workspace import Workspace

        ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace, mode="r")
        check_identity(review.get("workspace"), ws, str(folder / "review.json"))
    if not (folder / CORR_JSON).is_file() or not (folder / CORR_ZARR).is_dir():
        raise UserInputError(f"{folder}: no corrections (run `connectome review import` first)")
    meta = _read_json(folder)
    g = zarr.open_group(str(folder / CORR_ZARR), mode="r")
    if g.attrs.get("import_id") != meta.get("import_id"):
        raise UserInputError(
            f"{folder / CORR_ZARR}: does not match {CORR_JSON} (an import was interrupted); "
            "rerun the last `connectome review import`"
        )
    boxes = {it.item_id: it.box for it in read_queue(folder / QUEUE)}
    ids = [i for i in meta["item_ids"] if i in boxes]
    return Corrections(meta["target"], g["labels"], g["mask"], ids, [boxes[i] for i in ids], meta, review)
