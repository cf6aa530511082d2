"""``generate``: plan, build the geometry, then make and write the volume slab by slab.

Order of work and what is held in memory::

    plan_acquisition          transforms, tile grid, world margins     (small)
    build_geometry            vessel, neurites, mitochondria, synapses (lists of capsules)
    for each z-slab (the chunk depth):
        for each (y, x) block of the world (block_xy_px, chunk-aligned)   [worker processes]
            labels + image of the block (with halo) -> truth.zarr chunks, slab image
        for each section of the slab                                      [worker processes]
            montage from the slab image -> tiles
    tables, sections.json, synth.json, preview

The content flow of the truth raw (``synth.json`` -> ``statistics.content_flow``, see
:mod:`.flow`) is measured in the parent from each slab's truth window, section by section, as
the slabs are made; only the previous section's patch spectra are kept between slabs.

The parent holds the geometry and one world slab of uint8 (chunk depth x world y x world x);
each worker holds the arrays of one block (~45 bytes per voxel of block + halo, ~0.6-0.9 GiB
for a 512 px block of 32 sections). Nothing is ever held as a full-volume array, so memory
does not grow with the number of sections. Blocks are independent and seeded by position, so
the output is the same for any number of workers (forked after the geometry is built and
before zarr starts its I/O thread; workers never open zarr).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectome.errors import UserInputError
from connectome.synth import writer
from connectome.synth.acquisition import AcquisitionPlan, cut_tiles, overlap_range, plan_acquisition, render_montage
from connectome.synth.fields import rng
from connectome.synth.flow import FlowMeter
from connectome.synth.geometry import ClearanceGrid, LabelOracle, VoxelBox
from connectome.synth.imaging import neuron_levels, render_block, section_looks
from connectome.synth.neurites import REACH_NM, NeuropilBuilder
from connectome.synth.presets import SynthConfig, make_config
from connectome.synth.synapses import place_synapses
from connectome.synth.vessels import make_vessel
from connectome.synth.volume import Geometry, compute_block, grow

log = logging.getLogger("connectome.synth")
FORMAT = 1
GEN_PAD_NM = 300.0
GRID_CELL_MIN_NM = 40.0  # clearance grid cell (nm); coarser for volumes over 25M cells


def build_geometry(cfg, plan, seed: int):
    """Vessel, neurites and synapses of the world box; returns (Geometry, world box, stats)."""
    nz, h, w = cfg.shape_zyx
    v = np.asarray(cfg.voxel_size_nm, float)
    world = VoxelBox(
        0, nz, -plan.margin_lo_yx[0], h + plan.margin_hi_yx[0], -plan.margin_lo_yx[1], w + plan.margin_hi_yx[1]
    )
    world_lo, world_hi = world.bounds_nm(v)
    truth_hi = np.array([nz, h, w]) * v
    gen_lo, gen_hi = world_lo - GEN_PAD_NM, world_hi + GEN_PAD_NM
    cell = max(GRID_CELL_MIN_NM, float(np.prod(gen_hi - gen_lo) / 25e6) ** (1 / 3))
    grid = ClearanceGrid(gen_lo, gen_hi, cell, REACH_NM)
    vessel = make_vessel(cfg, truth_hi, gen_lo, gen_hi, rng(seed, "vessel"))
    if vessel is not None:
        grid.commit(vessel.capsules)
    neuropil = NeuropilBuilder(cfg, world_lo, world_hi, grid, rng(seed, "neurites"), pad_nm=GEN_PAD_NM).build()
    del grid
    oracle = LabelOracle(neuropil.capsules, vessel.capsules if vessel is not None else None)
    synapses, syn_stats = place_synapses(cfg, neuropil, oracle, truth_hi, world_lo, world_hi, rng(seed, "synapses"))
    stats = {
        "neuropil": neuropil.stats,
        "synapse_placement": syn_stats,
        "vessel": vessel.describe() if vessel is not None else None,
    }
    return Geometry(cfg, neuropil, vessel, synapses), world, stats


def _cuts(lo: int, hi: int, b: int) -> list[int]:
    """Edges of the blocks along one axis: multiples of b (chunk-aligned in the truth frame),
    with end pieces shorter than b/4 merged into their neighbour."""
    inner = [c for c in range(-(-lo // b) * b, hi, b) if c - lo >= b // 4 and hi - c >= b // 4]
    return [lo, *inner, hi]


def _blocks(world: VoxelBox, z0: int, z1: int, b: int):
    ys, xs = _cuts(world.y0, world.y1, b), _cuts(world.x0, world.x1, b)
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            yield VoxelBox(z0, z1, y0, y1, x0, x1)


class _Stats:
    """Sums over the truth frame, merged block by block."""

    def __init__(self, n_syn: int, n_neurons: int):
        self.present = np.zeros(n_neurons + 1, bool)
        self.counts = dict.fromkeys(("voxels", "neuron", "vessel", "ecs", "mito"), 0)
        self.sums = dict.fromkeys(("sq_noise", "neuron_gray", "ecs_gray"), 0.0)
        self.cleft_sum = np.zeros((n_syn + 1, 3))
        self.cleft_n = np.zeros(n_syn + 1, np.int64)

    @staticmethod
    def of_block(part: VoxelBox, neurons, vessels, clefts, mito, raw, clean, n_syn: int, n_neurons: int) -> dict:
        nm, vm = neurons > 0, vessels > 0
        em = ~nm & ~vm
        d = {
            "counts": {
                "voxels": neurons.size,
                "neuron": int(np.count_nonzero(nm)),
                "vessel": int(np.count_nonzero(vm)),
                "ecs": int(np.count_nonzero(em)),
                "mito": int(np.count_nonzero(mito)),
            },
            "sums": {
                "sq_noise": float(np.sum((raw.astype(np.float64) - 255.0 * clean) ** 2)),
                "neuron_gray": float(raw[nm].sum(dtype=np.float64)),
                "ecs_gray": float(raw[em].sum(dtype=np.float64)),
            },
            "present": np.bincount(neurons.ravel().astype(np.int64), minlength=n_neurons + 1) > 0,
            "cleft_sum": None,
            "cleft_n": None,
        }
        idx = np.nonzero(clefts)
        if len(idx[0]):
            ids = clefts[idx].astype(np.int64)
            d["cleft_sum"] = np.stack(
                [
                    np.bincount(ids, weights=idx[k] + off, minlength=n_syn + 1)
                    for k, off in enumerate((part.z0, part.y0, part.x0))
                ],
                axis=1,
            )
            d["cleft_n"] = np.bincount(ids, minlength=n_syn + 1)
        return d

    def merge(self, d: dict) -> None:
        for k, v in d["counts"].items():
            self.counts[k] += v
        for k, v in d["sums"].items():
            self.sums[k] += v
        self.present |= d["present"]
        if d["cleft_n"] is not None:
            self.cleft_sum += d["cleft_sum"]
            self.cleft_n += d["cleft_n"]


@dataclass
class _Context:
    """What the block and section jobs need; inherited by forked worker processes."""

    cfg: SynthConfig
    seed: int
    geom: Geometry
    world: VoxelBox
    plan: AcquisitionPlan
    levels: np.ndarray
    looks: tuple
    tiles_dir: Path


_CTX: _Context | None = None


def _block_job(core: VoxelBox):
    """Labels and image of one block: (core, image, truth part, truth arrays, statistics)."""
    c = _CTX
    assert c is not None  # set before the jobs run (forked workers inherit it)
    nz, h, w = c.cfg.shape_zyx
    block = compute_block(c.geom, grow(core, c.world))
    img, clean = render_block(block, core, c.geom, c.levels, c.looks, c.seed)
    part = core.intersect(VoxelBox(0, nz, 0, h, 0, w))
    if part is None:
        return core, img, None, None, None
    sb, sc = part.slices_in(block.box), part.slices_in(core)
    truth = {
        "raw": img[sc],
        "neurons": block.neurons()[sb],
        "vessels": block.vessels()[sb],
        "synapse_clefts": block.cleft[sb].astype(np.uint64),
    }
    sums = _Stats.of_block(
        part,
        truth["neurons"],
        truth["vessels"],
        truth["synapse_clefts"],
        block.mito[sb],
        img[sc],
        clean[sc],
        len(c.geom.synapses),
        len(c.geom.neuropil.neuron_kind) - 1,
    )
    return core, img, part, truth, sums


def _section_job(job):
    """Montage and tiles of one section: the manifest and truth rows of its tiles."""
    z, image = job
    c = _CTX
    sec = c.plan.sections[z]
    rows = []
    if not sec.missing:
        montage, origin = render_montage(sec, c.plan.grid, image, (c.world.y0, c.world.x0))
        for tile, timg in cut_tiles(sec, c.plan.grid, montage, origin):
            rel = writer.tile_relpath(z, tile.row, tile.col, c.cfg.tile_format)
            writer.write_tile(c.tiles_dir, rel, timg, c.cfg.tile_format)
            rows.append(
                (
                    (z, tile.row, tile.col, rel, tile.nominal_yx[1], tile.nominal_yx[0]),
                    (
                        z,
                        tile.row,
                        tile.col,
                        tile.true_yx[1],
                        tile.true_yx[0],
                        writer.fmt_float(tile.gain, 5),
                        writer.fmt_float(tile.offset, 3),
                    ),
                )
            )
    return rows


def _auto_workers(world: VoxelBox) -> int:
    """1 for small volumes; else one per core, at most 4, and ~1.5 GiB of free memory each."""
    if np.prod(world.shape) < 8e6:
        return 1
    try:
        import psutil

        by_memory = int(psutil.virtual_memory().available // (1.5 * 2**30))
    except Exception:  # psutil missing or failing: stay conservative
        by_memory = 1
    return max(1, min(os.cpu_count() or 1, 4, by_memory))


def generate(
    out,
    shape_zyx=None,
    seed: int = 0,
    preset: str = "small",
    preview: bool = False,
    progress: bool = False,
    workers: int | None = None,
    **overrides,
) -> Path:
    """Write a synthetic serial-section EM dataset with full ground truth to ``out``.

    ``overrides`` set :class:`~connectome.synth.presets.SynthConfig` fields (e.g.
    ``vessels=False``, ``noise_sigma=0.05``). ``workers``: processes for the blocks and
    sections (default: by volume size, cores and free memory); the output does not depend on
    it. Returns the output folder.
    """
    global _CTX
    from tqdm import tqdm

    out = Path(out)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserInputError(f"--seed: expected a non-negative integer, got {seed!r}")
    seed = int(seed)
    cfg = make_config(preset, shape_zyx, overrides)
    fingerprint = {"format": FORMAT, "seed": seed, "config": cfg.fingerprint_json()}
    if writer.prepare(out, fingerprint):
        log.info("synth: %s already holds this dataset (same parameters and seed)", out)
        if not (out / "truth" / "skeletons" / "info").is_file():  # made before true skeletons existed
            geom, _, _ = build_geometry(cfg, plan_acquisition(cfg, seed), seed)
            n = writer.write_truth_skeletons(
                out / "truth" / "skeletons",
                writer.truth_skeletons(geom.neuropil.tubes, cfg.shape_zyx, cfg.voxel_size_nm),
            )
            log.info("synth: added %d true skeletons to %s", n, out / "truth" / "skeletons")
        if preview and not (out / "preview.png").exists():
            from connectome.synth.preview import write_preview

            write_preview(out)
        return out

    t_start = time.perf_counter()
    plan = plan_acquisition(cfg, seed)
    geom, world, geo_stats = build_geometry(cfg, plan, seed)
    log.info("synth: geometry in %.1f s: %s", time.perf_counter() - t_start, geo_stats["neuropil"])
    nz = cfg.shape_zyx[0]
    looks = section_looks(nz, cfg, seed)
    _CTX = _Context(cfg, seed, geom, world, plan, neuron_levels(geom.neuropil.neuron_kind, seed), looks, out / "tiles")
    n_workers = _auto_workers(world) if workers is None else max(1, int(workers))
    # fork before zarr starts its I/O thread; workers never touch zarr
    pool = mp.get_context("fork").Pool(n_workers) if n_workers > 1 else None
    stats = _Stats(len(geom.synapses), len(geom.neuropil.neuron_kind) - 1)
    flow = FlowMeter()
    manifest, true_tiles = [], []
    try:
        imap = pool.imap if pool is not None else map
        arrays = writer.create_truth(out / "truth.zarr", cfg)
        cz = min(cfg.chunk_zyx[0], nz)
        slabs = [(z0, min(z0 + cz, nz)) for z0 in range(0, nz, cz)]
        n_blocks = sum(1 for _ in _blocks(world, 0, 1, cfg.block_xy_px)) * len(slabs)
        bar = tqdm(total=n_blocks + nz, disable=not progress, desc="synth", unit="step")
        truth_yx = (slice(-world.y0, cfg.shape_zyx[1] - world.y0), slice(-world.x0, cfg.shape_zyx[2] - world.x0))
        for z0, z1 in slabs:
            slab = np.zeros((z1 - z0, world.y1 - world.y0, world.x1 - world.x0), np.uint8)
            for core, img, part, truth, sums in imap(_block_job, list(_blocks(world, z0, z1, cfg.block_xy_px))):
                slab[:, core.y0 - world.y0 : core.y1 - world.y0, core.x0 - world.x0 : core.x1 - world.x0] = img
                if part is not None:
                    tz = (slice(part.z0, part.z1), slice(part.y0, part.y1), slice(part.x0, part.x1))
                    for name, data in truth.items():
                        arrays[name][tz] = data
                    stats.merge(sums)
                bar.update(1)
            for sec in slab[(slice(None), *truth_yx)]:  # the truth raw, section by section
                flow.add(sec)
            for rows in imap(_section_job, [(z, slab[z - z0]) for z in range(z0, z1)]):
                manifest += [r[0] for r in rows]
                true_tiles += [r[1] for r in rows]
                bar.update(1)
            del slab
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _CTX = None

    pairs: dict[tuple[int, int], list[float]]
    synapse_rows, pairs = [], {}
    for sid in np.nonzero(stats.cleft_n)[0]:
        zyx = np.rint(stats.cleft_sum[sid] / stats.cleft_n[sid]).astype(int)
        pre, post = int(geom.synapses.pre[sid - 1]), int(geom.synapses.post[sid - 1])
        synapse_rows.append((int(sid), *zyx, pre, post, "1.0"))
        pairs.setdefault((pre, post), []).append(1.0)
    connectivity = [(a, b, len(s), writer.fmt_float(np.mean(s))) for (a, b), s in sorted(pairs.items())]
    tiles_dir = out / "tiles"
    writer.write_csv(tiles_dir / "manifest.csv", ["section", "row", "col", "path", "x", "y"], manifest)
    writer.write_csv(out / "truth" / "tiles.csv", ["section", "row", "col", "x", "y", "gain", "offset"], true_tiles)
    writer.write_csv(
        out / "truth" / "synapses.csv",
        ["synapse_id", "z", "y", "x", "pre_segment_id", "post_segment_id", "score"],
        synapse_rows,
    )
    writer.write_csv(
        out / "truth" / "connectivity.csv",
        ["pre_segment_id", "post_segment_id", "synapse_count", "mean_score"],
        connectivity,
    )
    writer.write_json(out / "truth" / "sections.json", _sections_json(cfg, plan, looks))
    n_skel = writer.write_truth_skeletons(
        out / "truth" / "skeletons", writer.truth_skeletons(geom.neuropil.tubes, cfg.shape_zyx, cfg.voxel_size_nm)
    )
    log.info("synth: %d true skeletons in %s", n_skel, out / "truth" / "skeletons")
    writer.write_json(
        out / "synth.json",
        _synth_json(
            cfg, seed, fingerprint, plan, stats, geo_stats, len(synapse_rows), len(connectivity), flow.result()
        ),
    )
    if preview:
        from connectome.synth.preview import write_preview

        write_preview(out)
    writer.finish(out)
    log.info(
        "synth: wrote %s in %.1f s (%d worker%s)",
        out,
        time.perf_counter() - t_start,
        n_workers,
        "" if n_workers == 1 else "s",
    )
    return out


def _sections_json(cfg, plan, looks) -> dict:
    gain, offset = looks
    return {
        "convention": "m = A @ p + t + e(p): p = (y, x) pixel index in the aligned (truth) frame, m = (y, x) "
        "in the section's montage (stage) frame, where tile positions are given; affine = "
        "[[A00, A01, t0], [A10, A11, t1]]; e = elastic displacement (dy, dx) interpolated from a "
        "node grid (node (i, j) at origin_yx + spacing_px * (i, j)) with the given interpolation; "
        "section 0 is the identity.",
        "axis_order": "yx",
        "shape_zyx": list(cfg.shape_zyx),
        "tile_px": plan.grid.tile_px,
        "sections": [
            {
                "section": s.index,
                "missing": s.missing,
                "damaged": s.fold is not None,
                "damage": s.fold,
                "stage_origin_yx": list(s.stage_origin_yx),
                "transform": s.transform.to_json(),
                "intensity": {"gain": round(float(gain[s.index]), 5), "offset": round(float(offset[s.index]), 5)},
            }
            for s in plan.sections
        ],
    }


def _synth_json(cfg, seed, fingerprint, plan, stats: _Stats, geo_stats, n_syn, n_edges, content_flow) -> dict:
    v = np.asarray(cfg.voxel_size_nm, float)
    vol_um3 = float(np.prod(cfg.shape_zyx) * np.prod(v)) * 1e-9
    n, sm = stats.counts, stats.sums
    non_vessel = max(1, n["voxels"] - n["vessel"])
    sigma_gray = float(np.sqrt(sm["sq_noise"] / max(1, n["voxels"])))
    neuron_gray = sm["neuron_gray"] / max(1, n["neuron"])
    ecs_gray = sm["ecs_gray"] / max(1, n["ecs"])
    lo, hi = overlap_range(plan)
    return {
        "generator": "connectome synth",
        "format": FORMAT,
        "preset": cfg.preset,
        "seed": seed,
        "shape_zyx": list(cfg.shape_zyx),
        "voxel_size_nm": [float(x) for x in v],
        "parameters": cfg.to_json(),
        "fingerprint": writer._norm(fingerprint),
        "tiles": {
            "tile_px": plan.grid.tile_px,
            "step_px": plan.grid.step_px,
            "rows": plan.grid.rows,
            "cols": plan.grid.cols,
            "jitter_px": plan.grid.jitter_px,
            "nominal_overlap": round(plan.grid.overlap, 4),
            "true_overlap_range": [round(lo, 4), round(hi, 4)],
            "world_margin_lo_yx": list(plan.margin_lo_yx),
            "world_margin_hi_yx": list(plan.margin_hi_yx),
            "drift_bound_px": round(plan.drift_bound_px, 2),
            "missing_sections": [s.index for s in plan.sections if s.missing],
            "damaged_sections": [s.index for s in plan.sections if s.fold is not None],
        },
        "statistics": {
            "volume_um3": round(vol_um3, 4),
            "neuron_fraction_of_non_vessel": round(n["neuron"] / non_vessel, 4),
            "neuron_fraction": round(n["neuron"] / max(1, n["voxels"]), 4),
            "vessel_fraction": round(n["vessel"] / max(1, n["voxels"]), 4),
            "extracellular_fraction": round(n["ecs"] / max(1, n["voxels"]), 4),
            "mitochondria_fraction": round(n["mito"] / max(1, n["voxels"]), 4),
            "neurons_in_frame": int(np.count_nonzero(stats.present[1:])),
            "synapses": n_syn,
            "synapse_density_per_um3": round(n_syn / vol_um3, 4),
            "connections": n_edges,
            "noise_sigma_gray": round(sigma_gray, 3),
            "mean_gray_neuron": round(neuron_gray, 2),
            "mean_gray_extracellular": round(ecs_gray, 2),
            "membrane_contrast_to_noise": round((neuron_gray - ecs_gray) / max(1e-9, sigma_gray), 3),
            "content_flow": content_flow,
            **geo_stats,
        },
    }
