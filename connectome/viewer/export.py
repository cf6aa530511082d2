"""``connectome export-precomputed``: the workspace as neuroglancer precomputed layers.

``OUT`` (default ``WS/precomputed``) gets one folder per layer (``shared/CONTRACT.md``):

* ``raw`` - image, uint8, with a downsampled pyramid (mean pooling);
* ``segmentation`` - compressed_segmentation, pyramid by mode pooling, ``mesh/`` (marching
  cubes, :mod:`connectome.viewer.mesh`) and ``segment_properties/`` (size in voxels, synapses
  in / out, written by us); ``skeletons/`` when ``connectome skeletonize`` has run on the
  current segmentation (copied from ``WS/skeletons/precomputed``, :mod:`connectome.skeletons.stage`);
* ``vessel_mask`` - image, uint8 {0,1} (max pooling);
* ``boundary`` - image, uint8: channel 0 (boundary probability) of ``WS/volume.zarr/boundary``
  (optional: exported when the workspace has it);
* ``synapses`` - annotations from ``WS/synapses.csv`` (:mod:`connectome.viewer.annotations`);

plus ``OUT/connectome.json`` (which layers exist, the frame, the largest segments) that
``connectome view`` reads to build its state. Scale 0 of every volume equals the workspace
array voxel for voxel (x, y, z order inside precomputed).

Incremental: every step records a fingerprint of its source (file names, sizes and mtimes of
the zarr chunks or the CSV) and of the export parameters; an unchanged step is skipped, an
interrupted one resumes at its first missing block (:mod:`connectome.viewer.steps`). Volumes
are read and written blockwise. A missing source (no segmentation yet, no synapse table) is
reported and the rest is exported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from connectome.errors import UserInputError
from connectome.viewer.fsutil import read_json, tree_signature, write_json
from connectome.viewer.steps import Step

log = logging.getLogger(__name__)

EXPORT_VERSION = 1
DEFAULT_DIRNAME = "precomputed"
MANIFEST = "connectome.json"
SYNAPSES_CSV = "synapses.csv"
VOLUME_LAYERS = ("raw", "segmentation", "vessel_mask", "boundary")
#: layers exported when their array exists, without a "missing" note otherwise
OPTIONAL_LAYERS = ("boundary",)
LAYER_TYPES = {
    "raw": "image",
    "segmentation": "segmentation",
    "vessel_mask": "image",
    "boundary": "image",
    "synapses": "annotation",
}
TOP_SEGMENTS = 5


@dataclass
class ExportReport:
    out: Path
    layers: dict[str, str] = field(default_factory=dict)  # layer -> "written" | "resumed" | "up to date"
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        done = ", ".join(f"{k} {v}" for k, v in self.layers.items()) or "nothing"
        text = f"export-precomputed: {self.out}: {done} ({self.seconds:.1f} s)"
        if self.missing:
            text += "\nmissing: " + "; ".join(self.missing)
        return text


def default_out(workspace: str | Path) -> Path:
    return Path(workspace) / DEFAULT_DIRNAME


def export_precomputed(workspace: str | Path, out: str | Path | None = None, compress: bool = True) -> ExportReport:
    from connectome.workspace import PRODUCERS, VOLUME, Workspace

    t0 = time.perf_counter()
    ws = Workspace.open(workspace, mode="r")
    for name in VOLUME_LAYERS:  # an unfinished array is never exported as if it were finished
        if ws.has(name):
            ws.require_complete(name, "export-precomputed")
    out = Path(out) if out else default_out(ws.path)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"--out {out}: cannot create ({exc.strerror or exc})") from None
    report = ExportReport(out)
    shape, res = ws.shape_zyx, ws.voxel_size_nm
    base = {
        "export_version": EXPORT_VERSION,
        "compress": bool(compress),
        "shape_zyx": list(shape),
        "voxel_size_nm": list(res),
    }
    gz = "gzip" if compress else False

    fps: dict[str, dict] = {}
    for name in VOLUME_LAYERS:
        if not ws.has(name):
            if name not in OPTIONAL_LAYERS:
                report.missing.append(f"{name} (not in {ws.path / VOLUME}; run `{PRODUCERS[name]}` first)")
            continue
        fp = {**base, "source": tree_signature(ws.path / VOLUME / name)}
        fps[name] = fp
        step = Step(out, name, fp)
        if step.up_to_date():
            report.layers[name] = "up to date"
            continue
        resumed = step.begin([out / name])
        if name == "segmentation":
            summary = _export_segmentation(ws, out, step, gz)
        else:
            from connectome.viewer.volumes import SPECS, write_volume

            src = ws.array(name)
            if name == "boundary":
                src = _Channel(src, 0)
            summary = write_volume(src, out / name, SPECS[name], shape, res, step, gz)
        step.finish(**summary)
        report.layers[name] = "resumed" if resumed else "written"

    csv = ws.path / SYNAPSES_CSV
    csv_sig = tree_signature(csv) if csv.is_file() else None
    if "segmentation" in fps:
        fp = {**base, "segmentation": fps["segmentation"], "synapses": csv_sig}
        step = Step(out, "segment_properties", fp)
        if not step.up_to_date():
            step.begin([out / "segmentation" / "segment_properties"])
            step.finish(**_export_segment_properties(out, csv if csv_sig else None))
    if csv_sig is None:
        report.missing.append(f"synapses ({csv} not found; run `connectome synapses` first)")
    else:
        from connectome.synapses.table import read_synapse_table
        from connectome.viewer.annotations import write_synapse_annotations

        fp = {**base, "source": csv_sig}
        step = Step(out, "synapses", fp)
        if step.up_to_date():
            report.layers["synapses"] = "up to date"
        else:
            step.begin([out / "synapses"])
            step.finish(**write_synapse_annotations(read_synapse_table(csv), out / "synapses", shape, res))
            report.layers["synapses"] = "written"
    if not report.layers:
        raise UserInputError(f"workspace {ws.path}: nothing to export; missing " + "; ".join(report.missing))
    _write_manifest(out, shape, res)
    report.seconds = time.perf_counter() - t0
    return report


class _Channel:
    """One channel of a channel-first (C, z, y, x) array, read as a (z, y, x) array."""

    def __init__(self, array, channel: int):
        self.array, self.channel = array, int(channel)
        self.shape = tuple(array.shape[1:])

    def __getitem__(self, key):
        return self.array[(self.channel,) + tuple(key)]


def _export_segmentation(ws, out: Path, step: Step, gz) -> dict:
    from connectome.viewer.mesh import export_meshes
    from connectome.viewer.volumes import SPECS, write_volume

    def count(block_id, block, origin):
        ids, counts = np.unique(block, return_counts=True)
        return {"ids": ids.astype(np.uint64), "counts": counts.astype(np.int64)}

    seg = ws.array("segmentation")
    layer = out / "segmentation"
    summary = write_volume(
        seg, layer, SPECS["segmentation"], ws.shape_zyx, ws.voxel_size_nm, step, gz, on_level0_block=count
    )
    summary.update(export_meshes(seg, layer / "mesh", ws.shape_zyx, ws.voxel_size_nm, step))
    parts = [(p["ids"], p["counts"]) for _, p in step.done_payloads("segmentation_p0_")]
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint64)
    counts = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    uniq, inv = np.unique(ids, return_inverse=True)
    sizes = np.bincount(inv, weights=counts, minlength=uniq.size).astype(np.int64)
    keep = uniq != 0
    np.savez(step.dir / "sizes.npz", ids=uniq[keep], sizes=sizes[keep])
    info = read_json(layer / "info")
    info.update({"mesh": "mesh", "segment_properties": "segment_properties"})
    write_json(layer / "info", info)
    from connectome.skeletons.stage import install_in_export

    if install_in_export(ws.path, out):  # `connectome skeletonize` ran on this segmentation
        summary["skeletons"] = "linked"
    summary["segments"] = int(keep.sum())
    return summary


def segment_sizes(out: Path) -> tuple[np.ndarray, np.ndarray]:
    path = Path(out) / ".connectome-export" / "segmentation" / "sizes.npz"
    with np.load(path) as z:
        return z["ids"], z["sizes"]


def _export_segment_properties(out: Path, csv: Path | None) -> dict:
    """``segmentation/segment_properties/info``: per segment its size in voxels and synapse
    counts (in = as post, out = as pre), as numbers and in the label."""
    ids, sizes = segment_sizes(out)
    syn_in = np.zeros(ids.size, np.int64)
    syn_out = np.zeros(ids.size, np.int64)
    if csv is not None and ids.size:
        from connectome.synapses.table import read_synapse_table

        table = read_synapse_table(csv)
        for seg, acc in ((table.post_segment_id, syn_in), (table.pre_segment_id, syn_out)):
            seg = seg[seg != 0]
            at = np.minimum(np.searchsorted(ids, seg), ids.size - 1)
            found = ids[at] == seg
            np.add.at(acc, at[found], 1)
    u32 = np.iinfo(np.uint32).max
    props = {
        "@type": "neuroglancer_segment_properties",
        "inline": {
            "ids": [str(i) for i in ids.tolist()],
            "properties": [
                {
                    "id": "label",
                    "type": "label",
                    "values": [
                        f"{s} vox, syn in {a} / out {b}"
                        for s, a, b in zip(sizes.tolist(), syn_in.tolist(), syn_out.tolist())
                    ],
                },
                {
                    "id": "size_voxels",
                    "type": "number",
                    "data_type": "uint32",
                    "description": "voxels of the segment (capped at 2^32-1; exact in the label)",
                    "values": np.minimum(sizes, u32).tolist(),
                },
                {
                    "id": "synapses_in",
                    "type": "number",
                    "data_type": "uint32",
                    "description": "synapses with this segment as post",
                    "values": syn_in.tolist(),
                },
                {
                    "id": "synapses_out",
                    "type": "number",
                    "data_type": "uint32",
                    "description": "synapses with this segment as pre",
                    "values": syn_out.tolist(),
                },
            ],
        },
    }
    d = out / "segmentation" / "segment_properties"
    write_json(d / "info", props)
    order = np.argsort(-sizes, kind="stable")[:TOP_SEGMENTS]
    return {"segments": int(ids.size), "largest": [str(i) for i in ids[order].tolist()]}


def _write_manifest(out: Path, shape_zyx, res_zyx) -> None:
    layers = {name: kind for name, kind in LAYER_TYPES.items() if (out / name / "info").is_file()}
    largest = (
        (read_json(out / ".connectome-export" / "segment_properties" / "complete.json", {}) or {}).get("largest", [])
        if "segmentation" in layers
        else []
    )
    write_json(
        out / MANIFEST,
        {
            "format_version": 1,
            "shape_zyx": list(shape_zyx),
            "voxel_size_nm": [float(v) for v in res_zyx],
            "layers": layers,
            "largest_segments": largest,
        },
    )
