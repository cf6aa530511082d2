"""FFN inference on one subvolume: a Canvas that floods objects from seed points, and a batching
runner that evaluates the fields of view (FOVs) of several canvases in one forward pass.

Canvas (per subvolume; arrays z, y, x)::

    image   standardised EM (float32)
    seg     int32 object ids: 0 unassigned, > 0 an object, -1 masked (never claimed)
    seed    float32 logits of the object being flooded, NaN where not yet visited

One object from a seed point ``s`` (skipped if ``seg[s] != 0``):

1. ``seed[s] = logit(0.95)``; positions to visit: ``[s]`` (clamped so the FOV stays inside);
2. for each position in turn (breadth first): the FOV of ``[image, seed]`` (NaN read as
   ``logit(0.05)``) goes through the network and its output logits replace ``seed`` in the FOV;
   for each of the 6 faces of the FOV at ``+/- delta`` from its centre whose largest probability
   is >= ``move_threshold``, the position ``+/- delta`` along that axis is queued (the delta
   grid through ``s``; a step past the volume's valid range is clamped inside, no further;
   skipped if visited; at most ``max_fovs_per_object`` FOVs per object). Unlike google/ffn, a
   position whose centre voxel already belongs to another object is still visited: the face
   rule alone decides, so an object is not cut off behind a neighbour's boundary voxels (the
   network's low probability inside other objects stops the flood there);
3. the object is the connected component containing ``s`` of ``seed >= logit(segment_threshold)``
   restricted to unassigned voxels; it gets the next id if it has >= ``min_segment_voxels``
   voxels, else its voxels are marked as tried (no later seed starts there);
4. ``seed`` is reset to NaN over the region touched.

Seeds ("peaks" policy): the gradient magnitude of the smoothed image above a blurred copy of
itself marks boundaries; the Euclidean distance transform of the non-boundary voxels (with the
voxel aspect ratio as sampling) has local maxima at the centres of cell profiles; they are
taken in order of decreasing distance (ties by position), masked voxels excluded. Other
policies plug in as any function ``image, mask -> (n, 3) points``.

Everything is deterministic: fixed seed order, breadth-first visits, no randomness.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage

from ffn.model import PAD_PROB, SEED_PROB, FFNModelConfig, logit


@dataclass(frozen=True)
class InferenceConfig:
    #: queue a move when the face's largest probability reaches this
    move_threshold: float = 0.9
    #: voxels with probability >= this form the object
    segment_threshold: float = 0.6
    #: objects smaller than this (voxels) are rejected
    min_segment_voxels: int = 1000
    #: FOVs per forward pass (gathered from several canvases)
    batch_size: int = 16
    #: stop flooding one object after this many FOVs (a safety net against runaway floods)
    max_fovs_per_object: int = 4000
    #: seed policy: Gaussian sigma (voxels, z y x) before the gradient, boundary blur sigma
    #: (voxels) of the adaptive threshold, minimum distance between peaks (voxels, y x)
    seed_smooth_sigma_zyx: tuple[float, float, float] = (0.0, 1.0, 1.0)
    seed_threshold_sigma: float = 8.0
    seed_min_distance: int = 3
    #: smallest distance-transform value (nm) at a seed
    seed_min_radius_nm: float = 24.0

    def __post_init__(self):
        for k in ("move_threshold", "segment_threshold"):
            v = getattr(self, k)
            if not 0 < v < 1:
                raise ValueError(f"{k} must be in (0, 1), got {v}")
        if self.min_segment_voxels < 1 or self.batch_size < 1 or self.max_fovs_per_object < 1:
            raise ValueError("min_segment_voxels, batch_size and max_fovs_per_object must be >= 1")


def peak_seeds(image: np.ndarray, mask: np.ndarray | None, voxel_nm, cfg: InferenceConfig) -> np.ndarray:
    """(n, 3) seed points: distance-transform peaks of the non-boundary voxels (see module doc)."""
    img = ndimage.gaussian_filter(np.asarray(image, np.float32), cfg.seed_smooth_sigma_zyx)
    grad = np.zeros_like(img)
    for z in range(img.shape[0]):  # in-plane gradient: sections are anisotropic
        grad[z] = ndimage.gaussian_gradient_magnitude(img[z], 1.0)
    thresh = ndimage.gaussian_filter(grad, (0.0, cfg.seed_threshold_sigma, cfg.seed_threshold_sigma))
    edges = grad > thresh
    # membranes are dark: dark voxels are boundary too
    edges |= img < ndimage.gaussian_filter(img, (0.0, cfg.seed_threshold_sigma, cfg.seed_threshold_sigma)) - img.std()
    inside = ~edges
    if mask is not None:
        inside &= ~np.asarray(mask, bool)
    dt = ndimage.distance_transform_edt(inside, sampling=tuple(float(v) for v in voxel_nm))
    md = max(1, int(cfg.seed_min_distance))
    footprint = np.ones((3, 2 * md + 1, 2 * md + 1), bool)
    peaks = (dt == ndimage.maximum_filter(dt, footprint=footprint, mode="nearest")) & (dt >= cfg.seed_min_radius_nm)
    pts = np.argwhere(peaks)
    if not len(pts):
        return pts.reshape(0, 3)
    order = np.lexsort((pts[:, 2], pts[:, 1], pts[:, 0], -dt[tuple(pts.T)]))
    return pts[order]


class Canvas:
    """One subvolume being segmented (see the module doc)."""

    def __init__(self, image: np.ndarray, model: FFNModelConfig, cfg: InferenceConfig,
                 mask: np.ndarray | None = None):
        self.image = np.asarray(image, np.float32)
        self.model, self.cfg = model, cfg
        if any(s < f for s, f in zip(self.image.shape, model.fov_zyx)):
            raise ValueError(f"volume {list(self.image.shape)} is smaller than the FOV {list(model.fov_zyx)}")
        self.seg = np.zeros(self.image.shape, np.int32)
        if mask is not None:
            self.seg[np.asarray(mask, bool)] = -1
        self.tried = np.zeros(self.image.shape, bool)
        self.seed = np.full(self.image.shape, np.nan, np.float32)
        self.n_objects = 0
        self.n_fovs = 0
        self.n_rejected = 0
        self.n_truncated = 0
        self._r = np.asarray(model.radius_zyx)
        self._hi = np.asarray(self.image.shape) - 1 - self._r

    def _clamp(self, p) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.clip(p, self._r, self._hi))

    def _fov(self, pos) -> tuple[slice, ...]:
        return tuple(slice(p - r, p + r + 1) for p, r in zip(pos, self._r))

    def run(self, seeds: np.ndarray) -> Iterator[np.ndarray]:
        """Generator: yields FOV inputs ``(z, y, x, 2)``, receives their logits ``(z, y, x)``."""
        pad = logit(PAD_PROB)
        t_move, t_seg = logit(self.cfg.move_threshold), logit(self.cfg.segment_threshold)
        d = np.asarray(self.model.deltas_zyx)
        for s in map(tuple, np.asarray(seeds, int).reshape(-1, 3)):
            if self.seg[s] != 0 or self.tried[s]:
                continue
            self.seed[s] = logit(SEED_PROB)
            lo = np.asarray(s)
            hi = np.asarray(s) + 1
            origin = np.asarray(s)
            # positions are lattice indices k: the FOV centre is origin + k * delta, clamped inside;
            # at most one step past the valid range on each side (that step is clamped)
            k_lo = -((origin - self._r + d - 1) // d)
            k_hi = (self._hi - origin + d - 1) // d
            queue, visited = deque([(0, 0, 0)]), {(0, 0, 0)}
            n_fovs = 0
            while queue:
                k = queue.popleft()
                pos = self._clamp(origin + np.asarray(k) * d)
                sl = self._fov(pos)
                seed_in = self.seed[sl]
                x = np.stack([self.image[sl], np.where(np.isnan(seed_in), pad, seed_in)], axis=-1)
                logits = yield x
                self.n_fovs += 1
                n_fovs += 1
                self.seed[sl] = logits
                lo = np.minimum(lo, [a.start for a in sl])
                hi = np.maximum(hi, [a.stop for a in sl])
                if n_fovs >= self.cfg.max_fovs_per_object:
                    self.n_truncated += 1
                    break
                for ax in range(3):
                    for sg in (-1, 1):
                        idx = [slice(None)] * 3
                        idx[ax] = int(self._r[ax] + sg * d[ax])
                        if logits[tuple(idx)].max() < t_move:
                            continue
                        nk = list(k)
                        nk[ax] += sg
                        nk = tuple(nk)
                        if k_lo[ax] <= nk[ax] <= k_hi[ax] and nk not in visited:
                            visited.add(nk)
                            queue.append(nk)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            region = (self.seed[box] >= t_seg) & (self.seg[box] == 0)
            local = tuple(int(v - a) for v, a in zip(s, lo))
            if region[local]:
                cc, _ = ndimage.label(region)
                obj = cc == cc[local]
            else:
                obj = np.zeros_like(region)
                obj[local] = True
            if region[local] and obj.sum() >= self.cfg.min_segment_voxels:
                self.n_objects += 1
                self.seg[box][obj] = self.n_objects
            else:
                self.n_rejected += 1
                self.tried[box] |= obj
            self.seed[box] = np.nan


def run_canvases(jobs: list[tuple[Canvas, np.ndarray]], predict: Callable[[np.ndarray], np.ndarray],
                 batch_size: int, progress: Callable[[int], None] | None = None) -> None:
    """Drive several canvases in lock step: each round gathers the next FOV of up to
    ``batch_size`` canvases and evaluates them in one forward pass (``predict``: (n, z, y, x, 2)
    -> (n, z, y, x) logits)."""
    pending: list[tuple[Iterator, np.ndarray]] = []
    waiting = deque()
    for canvas, seeds in jobs:
        gen = canvas.run(seeds)
        try:
            waiting.append((gen, next(gen)))
        except StopIteration:
            pass
    while waiting:
        pending = [waiting.popleft() for _ in range(min(batch_size, len(waiting)))]
        out = predict(np.stack([x for _, x in pending]))
        for (gen, _), lg in zip(pending, out):
            try:
                waiting.append((gen, gen.send(lg)))
            except StopIteration:
                pass
        if progress is not None:
            progress(len(pending))
