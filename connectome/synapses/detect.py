"""Blockwise synaptic cleft detection: ``synapse_prob`` -> clefts -> ``WS/synapses.csv``.

The rule
--------
A voxel is *cleft* iff ``synapse_prob >= t8`` with ``t8 = max(1, round(255 * threshold))``.
A *synapse* is a connected component of cleft voxels, 26-connected (clefts are one-voxel-thin
oblique sheets; in anisotropic stacks their voxels often touch only at edges or corners), with
at least ``min_size_voxels`` voxels. Per synapse: ``size_voxels``, the centroid ``z, y, x``
(mean voxel coordinate), ``score`` = the mean ``synapse_prob / 255`` over its voxels, and
pre/post partners by :mod:`connectome.synapses.partners`. With ``require_partners`` (the
default) ``WS/synapses.csv`` lists only synapses with both partners: a cleft-like component
with a single segment beside it (inside one neurite, e.g. at a mitochondrion) or against
unsegmented space (vessels are 0 in the segmentation) connects no two neurons; the others keep
their ids (the ids of ``synapse_clefts``), so the table's ids may have gaps. The result is the
same for every block shape and executor (the tests check it), and equals labelling the whole
volume at once.

How, in three resumable blockwise passes plus two short driver steps::

    1 synapses-label     per block: threshold, label 26-connected components -> "fragments",
                         ids (block number << 32) + local label, written to the array
                         synapse_fragments; per fragment: size, coordinate sums, prob sum,
                         first voxel (smallest global C-order index)   -> WS/synapses/label/
    2 synapses-join      per block, with a 1-voxel halo: pairs of different fragments on
                         26-adjacent voxels (only across block borders: inside a block they are
                         one fragment already)                            -> WS/synapses/join/
      driver: resolve    union of joined fragments (connected components of the pair graph,
                         i.e. union-find); drop components < min_size_voxels; number the rest
                         1..K by their first voxel (so ids do not depend on the block layout)
                                                                          -> WS/synapses/clefts.npz
    3 synapses-partners  per block, halo = the shell radius: final ids -> array synapse_clefts (uint64, the
                         synapse id of every cleft voxel); partner evidence of the block's shell
                         voxels                                           -> WS/synapses/partners/
      driver: finish     partners per synapse, then WS/synapses.csv (atomic)

All sums are exact integers, so no result depends on summation order. The post-side signal is
read from the array ``post_array`` and the pre-side signal, if ``pre_array`` names one, from
that array (uint8 0..255 = 0..1, or float 0..1). Rerun after a kill and only missing blocks run;
``restart=True`` recomputes everything.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from connectome.atomic import atomic_write_bytes
from connectome.blockwise import Block, BlockGrid, OutputSpec, Task, run_task
from connectome.config import BlockwiseConfig, config_to_dict
from connectome.errors import UserInputError
from connectome.synapses.partners import (
    DEFAULT_SHELL_RADIUS_NM,
    Evidence,
    choose_partners,
    merge_evidence,
    shell_evidence,
    shell_radius_voxels,
)
from connectome.synapses.table import write_synapses_csv
from connectome.workspace import Workspace, open_array

log = logging.getLogger(__name__)

FRAGMENTS = "synapse_fragments"
WORK = "synapses"  # WS/synapses/{label,join,partners}/<block_id>.npz, clefts.npz
STRUCTURE = np.ones((3, 3, 3), bool)
FORWARD = [d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]  # 13 offsets, one per +-d


@dataclass(frozen=True)
class DetectConfig:
    blockwise: BlockwiseConfig = field(default_factory=BlockwiseConfig)
    #: cleft iff synapse_prob >= max(1, round(255 * threshold))
    threshold: float = 0.5
    #: smaller components (after joining across blocks) are dropped
    min_size_voxels: int = 50
    prob_array: str = "synapse_prob"
    post_array: str = "synapse_post"
    #: the pre-side signal ("" = none: pre evidence is then 255 - post)
    pre_array: str = ""
    segmentation_array: str = "segmentation"
    #: the synapse id of every cleft voxel (uint64, 0 = none)
    output_array: str = "synapse_clefts"
    #: partner votes come from the voxels within this distance of the cleft (per axis, whole
    #: voxels: (0, 2, 2) at 40 x 8 x 8 nm); see connectome.synapses.partners
    shell_radius_nm: float = DEFAULT_SHELL_RADIUS_NM
    #: list only synapses with both a pre- and a post-synaptic segment in synapses.csv
    require_partners: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_size_voxels < 1:
            raise ValueError(f"min_size_voxels must be >= 1, got {self.min_size_voxels}")
        if not 0.0 <= self.shell_radius_nm <= 1000.0:
            raise ValueError(f"shell_radius_nm must be in [0, 1000], got {self.shell_radius_nm}")

    @property
    def threshold_u8(self) -> int:
        return max(1, int(round(255 * self.threshold)))


Config = DetectConfig


# -------------------------------------------------------------------------------- block work
def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: missing or unreadable ({exc}); rerun with --restart") from None


def label_fragments(
    prob: np.ndarray, threshold_u8: int, block_number: int = 0, offset_zyx=(0, 0, 0), volume_shape_zyx=None
) -> tuple[np.ndarray, dict]:
    """Pass 1 on one block: fragment ids (uint64, 0 = none) and per-fragment sums."""
    from scipy import ndimage as ndi

    prob = np.asarray(prob)
    local, n = ndi.label(prob >= threshold_u8, structure=STRUCTURE)
    if n >= 2**32:
        raise ValueError(f"{n} fragments in one block; use smaller blocks")
    base = np.uint64(block_number) << np.uint64(32)
    frag = np.where(local > 0, local.astype(np.uint64) + base, np.uint64(0))
    idx = np.flatnonzero(local)
    lab = local.reshape(-1)[idx]
    z, y, x = (c + o for c, o in zip(np.unravel_index(idx, prob.shape), offset_zyx))
    vy, vx = (volume_shape_zyx or prob.shape)[1:]
    first_pos = np.unique(lab, return_index=True)[1]  # C order within a block = global C order
    glob = (z.astype(np.int64) * vy + y) * vx + x
    stats = {
        "ids": np.arange(1, n + 1, dtype=np.uint64) + base,
        "size": np.bincount(lab, minlength=n + 1)[1:].astype(np.int64),
        "sum_zyx": np.stack([np.bincount(lab, weights=c, minlength=n + 1)[1:] for c in (z, y, x)], axis=1),
        "sum_prob": np.bincount(lab, weights=prob.reshape(-1)[idx], minlength=n + 1)[1:],
        "first": glob[first_pos].astype(np.int64),
    }
    return frag, stats


def cross_pairs(region: np.ndarray, core: tuple[slice, slice, slice]) -> np.ndarray:
    """Pass 2 on one block: (k, 2) sorted unique pairs (a < b) of different non-zero ids on
    26-adjacent voxels p (in ``core``) and p + d (in ``region``) for the 13 forward offsets d."""
    out = []
    for d in FORWARD:
        src, dst = [], []
        for c, o, n in zip(core, d, region.shape):
            lo, hi = max(c.start, -o), min(c.stop, n - o)
            src.append(slice(lo, hi))
            dst.append(slice(lo + o, hi + o))
        a, b = region[tuple(src)], region[tuple(dst)]
        m = (a != 0) & (b != 0) & (a != b)
        if m.any():
            out.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], axis=1))
    if not out:
        return np.zeros((0, 2), np.uint64)
    return np.unique(np.concatenate(out).astype(np.uint64), axis=0)


@dataclass(frozen=True)
class _LabelBlock:
    workspace: str
    prob_array: str
    threshold_u8: int
    grid_shape_zyx: tuple[int, int, int]
    shape_zyx: tuple[int, int, int]

    def __call__(self, block: Block) -> None:
        gz, gy, gx = self.grid_shape_zyx
        iz, iy, ix = block.index_zyx
        prob = np.asarray(open_array(self.workspace, self.prob_array)[block.write_box.slices])
        frag, stats = label_fragments(
            prob, self.threshold_u8, (iz * gy + iy) * gx + ix, block.write_box.begin_zyx, self.shape_zyx
        )
        open_array(self.workspace, FRAGMENTS, mode="r+")[block.write_box.slices] = frag
        _save_npz(Path(self.workspace) / WORK / "label" / f"{block.block_id}.npz", **stats)


@dataclass(frozen=True)
class _JoinBlock:
    workspace: str

    def __call__(self, block: Block) -> None:
        region = np.asarray(open_array(self.workspace, FRAGMENTS)[block.read_box.slices])
        pairs = cross_pairs(region, block.write_box.relative_to(block.read_box))
        _save_npz(Path(self.workspace) / WORK / "join" / f"{block.block_id}.npz", pairs=pairs)


@dataclass(frozen=True)
class _PartnerBlock:
    workspace: str
    config: DetectConfig
    radius_zyx: tuple[int, int, int]

    def __call__(self, block: Block) -> None:
        ws, cfg = self.workspace, self.config
        table = _load_npz(Path(ws) / WORK / "clefts.npz")
        region = to_synapse_ids(
            np.asarray(open_array(ws, FRAGMENTS)[block.read_box.slices]),
            table["fragment_ids"],
            table["synapse_of_fragment"],
        )
        core = block.write_box.relative_to(block.read_box)
        open_array(ws, cfg.output_array, mode="r+")[block.write_box.slices] = region[core]
        ev = Evidence.empty()
        if region.any():
            seg = np.asarray(open_array(ws, cfg.segmentation_array)[block.write_box.slices])
            post = np.asarray(open_array(ws, cfg.post_array)[block.write_box.slices])
            pre = np.asarray(open_array(ws, cfg.pre_array)[block.write_box.slices]) if cfg.pre_array else None
            ev = shell_evidence(region, seg, post, core, block.write_box.begin_zyx, self.radius_zyx, pre)
        _save_npz(Path(ws) / WORK / "partners" / f"{block.block_id}.npz", **ev.to_npz())


def to_synapse_ids(fragments: np.ndarray, fragment_ids: np.ndarray, synapse_of_fragment: np.ndarray) -> np.ndarray:
    """Map fragment ids to synapse ids (0 stays 0; dropped fragments become 0)."""
    out = np.zeros(fragments.shape, np.uint64)
    nz = fragments != 0
    if nz.any():
        at = np.searchsorted(fragment_ids, fragments[nz])
        out[nz] = synapse_of_fragment[np.minimum(at, fragment_ids.size - 1)]
    return out


# ------------------------------------------------------------------------------------ driver
def _grid(ws: Workspace, config: DetectConfig, halo) -> BlockGrid:
    halo = (halo,) * 3 if isinstance(halo, int) else tuple(int(h) for h in halo)
    return BlockGrid(ws.shape_zyx, config.blockwise.block_shape_zyx, halo)


def check_inputs(ws: Workspace, config: DetectConfig) -> None:
    """Clear errors for missing or wrong input arrays (before any block runs)."""
    ws.require_complete(config.prob_array, "synapses")
    ws.require_complete(config.segmentation_array, "synapses")
    if not ws.has(config.post_array):
        raise UserInputError(
            f"workspace {ws.path}: has no array '{config.post_array}' (the post-side signal, "
            "high on the postsynaptic side of a cleft, that partner assignment needs)"
        )
    if config.pre_array and not ws.has(config.pre_array):
        raise UserInputError(
            f"workspace {ws.path}: has no array '{config.pre_array}' (the pre-side signal); "
            "rerun `connectome synapses` (its prediction pass writes it)"
        )
    for name in filter(None, (config.post_array, config.pre_array)):
        a = ws.require_complete(name, "synapses")
        if np.dtype(a.dtype).kind not in "uif" or a.shape != ws.array(config.prob_array).shape:
            raise UserInputError(
                f"workspace {ws.path}: array '{name}' has dtype {a.dtype} and shape {list(a.shape)}, "
                "expected uint8 (0..255) or float (0..1) of the volume's shape"
            )


def plan_label(ws: Workspace, config: DetectConfig) -> Task:
    grid = _grid(ws, config, 0)
    proc = _LabelBlock(str(ws.path), config.prob_array, config.threshold_u8, grid.grid_shape_zyx, ws.shape_zyx)
    out = OutputSpec(
        FRAGMENTS,
        "uint64",
        config.blockwise.block_shape_zyx,
        attrs={"from": config.prob_array, "threshold_u8": config.threshold_u8},
    )
    fp = {"threshold_u8": config.threshold_u8, "prob_array": config.prob_array}
    return Task("synapses-label", ws.path, grid, proc, fp, (out,), max_retries=config.blockwise.max_retries)


def plan_join(ws: Workspace, config: DetectConfig) -> Task:
    fp = {"threshold_u8": config.threshold_u8, "prob_array": config.prob_array}
    return Task(
        "synapses-join",
        ws.path,
        _grid(ws, config, 1),
        _JoinBlock(str(ws.path)),
        fp,
        max_retries=config.blockwise.max_retries,
    )


def plan_partners(ws: Workspace, config: DetectConfig, clefts_digest: str) -> Task:
    out = OutputSpec(
        config.output_array,
        "uint64",
        config.blockwise.block_shape_zyx,
        attrs={"from": config.prob_array, "rule": "connectome.synapses.detect"},
    )
    radius = shell_radius_voxels(config.shell_radius_nm, ws.voxel_size_nm)
    # require_partners only filters the table (driver step): changing it reuses the blocks
    cfg = {k: v for k, v in config_to_dict(config).items() if k != "require_partners"}
    fp = {"config": cfg, "clefts": clefts_digest, "shell_radius_zyx": list(radius)}
    return Task(
        "synapses-partners",
        ws.path,
        _grid(ws, config, radius),
        _PartnerBlock(str(ws.path), config, radius),
        fp,
        (out,),
        max_retries=config.blockwise.max_retries,
    )


def _block_files(ws: Workspace, config: DetectConfig, kind: str) -> list[Path]:
    return [ws.path / WORK / kind / f"{b.block_id}.npz" for b in _grid(ws, config, 0).blocks()]


def resolve_clefts(ws: Workspace, config: DetectConfig) -> str:
    """Driver step: join fragments, drop small synapses, number them; returns a digest."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    stats = [_load_npz(p) for p in _block_files(ws, config, "label")]
    cat = {k: np.concatenate([s[k] for s in stats]) for k in ("ids", "size", "sum_zyx", "sum_prob", "first")}
    ids = cat["ids"]  # sorted: block numbers are the high bits, local labels ascend
    pairs = np.concatenate([_load_npz(p)["pairs"].reshape(-1, 2) for p in _block_files(ws, config, "join")])
    n = ids.size
    a, b = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False) if n else (0, np.zeros(0, np.int64))
    k = int(comp.max()) + 1 if n else 0
    size = np.bincount(comp, weights=cat["size"], minlength=k).astype(np.int64)
    first = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(first, comp, cat["first"])
    kept = np.flatnonzero(size >= config.min_size_voxels)
    kept = kept[np.argsort(first[kept], kind="stable")]
    synapse_of_comp = np.zeros(k, np.uint64)
    synapse_of_comp[kept] = np.arange(1, kept.size + 1, dtype=np.uint64)
    sum_zyx = np.stack([np.bincount(comp, weights=cat["sum_zyx"][:, i], minlength=k) for i in range(3)], axis=1)
    sum_prob = np.bincount(comp, weights=cat["sum_prob"], minlength=k)
    table = {
        "fragment_ids": ids,
        "synapse_of_fragment": synapse_of_comp[comp] if n else np.zeros(0, np.uint64),
        "size": size[kept],
        "centroid_zyx": sum_zyx[kept] / np.maximum(size[kept], 1)[:, None],
        "score": sum_prob[kept] / np.maximum(size[kept], 1) / 255.0,
        "dropped_small": np.int64(int((size < config.min_size_voxels).sum())),
    }
    _save_npz(ws.path / WORK / "clefts.npz", **table)
    digest = hashlib.sha1(table["fragment_ids"].tobytes() + table["synapse_of_fragment"].tobytes()).hexdigest()
    log.info(
        "synapses: %d fragments, %d cross-block joins, %d synapses (>= %d voxels), %d smaller dropped",
        n,
        pairs.shape[0],
        kept.size,
        config.min_size_voxels,
        int((size < config.min_size_voxels).sum()),
    )
    return digest


@dataclass(frozen=True)
class DetectSummary:
    #: rows of synapses.csv
    synapses: int
    with_both_partners: int
    dropped_small: int
    csv_path: Path
    #: components (>= the minimum size) left out of synapses.csv for lack of a partner
    dropped_unpaired: int = 0

    def describe(self) -> str:
        return (
            f"synapses: {self.synapses} in the table ({self.with_both_partners} with both partners), "
            f"{self.dropped_unpaired} without two partner segments and {self.dropped_small} components below "
            f"the minimum size dropped; table {self.csv_path}"
        )


def finish(ws: Workspace, config: DetectConfig) -> DetectSummary:
    """Driver step: partners of every synapse, then ``WS/synapses.csv``."""
    table = _load_npz(ws.path / WORK / "clefts.npz")
    ev = merge_evidence(Evidence.from_npz(_load_npz(p)) for p in _block_files(ws, config, "partners"))
    k = int(table["size"].size)
    ids = np.arange(1, k + 1, dtype=np.int64)
    partners = choose_partners(ev, ids)
    both = partners.paired
    rows = both if config.require_partners else np.ones(k, bool)
    path = write_synapses_csv(
        ws.path / "synapses.csv",
        ids[rows],
        table["centroid_zyx"][rows],
        partners.pre[rows],
        partners.post[rows],
        table["score"][rows],
        table["size"][rows],
        partners.pre_zyx[rows],
        partners.post_zyx[rows],
    )
    return DetectSummary(int(rows.sum()), int(both.sum()), int(table["dropped_small"]), path, int(k - rows.sum()))


def detect_synapses(
    workspace: str | Path,
    config: DetectConfig = DetectConfig(),
    executor=None,
    progress: bool = False,
    restart: bool = False,
) -> DetectSummary:
    """Run all passes on a workspace (``synapse_prob``, ``segmentation`` and the post-side
    signal must exist) and write ``WS/synapses.csv``; see the module docstring."""
    from connectome.blockwise.executors import SerialExecutor

    executor = executor or SerialExecutor()
    ws = Workspace.open(workspace)
    check_inputs(ws, config)
    run_task(plan_label(ws, config), executor, progress=progress, restart=restart)
    run_task(plan_join(ws, config), executor, progress=progress, restart=restart)
    digest = executor.run_on_driver(lambda: resolve_clefts(ws, config))
    run_task(plan_partners(ws, config, digest), executor, progress=progress, restart=restart)
    return executor.run_on_driver(lambda: finish(ws, config))
