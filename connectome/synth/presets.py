"""The typed, frozen configuration of ``connectome synth`` and its three presets.

Every number that shapes the synthetic data lives in :class:`SynthConfig`, in physical units
where the real world has them (nm for lengths, um^-3 for densities) and in pixels only where
the acquisition hardware thinks in pixels (tile size, stage jitter, drift). The presets differ
only in volume size and in what scales with it (tile size, drift, elastic warp, block shape),
except ``fibres``, which is ``demo`` with oriented fibres (a known net content flow)::

    preset  shape (z, y, x)     tiles per section   what it is for
    small   16 x 256 x 256      2 x 2 of ~150 px    unit tests (a few seconds)
    demo    64 x 512 x 512      3 x 3 of ~200 px    `connectome demo` (<= 60 s on 2 cores)
    bench   256 x 2048 x 2048   4 x 4 of ~590 px    scaling runs (written in z-slabs)
    fibres  64 x 512 x 512      3 x 3 of ~200 px    demo + 70% of axons as oriented fibres whose
                                                    content flows ~(0, +0.8) px per section
    newbrain 64 x 512 x 512     3 x 3 of ~200 px    demo in a look the shipped models have not
                                                    seen (held out; see PRESETS["newbrain"])

Tuple fields can be given on the command line as ``--set fibre_flow_px=0.0,0.8`` (comma
separated) or as a YAML list ``--set fibre_flow_px=[0.0,0.8]``.

Defaults and their real-world references are given next to each field; the module docstrings
of :mod:`.neurites`, :mod:`.vessels`, :mod:`.synapses`, :mod:`.imaging` and
:mod:`.acquisition` say how each is used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from connectome.errors import UserInputError

#: Smallest tile the generator cuts (pixels); Y and X of the volume must be at least this.
MIN_TILE_PX = 64


@dataclass(frozen=True)
class SynthConfig:
    """All parameters of one synthetic dataset (frozen; build with :func:`make_config`)."""

    preset: str
    shape_zyx: tuple[int, int, int]
    #: Voxel size (z, y, x) in nm: 40 nm sections imaged at 8 nm/px, as in ssTEM/ATUM-SEM
    #: cortex data sets (CREMI 40x4x4, SNEMI3D 30x6x6, Kasthuri 2015 30x3x3 binned).
    voxel_size_nm: tuple[float, float, float] = (40.0, 8.0, 8.0)

    # ---- neuropil (see neurites.py) -------------------------------------------------------
    #: Axon radius: median and (min, max) in nm, before the dense fill widens profiles by
    #: ~20-40 nm. Thin unmyelinated cortical axons are 0.1-0.3 um in diameter (Shepherd &
    #: Harris 1998; Braitenberg & Schuez 1998).
    axon_radius_median_nm: float = 60.0
    axon_radius_range_nm: tuple[float, float] = (40.0, 150.0)
    #: Dendrite radius: 0.5-2 um diameter shafts (Harris & Kater 1994).
    dendrite_radius_median_nm: float = 380.0
    dendrite_radius_range_nm: tuple[float, float] = (250.0, 900.0)
    #: Volume fraction of dendrite shafts (+spines) and the total fraction covered by neurite
    #: bodies before the remaining gaps are filled; cortical neuropil is ~35% dendrites,
    #: ~45-60% axons, ~10% glia, ~5-10% ECS after fixation (Chklovskii et al. 2002).
    dendrite_fraction: float = 0.25
    body_coverage: float = 0.75
    #: Spines per um of dendrite (1-3 / um in cortex, Harris & Kater 1994).
    spine_density_per_um: float = 1.6
    #: Mitochondria: mean gap between them along a neurite (um) and their mean length (um).
    mito_gap_dendrite_um: float = 1.2
    mito_gap_axon_um: float = 4.0
    mito_length_um: float = 0.7
    #: Oriented fibres (neurites.py, "Oriented fibres"): the fraction (0..1) of the axon volume
    #: grown as fibres running around one common axis instead of isotropically. 0 (default):
    #: none, and the volume is exactly the one made without this option (no imposed net flow).
    fibre_fraction: float = 0.0
    #: The common axis, given as the in-plane motion (dy, dx) in px per section that it produces
    #: at ``voxel_size_nm``: content on the axis at (y, x) in section z is at (y + dy, x + dx) in
    #: z+1 (the sign convention of synth.json statistics.content_flow). (0, 0) = along z; at
    #: 40 x 8 x 8 nm, 0.8 px per section is a tilt of 9 degrees from z. Used when fibre_fraction > 0.
    fibre_flow_px: tuple[float, float] = (0.0, 0.0)
    #: Spread (sigma, degrees, per axis) of each fibre's own direction about the common axis.
    fibre_spread_deg: float = 4.0

    # ---- blood vessels (see vessels.py) ---------------------------------------------------
    vessels: bool = True
    #: Target volume fraction of vessels (lumen + wall); cortex: ~2-5% (Tsai et al. 2009).
    vessel_fraction: float = 0.05
    #: New-brain look (vessels.py; all off by default): the wall as a fraction of the outer
    #: radius, extra dark endothelial nuclei in the wall, pericytes on its outer side, and a
    #: glial (astrocytic end-foot) sheath of this width (nm) outside it.
    vessel_wall_fraction: float = 0.25
    endothelial_nuclei: int = 0
    pericytes: int = 0
    glial_sheath_nm: float = 0.0

    # ---- synapses (see synapses.py) -------------------------------------------------------
    #: ~1 synapse per um^3 in mammalian cortex neuropil (DeFelipe et al. 1999: 0.6-1.1).
    synapse_density_per_um3: float = 1.0

    # ---- image formation (see imaging.py) -------------------------------------------------
    #: Gaussian point spread of probe + detector, sigma in px (0.9 px = 17 nm FWHM at 8 nm/px).
    psf_sigma_px: float = 0.9
    #: Detector noise sigma at mid-gray, as a fraction of the 0..1 intensity range.
    noise_sigma: float = 0.13
    #: Per-section contrast (gain) and brightness (offset) drift, standard deviations.
    section_gain_sigma: float = 0.05
    section_offset_sigma: float = 0.03
    #: Gray level (0..1) of membranes and of mitochondria: the stain's membrane contrast and the
    #: look of organelles (imaging.py; cytoplasm is ~0.61-0.66). Changed only to make volumes whose
    #: imaging lies outside what a model was trained on.
    membrane_gray: float = 0.20
    mito_gray: float = 0.36
    #: New-brain look (imaging.py): membranes widened by this many px (0 = the 2 px line) and
    #: a gamma applied after the section staining (1 = none).
    membrane_extra_px: int = 0
    image_gamma: float = 1.0

    # ---- acquisition (see acquisition.py) -------------------------------------------------
    #: Target tile edge (px) and overlap fraction between neighbouring tiles (8-15% typical).
    tile_size_px: int = 150
    tile_overlap: float = 0.115
    #: Stage jitter bound (px); None = 1.2% of the tile edge, at least 1.
    stage_jitter_px: int | None = None
    #: Acquisition QC: a tile whose jitter would leave less than this overlap (px) with its
    #: left or upper neighbour is re-imaged closer to its nominal position (its jitter towards
    #: the gap is cut back), as acquisition software re-takes tiles that leave seams; 0 = off
    #: (large jitter on small overlaps then leaves gaps between tiles). Never active at the
    #: presets' jitter (1.2% of the tile edge) and overlap (11.5%).
    min_tile_overlap_px: int = 6
    #: Per-tile detector gain spread (multiplicative, sigma) and offset spread (gray levels).
    tile_gain_sigma: float = 0.025
    tile_offset_sigma: float = 2.0
    #: Vignetting of every tile: a radial multiplicative falloff ``1 - v * (r / r_corner)^2``
    #: about the tile centre (r_corner = half the tile diagonal), applied before the tile's gain
    #: and offset; 0 (default) = none, and the tiles are exactly those made without this option.
    tile_vignetting: float = 0.0
    #: Section-to-section drift: bounds of the accumulated translation (px), rotation (deg)
    #: and anisotropic scale/shear (fraction).
    drift_translation_px: float = 6.0
    drift_rotation_deg: float = 0.25
    drift_scale: float = 0.002
    #: Smooth elastic warp per section: amplitude (px, sigma of the node displacements) and
    #: the spacing of its coarse displacement grid (px).
    elastic_amplitude_px: float = 1.0
    elastic_spacing_px: int = 128
    #: How many sections have no tiles at all / carry a fold (0 by default for small).
    missing_sections: int = 0
    damaged_sections: int = 0

    # ---- blocks and storage ---------------------------------------------------------------
    #: Chunk shape of the truth arrays (z, y, x); clipped to the volume.
    chunk_zyx: tuple[int, int, int] = (32, 256, 256)
    #: Edge of the (y, x) blocks the volume is generated in (a multiple of the chunk edge).
    block_xy_px: int = 512
    #: Tile image format: "png" or "tif".
    tile_format: str = "png"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def fingerprint_json(self) -> dict[str, Any]:
        """:meth:`to_json` less the parameters that cannot change the data: those of an optional
        feature that is off (:data:`OFF_WHEN_ZERO`), so a default output made before the feature
        existed is still recognised as the same dataset."""
        d = self.to_json()
        for switch, fields in OFF_WHEN_ZERO.items():
            if not getattr(self, switch):
                for k in fields:
                    d.pop(k, None)
        for k, default in UNSEEN_WHEN_DEFAULT.items():
            if d.get(k) == default:
                d.pop(k, None)
        return d

    @property
    def jitter_px(self) -> int:
        if self.stage_jitter_px is not None:
            return int(self.stage_jitter_px)
        return max(1, int(round(0.012 * self.tile_size_px)))


#: Optional features added after the first format, by the field that switches each on (off at
#: 0): while it is 0 its fields are left out of the fingerprint (see SynthConfig.fingerprint_json).
OFF_WHEN_ZERO: dict[str, tuple[str, ...]] = {
    "fibre_fraction": ("fibre_fraction", "fibre_flow_px", "fibre_spread_deg"),
    "tile_vignetting": ("tile_vignetting",),
}

#: Fields added after the first format that change nothing at their default value: left out of
#: the fingerprint while at it (the new-brain look, issue 23).
UNSEEN_WHEN_DEFAULT: dict[str, Any] = {
    "vessel_wall_fraction": 0.25,
    "endothelial_nuclei": 0,
    "pericytes": 0,
    "glial_sheath_nm": 0.0,
    "membrane_extra_px": 0,
    "image_gamma": 1.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(
        shape_zyx=(16, 256, 256),
        tile_size_px=150,
        drift_translation_px=6.0,
        drift_rotation_deg=0.25,
        elastic_amplitude_px=1.0,
        elastic_spacing_px=128,
        chunk_zyx=(16, 128, 128),
        block_xy_px=512,
    ),
    "demo": dict(
        shape_zyx=(64, 512, 512),
        tile_size_px=210,
        drift_translation_px=10.0,
        drift_rotation_deg=0.3,
        elastic_amplitude_px=1.5,
        elastic_spacing_px=192,
        chunk_zyx=(32, 256, 256),
        block_xy_px=512,
    ),
    "bench": dict(
        shape_zyx=(256, 2048, 2048),
        tile_size_px=600,
        drift_translation_px=24.0,
        drift_rotation_deg=0.3,
        elastic_amplitude_px=3.0,
        elastic_spacing_px=512,
        chunk_zyx=(32, 256, 256),
        block_xy_px=512,
        missing_sections=1,
        damaged_sections=1,
    ),
}
PRESETS["fibres"] = dict(PRESETS["demo"], fibre_fraction=0.7, fibre_flow_px=(0.0, 0.8))
#: A brain the shipped models have not seen (issue 23): thicker vessel walls with dark
#: endothelial nuclei and pericytes, a light glial sheath around the vessel, thicker and
#: darker membranes, another gamma, contrast drift and more noise, ~2x the synapses. Held out:
#: the shipped models are never trained on it (it is for measuring and fine-tuning only).
PRESETS["newbrain"] = dict(
    PRESETS["demo"],
    vessel_fraction=0.07,
    vessel_wall_fraction=0.35,
    endothelial_nuclei=6,
    pericytes=3,
    glial_sheath_nm=120.0,
    membrane_extra_px=1,
    membrane_gray=0.14,
    image_gamma=1.35,
    noise_sigma=0.16,
    psf_sigma_px=1.1,
    section_gain_sigma=0.08,
    synapse_density_per_um3=2.0,
)
#: presets no shipped model may be trained on (connectome train refuses their folders where it checks)
HELD_OUT_PRESETS = ("newbrain",)


def make_config(
    preset: str = "small", shape_zyx: Sequence[int] | None = None, overrides: Mapping[str, Any] | None = None
) -> SynthConfig:
    """The preset's config with ``shape_zyx`` and field ``overrides`` applied and validated."""
    if preset not in PRESETS:
        raise UserInputError(f"--preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    values: dict[str, Any] = dict(PRESETS[preset])
    known = {f.name for f in dataclasses.fields(SynthConfig)} - {"preset"}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise UserInputError(f"synth: unknown parameter {key!r} (known: {', '.join(sorted(known))})")
        values[key] = _tuple_value(key, value)
    flow = values.get("fibre_flow_px")
    if isinstance(flow, tuple) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flow):
        values["fibre_flow_px"] = tuple(float(v) for v in flow)
    if shape_zyx is not None:
        values["shape_zyx"] = shape_zyx
    values["shape_zyx"] = _check_shape(values["shape_zyx"])
    cfg = SynthConfig(preset=preset, **values)
    _check(cfg)
    return cfg


_TUPLE_FIELDS = {f.name for f in dataclasses.fields(SynthConfig) if str(f.type).startswith("tuple")}


def _tuple_value(key: str, value: Any) -> Any:
    """Lists -> tuples; for tuple fields also "a,b,c" strings (``--set KEY=a,b`` reads as one)."""
    if key in _TUPLE_FIELDS and isinstance(value, str):
        try:
            value = [
                float(v) if any(c in v for c in ".eE") or v.strip().lower() in ("nan", "inf", "-inf") else int(v)
                for v in value.split(",")
            ]
        except ValueError:
            raise UserInputError(f"synth: {key} must be comma-separated numbers, got {value!r}") from None
    return tuple(value) if isinstance(value, list) else value


def _check_shape(shape: Sequence[Any]) -> tuple[int, int, int]:
    try:
        shape_t = tuple(int(s) for s in shape)
        ok = len(shape_t) == 3 and all(float(s) == int(s) for s in shape)
    except (TypeError, ValueError):
        ok, shape_t = False, ()
    if not ok:
        raise UserInputError(f"--shape: expected three integers Z,Y,X, got {shape!r}")
    if any(s <= 0 for s in shape_t):
        raise UserInputError(f"--shape: values must be positive, got {list(shape_t)}")
    z, y, x = shape_t
    if y < MIN_TILE_PX or x < MIN_TILE_PX:
        raise UserInputError(
            f"--shape: Y and X must be at least {MIN_TILE_PX} px so that one "
            f"{MIN_TILE_PX} x {MIN_TILE_PX} px tile fits, got {list(shape_t)} (Z,Y,X)"
        )
    return z, y, x


def _check(cfg: SynthConfig) -> None:
    def bad(name: str, expected: str) -> None:
        raise UserInputError(f"synth: {name} must be {expected}, got {getattr(cfg, name)!r}")

    if len(cfg.voxel_size_nm) != 3 or any(not v > 0 for v in cfg.voxel_size_nm):
        bad("voxel_size_nm", "three positive numbers (z, y, x) in nm")
    if not 0.0 <= cfg.vessel_fraction < 0.5:
        bad("vessel_fraction", "in [0, 0.5)")
    if not 0.0 <= cfg.synapse_density_per_um3 <= 20:
        bad("synapse_density_per_um3", "in [0, 20]")
    if not 0.02 <= cfg.tile_overlap <= 0.5:
        bad("tile_overlap", "in [0.02, 0.5]")
    if cfg.tile_size_px < MIN_TILE_PX:
        bad("tile_size_px", f">= {MIN_TILE_PX}")
    if cfg.noise_sigma < 0 or cfg.psf_sigma_px < 0:
        bad("noise_sigma", ">= 0")
    if not (0.0 <= cfg.membrane_gray <= 1.0 and 0.0 <= cfg.mito_gray <= 1.0):
        bad("membrane_gray", "in [0, 1] (and so must mito_gray)")
    if cfg.tile_format not in ("png", "tif"):
        bad("tile_format", "'png' or 'tif'")
    if cfg.block_xy_px <= 0 or any(c <= 0 for c in cfg.chunk_zyx) or cfg.block_xy_px % min(cfg.chunk_zyx[1:]) != 0:
        bad("block_xy_px", "a positive multiple of the chunk (y, x) edge")
    if not (isinstance(cfg.fibre_fraction, (int, float)) and 0.0 <= cfg.fibre_fraction <= 1.0):
        bad("fibre_fraction", "in [0, 1]")
    flow = cfg.fibre_flow_px
    if (
        not isinstance(flow, tuple)
        or len(flow) != 2
        or not all(isinstance(v, (int, float)) for v in flow)
        or not all(abs(v) <= 100 for v in flow)
    ):
        bad("fibre_flow_px", "two numbers (dy, dx) px per section, each within +-100")
    if not (isinstance(cfg.fibre_spread_deg, (int, float)) and 0.0 <= cfg.fibre_spread_deg <= 90.0):
        bad("fibre_spread_deg", "in [0, 90]")
    if not 0.05 <= cfg.vessel_wall_fraction <= 0.6:
        bad("vessel_wall_fraction", "in [0.05, 0.6]")
    for name in ("endothelial_nuclei", "pericytes", "membrane_extra_px"):
        v = getattr(cfg, name)
        if not (
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= (4 if name == "membrane_extra_px" else 200)
        ):
            bad(name, "an integer in [0, 4]" if name == "membrane_extra_px" else "an integer in [0, 200]")
    if not (isinstance(cfg.glial_sheath_nm, (int, float)) and 0.0 <= cfg.glial_sheath_nm <= 1000.0):
        bad("glial_sheath_nm", "in [0, 1000] nm")
    if not (isinstance(cfg.image_gamma, (int, float)) and 0.2 <= cfg.image_gamma <= 5.0):
        bad("image_gamma", "in [0.2, 5]")
    if cfg.missing_sections < 0 or cfg.damaged_sections < 0:
        bad("missing_sections", ">= 0")
    if cfg.missing_sections + cfg.damaged_sections > max(0, cfg.shape_zyx[0] - 1):
        raise UserInputError(
            f"synth: {cfg.missing_sections} missing + {cfg.damaged_sections} damaged sections "
            f"do not fit in {cfg.shape_zyx[0]} sections (section 0 is always intact)"
        )
