"""``connectome graph``: the neuron-to-neuron connectivity graph from the synapse table.

Reads ``WS/synapses.csv`` (checked by :mod:`connectome.synapses.table`) and
``WS/volume.zarr/segmentation``; writes ``WS/connectivity.csv`` and ``WS/connectivity.graphml``.

The rules, in order (CAVE / neuPrint conventions):

1. **Synapses dropped.** A synapse is dropped if its pre or post id is 0 ("id 0": not on a
   segment); else if pre == post ("autapse"); else if ``score < --min-score`` (default 0: keep
   all). Each dropped synapse is counted once, in the first of these that applies.
2. **Edges.** The remaining synapses are grouped by (pre, post): ``synapse_count`` = how many,
   ``mean_score`` = the mean of their scores. Edges with ``synapse_count < --min-synapses``
   (default 1) are dropped; their synapses are reported as "on weak edges".
3. **Nodes** are the segments at either end of a kept edge (a segment whose every synapse was
   dropped is not a node). Node attributes: ``size_voxels`` (voxels of that id in the
   segmentation), ``in_degree`` / ``out_degree`` (kept edges in / out), ``synapses_in`` /
   ``synapses_out`` (sum of ``synapse_count`` over those edges).
4. **Consistency.** Every non-zero segment id in the table (before any filter) must exist in
   the segmentation; otherwise the table belongs to another segmentation and nothing is
   written (exit 2, naming a few ids and the count).
5. A **reciprocal pair** is two segments a != b with both a -> b and b -> a kept.

Files. ``connectivity.csv``: ``pre_segment_id,post_segment_id,synapse_count,mean_score``,
sorted by (pre, post) ascending, ``mean_score`` with 6 decimals. ``connectivity.graphml``: the
same directed graph (nodes by ascending id, edges in the CSV's order; graph attributes
``min_score`` and ``min_synapses``); read it with ``networkx.read_graphml(path, node_type=int)``
(or :func:`read_graph`). Both files are written to temporary files after all checks passed and
renamed into place only when both are complete, so a failed run leaves existing outputs as they
were. The same input gives byte-identical files.

Segment sizes are counted blockwise (blocks of whole chunks of about 8 M voxels, one at a time;
runs of equal ids along x are counted at once), so memory stays bounded by one block plus one
count per distinct id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from connectome.atomic import atomic_open
from connectome.errors import UserInputError
from connectome.synapses.table import SynapseTable, read_synapse_table

log = logging.getLogger(__name__)

SYNAPSES_CSV = "synapses.csv"
CONNECTIVITY_CSV = "connectivity.csv"
CONNECTIVITY_GRAPHML = "connectivity.graphml"
SCAN_BLOCK_VOXELS = 2**23


@dataclass(frozen=True)
class Edges:
    """Kept edges, sorted by (pre, post)."""

    pre: np.ndarray  # uint64
    post: np.ndarray  # uint64
    synapse_count: np.ndarray  # int64
    mean_score: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.pre.size)


@dataclass(frozen=True)
class Nodes:
    """Segments at the ends of kept edges, by ascending id, with their attributes."""

    segment_id: np.ndarray
    size_voxels: np.ndarray
    in_degree: np.ndarray
    out_degree: np.ndarray
    synapses_in: np.ndarray
    synapses_out: np.ndarray

    def __len__(self) -> int:
        return int(self.segment_id.size)


@dataclass
class GraphSummary:
    synapses: int = 0
    used: int = 0
    dropped_id0: int = 0
    dropped_autapse: int = 0
    dropped_score: int = 0
    dropped_weak_edges: int = 0  # synapses on edges below --min-synapses
    weak_edges: int = 0
    nodes: int = 0
    edges: int = 0
    reciprocal_pairs: int = 0
    min_score: float = 0.0
    min_synapses: int = 1
    seconds: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The two-line summary the command prints."""
        return (
            f"graph: {self.nodes} neurons, {self.edges} edges, {self.reciprocal_pairs} reciprocal pairs\n"
            f"synapses: {self.synapses} read, {self.used} used; dropped {self.dropped_id0} with id 0, "
            f"{self.dropped_autapse} autapses, {self.dropped_score} below --min-score {self.min_score:g}, "
            f"{self.dropped_weak_edges} on {self.weak_edges} edges below --min-synapses {self.min_synapses}"
        )


# ------------------------------------------------------------------------------- aggregation
def aggregate(table: SynapseTable, min_score: float = 0.0, min_synapses: int = 1) -> tuple[Edges, GraphSummary]:
    """Rules 1-2: drop synapses, group them into edges, drop weak edges (vectorised numpy)."""
    pre, post, score = table.pre_segment_id, table.post_segment_id, table.score
    id0 = (pre == 0) | (post == 0)
    autapse = ~id0 & (pre == post)
    low = ~id0 & ~autapse & (score < min_score)
    keep = ~(id0 | autapse | low)
    s = GraphSummary(
        synapses=len(table),
        dropped_id0=int(id0.sum()),
        dropped_autapse=int(autapse.sum()),
        dropped_score=int(low.sum()),
        min_score=float(min_score),
        min_synapses=int(min_synapses),
    )
    p, q, sc = pre[keep], post[keep], score[keep]
    if p.size == 0:
        empty = np.zeros(0, np.uint64)
        return Edges(empty, empty.copy(), np.zeros(0, np.int64), np.zeros(0)), s
    # factorize ids (monotone), so (pre index, post index) sorts like (pre, post)
    ids, inv = np.unique(np.concatenate([p, q]), return_inverse=True)
    n = np.int64(ids.size)
    key = inv[: p.size].astype(np.int64) * n + inv[p.size :]
    ukey, edge_of, count = np.unique(key, return_inverse=True, return_counts=True)
    mean = np.bincount(edge_of, weights=sc, minlength=ukey.size) / count
    strong = count >= min_synapses
    s.weak_edges = int((~strong).sum())
    s.dropped_weak_edges = int(count[~strong].sum())
    s.used = int(count[strong].sum())
    ukey = ukey[strong]
    edges = Edges(ids[ukey // n], ids[ukey % n], count[strong].astype(np.int64), mean[strong])
    s.edges = len(edges)
    return edges, s


def node_table(edges: Edges, sizes: tuple[np.ndarray, np.ndarray] | None = None) -> Nodes:
    """Rule 3: the nodes of the kept edges; ``sizes`` = (sorted ids, voxel counts) of the
    segmentation (size 0 where not given)."""
    nodes = np.unique(np.concatenate([edges.pre, edges.post]))
    a, b = np.searchsorted(nodes, edges.pre), np.searchsorted(nodes, edges.post)
    k = nodes.size
    size = np.zeros(k, np.int64)
    if sizes is not None and k and sizes[0].size:
        ids, counts = sizes
        at = np.minimum(np.searchsorted(ids, nodes), ids.size - 1)
        found = ids[at] == nodes
        size[found] = counts[at[found]]
    w = edges.synapse_count
    return Nodes(
        nodes,
        size,
        np.bincount(b, minlength=k),
        np.bincount(a, minlength=k),
        np.bincount(b, weights=w, minlength=k).astype(np.int64),
        np.bincount(a, weights=w, minlength=k).astype(np.int64),
    )


def reciprocal_pairs(edges: Edges) -> int:
    """Rule 5: unordered pairs {a, b}, a != b, with both directions kept."""
    if len(edges) == 0:
        return 0
    nodes = np.unique(np.concatenate([edges.pre, edges.post]))
    a = np.searchsorted(nodes, edges.pre).astype(np.int64)
    b = np.searchsorted(nodes, edges.post).astype(np.int64)
    key = a * nodes.size + b  # sorted: edges are sorted by (pre, post)
    rev = b * nodes.size + a
    at = np.clip(np.searchsorted(key, rev), 0, key.size - 1)
    return int(np.count_nonzero((key[at] == rev) & (a < b)))


# ---------------------------------------------------------------------------- segment sizes
def _count_ids(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, voxel counts) of one block, counting runs of equal ids at once."""
    flat = np.ascontiguousarray(block).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.append(starts, flat.size))
    ids, inv = np.unique(flat[starts], return_inverse=True)
    return ids.astype(np.uint64), np.bincount(inv, weights=lengths).astype(np.int64)


def _merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    u, inv = np.unique(ids, return_inverse=True)
    return u, np.bincount(inv, weights=counts, minlength=u.size).astype(np.int64)


def scan_block_shape(shape_zyx, chunks_zyx, target_voxels: int = SCAN_BLOCK_VOXELS) -> tuple[int, int, int]:
    """Whole chunks, grown along x, then y, then z while the block stays <= ``target_voxels``."""
    block = [int(min(c, s)) for c, s in zip(chunks_zyx, shape_zyx)]
    for axis in (2, 1, 0):
        while block[axis] < shape_zyx[axis]:
            grown = block.copy()
            grown[axis] = min(shape_zyx[axis], block[axis] + int(chunks_zyx[axis]))
            if int(np.prod(grown)) > target_voxels:
                break
            block = grown
    return tuple(block)  # type: ignore[return-value]


def segment_sizes(array, block_shape_zyx=None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted non-zero ids, voxel counts) of a label array (zarr or numpy), block by block."""
    from connectome.blockwise import BlockGrid

    shape = cast("tuple[int, int, int]", tuple(int(s) for s in array.shape))
    chunks = tuple(getattr(array, "chunks", None) or shape)
    grid = BlockGrid(shape, block_shape_zyx or scan_block_shape(shape, chunks))
    parts, held = [], 0
    for block in grid.blocks():
        parts.append(_count_ids(np.asarray(array[block.write_box.slices])))
        held += parts[-1][0].size
        if held > 4 * 2**20:  # fold partial tables so memory is one count per distinct id
            parts = [_merge_counts(parts)]
            held = parts[0][0].size
    ids, counts = _merge_counts(parts) if parts else (np.zeros(0, np.uint64), np.zeros(0, np.int64))
    nz = ids != 0
    return ids[nz], counts[nz]


def check_ids_in_segmentation(table: SynapseTable, seg_ids: np.ndarray, csv_path, seg_path) -> None:
    """Rule 4: every non-zero id of the table is a segment of the segmentation."""
    used = np.unique(np.concatenate([table.pre_segment_id, table.post_segment_id]))
    used = used[used != 0]
    missing = np.setdiff1d(used, seg_ids, assume_unique=True)
    if missing.size:
        few = ", ".join(str(v) for v in missing[:5].tolist()) + (", ..." if missing.size > 5 else "")
        raise UserInputError(
            f"{csv_path}: {missing.size} segment id(s) in pre_segment_id/post_segment_id are not "
            f"in {seg_path} (e.g. {few}); was the table made from another segmentation?"
        )


# ---------------------------------------------------------------------------------- writing
def _chunks(n: int, size: int = 100_000):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def write_connectivity_csv(fh, edges: Edges) -> None:
    """The edge table into an open text file."""
    fh.write("pre_segment_id,post_segment_id,synapse_count,mean_score\n")
    for lo, hi in _chunks(len(edges)):
        fh.write(
            "".join(
                f"{a},{b},{c},{m:.6f}\n"
                for a, b, c, m in zip(
                    edges.pre[lo:hi].tolist(),
                    edges.post[lo:hi].tolist(),
                    edges.synapse_count[lo:hi].tolist(),
                    edges.mean_score[lo:hi].tolist(),
                )
            )
        )


_GRAPHML_HEAD = """<?xml version='1.0' encoding='utf-8'?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">
  <key id="g0" for="graph" attr.name="min_score" attr.type="double" />
  <key id="g1" for="graph" attr.name="min_synapses" attr.type="long" />
  <key id="n0" for="node" attr.name="size_voxels" attr.type="long" />
  <key id="n1" for="node" attr.name="in_degree" attr.type="long" />
  <key id="n2" for="node" attr.name="out_degree" attr.type="long" />
  <key id="n3" for="node" attr.name="synapses_in" attr.type="long" />
  <key id="n4" for="node" attr.name="synapses_out" attr.type="long" />
  <key id="e0" for="edge" attr.name="synapse_count" attr.type="long" />
  <key id="e1" for="edge" attr.name="mean_score" attr.type="double" />
  <graph edgedefault="directed">
"""


def write_graphml(fh, nodes: Nodes, edges: Edges, min_score: float, min_synapses: int) -> None:
    """GraphML into an open text file, streamed in slices (networkx's writer takes ~40 s and
    2 GiB for 10^6 edges; this one a few seconds and one slice of strings)."""
    fh.write(_GRAPHML_HEAD)
    fh.write(f'    <data key="g0">{float(min_score)!r}</data>\n    <data key="g1">{int(min_synapses)}</data>\n')
    for lo, hi in _chunks(len(nodes)):
        cols = [
            getattr(nodes, n)[lo:hi].tolist()
            for n in ("segment_id", "size_voxels", "in_degree", "out_degree", "synapses_in", "synapses_out")
        ]
        fh.write(
            "".join(
                f'    <node id="{i}"><data key="n0">{s}</data><data key="n1">{di}</data><data key="n2">{do}</data>'
                f'<data key="n3">{si}</data><data key="n4">{so}</data></node>\n'
                for i, s, di, do, si, so in zip(*cols)
            )
        )
    for lo, hi in _chunks(len(edges)):
        fh.write(
            "".join(
                f'    <edge source="{a}" target="{b}"><data key="e0">{c}</data><data key="e1">{m:.6f}</data></edge>\n'
                for a, b, c, m in zip(
                    edges.pre[lo:hi].tolist(),
                    edges.post[lo:hi].tolist(),
                    edges.synapse_count[lo:hi].tolist(),
                    edges.mean_score[lo:hi].tolist(),
                )
            )
        )
    fh.write("  </graph>\n</graphml>\n")


def read_graph(path: str | Path):
    """``connectivity.graphml`` as a ``networkx.DiGraph`` with integer node ids."""
    import networkx as nx

    return nx.read_graphml(str(path), node_type=int)


# ------------------------------------------------------------------------------------ driver
def build_graph(workspace: str | Path, min_score: float = 0.0, min_synapses: int = 1) -> GraphSummary:
    """Check the inputs, then write ``connectivity.csv`` and ``connectivity.graphml``.

    Raises :class:`UserInputError` (nothing written) for a missing workspace, segmentation or
    table, a malformed table, or table ids that are not in the segmentation.
    """
    from connectome.workspace import VOLUME, Workspace

    if not (isinstance(min_score, (int, float)) and 0.0 <= min_score <= 1.0):
        raise UserInputError(f"--min-score: expected a number in [0, 1], got {min_score!r}")
    if isinstance(min_synapses, bool) or not isinstance(min_synapses, (int, np.integer)) or min_synapses < 1:
        raise UserInputError(f"--min-synapses: expected a positive integer, got {min_synapses!r}")
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = round(now - t, 3)
        t = now

    ws = Workspace.open(workspace, mode="r")
    seg = ws.require_complete("segmentation", "graph")  # "has no array 'segmentation' (run `connectome segment` first)"
    csv_path = ws.path / SYNAPSES_CSV
    lap("open_workspace")
    table = read_synapse_table(csv_path)
    lap("read_csv")
    seg_ids, seg_counts = segment_sizes(seg)
    lap("segment_sizes")
    check_ids_in_segmentation(table, seg_ids, csv_path, ws.path / VOLUME / "segmentation")
    edges, summary = aggregate(table, min_score, int(min_synapses))
    nodes = node_table(edges, (seg_ids, seg_counts))
    summary.nodes, summary.reciprocal_pairs = len(nodes), reciprocal_pairs(edges)
    lap("aggregate")
    # both into temporary files; renamed into place only when both are complete
    with atomic_open(ws.path / CONNECTIVITY_CSV) as csv_fh, atomic_open(ws.path / CONNECTIVITY_GRAPHML) as xml_fh:
        write_connectivity_csv(csv_fh, edges)
        lap("write_csv")
        write_graphml(xml_fh, nodes, edges, min_score, int(min_synapses))
        lap("write_graphml")
    summary.seconds = seconds
    log.info("graph: %d rows, phases (s): %s", len(table), ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()))
    return summary
