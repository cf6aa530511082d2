"""``connectome review apply``: merge the segments of accepted merge candidates, as a logged,
reversible edit of ``WS/volume.zarr/segmentation``.

What is merged: the items of ``WS/review/segmentation/queue.csv`` of kind ``merge-candidate``
whose *latest* decision is ``accept``; their segment pairs come from ``review.json``'s
``item_segments`` (older queues: the pair named in the item's reason). The pairs are joined with
union-find, so chains (A-B, B-C) become one segment with the smallest id. Ids are first followed
through the edits already applied, so an item an earlier edit applied (or made redundant) changes
nothing: applying twice writes nothing new.

The edit, ``WS/review/segmentation/edits/<edit_id>.json`` (``e0001``, ``e0002``, ...)::

    {"edit_id", "time", "author", "status", "items": [...], "pairs": [[a, b], ...],
     "mapping": {"old": new, ...}, "chunks": [{"index": [i, j, k], "sha256": ...}, ...],
     "segmentation_state_before": {...}, "segmentation_state_after": {...}, "undone": null,
     "review_created": ..., "stale": [stages to rerun]}

plus one row of ``edits.csv`` (``edit_id,time,author,items,merged_ids,undone``; written from the
JSON records, which are the truth). Merging loses which voxel had which id, so before a chunk is
rewritten its old content is saved to ``edits/<edit_id>/chunks/<i>_<j>_<k>.npz``: an undo
restores those chunks exactly.

Crash safety, in write order: the record (status ``started``) and the segmentation's state
(``complete: false``, ``editing: <edit_id>``) first; then per chunk: its old content (atomic
file), then the new chunk; then the state (``complete: true``, ``review_edits`` + the edit id)
and the record (status ``applied``). A run killed in between leaves the segmentation marked
incomplete (stages that read it refuse it, naming ``connectome review apply``); the next
``review apply`` (or ``--undo``) first rolls that edit back from its saved chunks, with a log
line, then carries on. An undo goes the same way (status ``undoing`` until every chunk is back).

Only the latest edit that is not undone can be undone, and only while the segmentation is as
that edit left it (its state and the content of the chunks it wrote): otherwise exit 2.

Results computed from the old segmentation (synapse partners, graph, skeletons, precomputed
export) are stale after an edit: the segmentation's ``connectome_state`` lists the applied edits
under ``review_edits`` and a warning names the stages to rerun.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from connectome.atomic import atomic_write_bytes, atomic_write_text
from connectome.errors import UserInputError
from connectome.review.decisions import author_name, latest_decisions
from connectome.review.queue import QUEUE, REVIEW_JSON, check_identity, read_queue, read_review_json, review_dir

log = logging.getLogger("connectome")

TARGET = "segmentation"
ARRAY = "segmentation"
CONSUMER = "review apply"
EDITS, EDITS_CSV = "edits", "edits.csv"
EDIT_COLUMNS = ("edit_id", "time", "author", "items", "merged_ids", "undone")
#: stages whose results are computed from the segmentation (rerun after an edit)
DOWNSTREAM = ("synapses", "graph", "skeletonize", "export-precomputed")
#: key of the segmentation's ``connectome_state`` listing the applied (not undone) edits
EDITS_KEY = "review_edits"
_STALE = (
    "results computed from the segmentation before are stale: rerun "
    + ", ".join(f"`connectome {s}`" for s in DOWNSTREAM)
    + " (with --restart where a stage keeps done-markers)"
)
_EDIT_ID = re.compile(r"^e(\d{4,})$")
_PAIR_IN_REASON = re.compile(r"segments (\d+) and (\d+) touch")


# ----------------------------------------------------------------------------- records
def _edits_dir(folder: Path) -> Path:
    return folder / EDITS


def _chunks_dir(folder: Path, edit_id: str) -> Path:
    return _edits_dir(folder) / edit_id / "chunks"


def _read_edits(folder: Path) -> list[dict]:
    """Every edit record, oldest first."""
    d = _edits_dir(folder)
    out = []
    if d.is_dir():
        for p in d.glob("e*.json"):
            m = _EDIT_ID.match(p.stem)
            if not m:
                continue
            try:
                rec = json.loads(p.read_text())
                assert isinstance(rec, dict) and rec.get("edit_id") == p.stem
            except Exception:
                raise UserInputError(f"{p}: not a review edit record") from None
            out.append((int(m.group(1)), rec))
    return [rec for _, rec in sorted(out, key=lambda t: t[0])]


def _save_edit(folder: Path, rec: dict) -> None:
    atomic_write_text(_edits_dir(folder) / f"{rec['edit_id']}.json", json.dumps(rec, indent=1) + "\n")


def _csv_text(edits: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EDIT_COLUMNS)
    for rec in edits:
        if rec.get("status") not in ("applied", "undone"):
            continue
        merged = " ".join(f"{old}->{new}" for old, new in rec.get("mapping", {}).items())
        w.writerow(
            [rec["edit_id"], rec["time"], rec["author"], " ".join(rec["items"]), merged, rec.get("undone") or ""]
        )
    return buf.getvalue()


def _write_csv(folder: Path) -> None:
    atomic_write_text(_edits_dir(folder) / EDITS_CSV, _csv_text(_read_edits(folder)))


def _next_id(edits: list[dict]) -> str:
    last = max((int(m.group(1)) for r in edits if (m := _EDIT_ID.match(r["edit_id"]))), default=0)
    return f"e{last + 1:04d}"


def _utc_now() -> str:
    from connectome.review.plan import utc_now

    return utc_now()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ----------------------------------------------------------------------------- segmentation state
def _state(ws) -> dict | None:
    return ws.array_state(ARRAY)


def _set_state(ws, state: dict | None) -> None:
    from connectome.workspace import STATE_ATTR

    attrs = ws.group[ARRAY].attrs
    if state is None:
        if STATE_ATTR in attrs:
            del attrs[STATE_ATTR]
    else:
        attrs[STATE_ATTR] = state


def _editing_state(before: dict | None, edit_id: str) -> dict:
    """The segmentation's state while an edit (or its undo) is being written: incomplete, and
    naming `review apply` as the command that finishes it (by rolling the edit back)."""
    return {**(before or {}), "stage": "review apply", "task": "review-apply", "complete": False, "editing": edit_id}


# ----------------------------------------------------------------------------- chunks
def _chunk_grid(arr) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunk shape, grid shape) of the unit written at once (the shard if sharded)."""
    unit = tuple(int(c) for c in (getattr(arr, "shards", None) or arr.chunks))
    grid = tuple(-(-int(s) // c) for s, c in zip(arr.shape, unit))
    return unit, grid


def _chunk_slices(index, unit, shape) -> tuple[slice, ...]:
    return tuple(slice(i * c, min(s, (i + 1) * c)) for i, c, s in zip(index, unit, shape))


def _write_chunk(arr, slices, data: np.ndarray) -> None:
    """Write one chunk of the segmentation (a function of its own so tests can make it fail)."""
    arr[slices] = data


def _sha(data: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def _chunk_file(folder: Path, edit_id: str, index) -> Path:
    return _chunks_dir(folder, edit_id) / ("_".join(str(int(i)) for i in index) + ".npz")


def _save_chunk(path: Path, data: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, data=data)
    atomic_write_bytes(path, buf.getvalue())


def _remap(chunk: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    try:
        import fastremap
    except ImportError:  # numpy: only the voxels of merged ids are looked up
        keys = np.asarray(sorted(mapping), dtype=chunk.dtype)
        vals = np.asarray([mapping[int(k)] for k in keys], dtype=chunk.dtype)
        out = chunk.copy()
        hit = np.isin(chunk, keys)
        out[hit] = vals[np.searchsorted(keys, chunk[hit])]
        return out
    return np.asarray(fastremap.remap(chunk, mapping, preserve_missing_labels=True, in_place=False), chunk.dtype)


def _progress_bar(enabled: bool | None, total: int, desc: str):
    from tqdm import tqdm

    on = sys.stderr.isatty() if enabled is None else bool(enabled)
    return tqdm(total=total, desc=desc, unit="chunk", disable=not on, dynamic_ncols=True, leave=False)


def _restore_chunks(ws, folder: Path, edit_id: str) -> int:
    """Write back every saved chunk of ``edit_id``; returns how many."""
    arr = ws.array(ARRAY)
    unit, _ = _chunk_grid(arr)
    n = 0
    d = _chunks_dir(folder, edit_id)
    for p in sorted(d.glob("*.npz")) if d.is_dir() else []:
        index = tuple(int(v) for v in p.stem.split("_"))
        with np.load(p) as z:
            data = z["data"]
        _write_chunk(arr, _chunk_slices(index, unit, arr.shape), data)
        n += 1
    return n


# ----------------------------------------------------------------------------- session
@contextmanager
def _session(workspace: str | Path) -> Iterator[tuple[Any, Path, dict, dict[str, str]]]:
    """Open the workspace and its segmentation review (identity checked), hold the edits lock
    and finish any interrupted edit or undo first (yields edit id -> what recovery made of it)."""
    from connectome.workspace import Workspace

    folder = review_dir(workspace, TARGET)
    if not folder.is_dir():
        raise UserInputError(
            f"{folder}: no segmentation review (run `connectome review plan --target segmentation` "
            "and decide on its items first)"
        )
    ws = Workspace.open(workspace, mode="r+")
    meta = read_review_json(folder)
    check_identity(meta.get("workspace"), ws, str(folder / REVIEW_JSON))
    ws.array(ARRAY)  # exit 2 naming `connectome segment` when there is none
    _edits_dir(folder).mkdir(parents=True, exist_ok=True)
    with open(_edits_dir(folder) / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserInputError(
                f"{_edits_dir(folder)}: another `connectome review apply` is running on this workspace; "
                "wait for it to finish"
            ) from None
        try:
            recovered = _recover(ws, folder)
            yield ws, folder, meta, recovered
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _recover(ws, folder: Path) -> dict[str, str]:
    """Roll back an edit a killed run left ``started``; finish an undo left ``undoing``."""
    done: dict[str, str] = {}
    for rec in _read_edits(folder):
        status = rec.get("status")
        if status not in ("started", "undoing"):
            continue
        eid = rec["edit_id"]
        if (_state(ws) or {}).get("editing") != eid:
            # the segmentation was rewritten since (e.g. `connectome segment --restart`): its saved
            # chunks no longer belong there
            log.warning(
                "review apply: edit %s was interrupted, but the segmentation was rewritten since; "
                "not restoring its saved chunks",
                eid,
            )
            rec["status"] = "abandoned"
        else:
            n = _restore_chunks(ws, folder, eid)
            _set_state(ws, rec.get("segmentation_state_before"))
            if status == "started":
                rec["status"] = "rolled-back"
                log.warning("review apply: edit %s was interrupted; rolled back from its %d saved chunks", eid, n)
            else:
                rec["status"], rec["undone"] = "undone", _utc_now()
                log.warning("review apply: the undo of edit %s was interrupted; finished it (%d chunks)", eid, n)
        _save_edit(folder, rec)
        shutil.rmtree(_edits_dir(folder) / eid, ignore_errors=True)
        _write_csv(folder)
        done[eid] = rec["status"]
    return done


# ----------------------------------------------------------------------------- pairs
def _item_pair(item, meta: dict) -> tuple[int, int]:
    segs = (meta.get("item_segments") or {}).get(item.item_id)
    if isinstance(segs, list) and len(segs) == 2:
        return int(segs[0]), int(segs[1])
    m = _PAIR_IN_REASON.search(item.reason)  # queues planned before item_segments existed
    if m:
        return int(m.group(1)), int(m.group(2))
    raise UserInputError(
        f"review item {item.item_id}: no segment pair in review.json's item_segments or its reason; "
        "re-plan the queue (`connectome review plan --target segmentation --overwrite`)"
    )


def _current_id(x: int, applied: list[dict]) -> int:
    """What segment ``x`` is after the applied edits (oldest first)."""
    for rec in applied:
        x = int(rec["mapping"].get(str(x), x))
    return x


def _union(pairs: list[tuple[int, int]]) -> dict[int, int]:
    """Union-find over the pairs: every id of a group -> the group's smallest id (changed ids only)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in sorted(parent) if find(x) != x}


def _check_planned_on(ws, meta: dict, folder: Path) -> None:
    """The queue's pairs name ids of the segmentation it was planned on: refuse another one."""
    planned = (meta.get("inputs") or {}).get(ARRAY)
    if not isinstance(planned, dict):
        return
    now = str((_state(ws) or {}).get("config_digest", ""))
    if str(planned.get("config_digest", "")) != now:
        raise UserInputError(
            f"{folder / REVIEW_JSON}: the queue was planned on another segmentation (config digest "
            f"{planned.get('config_digest')!r}, now {now!r}); re-plan it "
            "(`connectome review plan --target segmentation --overwrite`)"
        )


# ----------------------------------------------------------------------------- apply / undo / list
def apply_merges(workspace: str | Path, author: str | None = None, progress: bool | None = None) -> dict:
    """Apply the accepted merge candidates not applied yet as one edit; returns a summary
    (``edit_id`` None when there was nothing to do)."""
    author = author_name(author)
    with _session(workspace) as (ws, folder, meta, _recovered):
        arr = ws.require_complete(ARRAY, CONSUMER)
        _check_planned_on(ws, meta, folder)
        latest = latest_decisions(workspace, TARGET)
        accepted = [
            it
            for it in read_queue(folder / QUEUE)
            if it.kind == "merge-candidate" and latest.get(it.item_id, {}).get("decision") == "accept"
        ]
        summary: dict[str, Any] = {"edit_id": None, "accepted": len(accepted), "items": [], "chunks": 0}
        if not accepted:
            return summary
        edits = _read_edits(folder)
        applied = [r for r in edits if r.get("status") == "applied"]
        new_items, pairs = [], []
        for it in accepted:
            a, b = (_current_id(x, applied) for x in _item_pair(it, meta))
            if a != b:
                new_items.append(it.item_id)
                pairs.append((a, b))
        mapping = _union(pairs)
        summary["already_applied"] = len(accepted) - len(new_items)
        if not mapping:
            return summary
        edit_id = _next_id(edits)
        before = _state(ws)
        rec: dict[str, Any] = {
            "edit_id": edit_id,
            "time": _utc_now(),
            "author": author,
            "status": "started",
            "items": new_items,
            "pairs": [list(p) for p in pairs],
            "mapping": {str(k): int(v) for k, v in mapping.items()},
            "chunks": [],
            "segmentation_state_before": _jsonable(before),
            "segmentation_state_after": None,
            "undone": None,
            "review_created": meta.get("created"),
            "stale": list(DOWNSTREAM),
        }
        # the record and the "being edited" state first: a kill from here on is rolled back
        _save_edit(folder, rec)
        _set_state(ws, _editing_state(before, edit_id))
        unit, grid = _chunk_grid(arr)
        chunks = []
        bar = _progress_bar(progress, int(np.prod(grid)), f"review apply {edit_id}")
        try:
            for index in np.ndindex(*grid):
                sl = _chunk_slices(index, unit, arr.shape)
                old = np.asarray(arr[sl])
                new = _remap(old, mapping)
                if not np.array_equal(new, old):
                    _save_chunk(_chunk_file(folder, edit_id, index), old)  # the old content first
                    _write_chunk(arr, sl, new)
                    chunks.append({"index": [int(i) for i in index], "sha256": _sha(new)})
                bar.update(1)
        finally:
            bar.close()
        after = {
            **(before or {}),
            "complete": True,
            EDITS_KEY: [*(before or {}).get(EDITS_KEY, []), edit_id],
        }
        _set_state(ws, after)
        rec.update(status="applied", chunks=chunks, segmentation_state_after=_jsonable(after))
        _save_edit(folder, rec)
        _write_csv(folder)
        groups: dict[int, set[int]] = {}
        for old_id, new_id in mapping.items():
            groups.setdefault(new_id, {new_id}).add(old_id)
        summary.update(
            edit_id=edit_id,
            items=new_items,
            pairs=len(pairs),
            segments_before=sum(len(g) for g in groups.values()),
            segments_after=len(groups),
            chunks=len(chunks),
            mapping=rec["mapping"],
        )
        log.warning("review apply: %s changed the segmentation; %s", edit_id, _STALE)
        return summary


def undo_edit(workspace: str | Path, edit_id: str, progress: bool | None = None) -> dict:
    """Restore the chunks the latest (not undone) edit changed; returns its record."""
    with _session(workspace) as (ws, folder, _meta, recovered):
        edits = _read_edits(folder)
        by_id = {r["edit_id"]: r for r in edits if r.get("status") in ("applied", "undone")}
        if edit_id not in by_id:
            known = ", ".join(by_id) or "none"
            raise UserInputError(f"--undo: no edit {edit_id!r} in {_edits_dir(folder)} (edits: {known})")
        rec = by_id[edit_id]
        if recovered.get(edit_id) == "undone":  # this very undo was interrupted and is now finished
            return rec
        if rec["status"] == "undone":
            raise UserInputError(f"--undo: edit {edit_id} was already undone at {rec.get('undone')}")
        live = [r for r in edits if r.get("status") == "applied"]
        if live[-1]["edit_id"] != edit_id:
            raise UserInputError(
                f"--undo: only the latest edit can be undone; undo {live[-1]['edit_id']} first (then {edit_id})"
            )
        arr = ws.require_complete(ARRAY, CONSUMER)
        if _jsonable(_state(ws)) != rec.get("segmentation_state_after"):
            raise UserInputError(
                f"--undo {edit_id}: the segmentation changed since the edit (its state is now "
                f"{(_state(ws) or {}).get('stage')!r}, complete={ws.is_complete(ARRAY)}); refusing to overwrite it"
            )
        unit, _ = _chunk_grid(arr)
        for c in rec["chunks"]:
            if _sha(np.asarray(arr[_chunk_slices(c["index"], unit, arr.shape)])) != c["sha256"]:
                raise UserInputError(
                    f"--undo {edit_id}: the segmentation changed since the edit (chunk {c['index']} differs "
                    "from what the edit wrote); refusing to overwrite it"
                )
        missing = [c["index"] for c in rec["chunks"] if not _chunk_file(folder, edit_id, c["index"]).is_file()]
        if missing:
            raise UserInputError(
                f"--undo {edit_id}: saved chunk {missing[0]} is missing in {_chunks_dir(folder, edit_id)}"
            )
        rec["status"] = "undoing"
        _save_edit(folder, rec)
        _set_state(ws, _editing_state(_state(ws), edit_id))
        bar = _progress_bar(progress, len(rec["chunks"]), f"review apply --undo {edit_id}")
        try:
            for c in rec["chunks"]:
                with np.load(_chunk_file(folder, edit_id, c["index"])) as z:
                    data = z["data"]
                _write_chunk(arr, _chunk_slices(c["index"], unit, arr.shape), data)
                bar.update(1)
        finally:
            bar.close()
        _set_state(ws, rec.get("segmentation_state_before"))
        rec.update(status="undone", undone=_utc_now())
        _save_edit(folder, rec)
        _write_csv(folder)
        shutil.rmtree(_edits_dir(folder) / edit_id, ignore_errors=True)
        log.warning("review apply: undid %s; %s", edit_id, _STALE)
        return rec


def list_edits(workspace: str | Path) -> list[dict]:
    """The applied and undone edits, oldest first (their JSON records)."""
    folder = review_dir(workspace, TARGET)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: no segmentation review (run `connectome review plan --target segmentation`)")
    return [r for r in _read_edits(folder) if r.get("status") in ("applied", "undone")]


def run_apply(args) -> int:
    progress = getattr(args, "progress", None)
    if args.list:
        if args.undo:
            raise UserInputError("--list and --undo: give one of them")
        edits = list_edits(args.workspace)
        if not edits:
            print("review apply: no edits")
        else:
            sys.stdout.write(_csv_text(edits))
        return 0
    if args.undo:
        rec = undo_edit(args.workspace, args.undo, progress=progress)
        print(
            f"review apply: undid {rec['edit_id']} ({len(rec['mapping'])} ids restored in {len(rec['chunks'])} chunks)"
        )
        return 0
    s = apply_merges(args.workspace, author=args.author, progress=progress)
    if not s["accepted"]:
        print(f"review apply: no accepted merge candidates in {review_dir(args.workspace, TARGET)}; nothing to do")
    elif s["edit_id"] is None:
        print(f"review apply: all {s['accepted']} accepted merges are already applied; nothing to do")
    else:
        print(
            f"review apply: {s['edit_id']} merged {s['pairs']} pairs ({s['segments_before']} segments -> "
            f"{s['segments_after']}) in {s['chunks']} chunks; undo with --undo {s['edit_id']}"
        )
    return 0
