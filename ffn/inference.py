"""FFN inference on one subvolume: a Canvas that floods objects from seed points, and a batching
runner that evaluates the fields of view (FOVs) of several canvases in one forward pass.

Canvas (per subvolume; arrays z, y, x)::

    image   the model's image channels (float32, (z, y, x) or (z, y, x, C): standardised EM,
            boundary probability mapped to [-1, 1], in the model's ``channels`` order)
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
   The flood stops early when the seed voxel ``s`` itself falls below the segment threshold
   (the object would be rejected in step 3 anyway; google/ffn stops on a weak seed too);
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
    #: FOVs per forward pass (gathered from the concurrent floods of one or several canvases)
    batch_size: int = 16
    #: objects flooded side by side in one canvas (1 = the classic sequential FFN; see Canvas).
    #: More fills the batch, but floods that later meet in one object repeat work: on a 16 nm
    #: synth crop 8 took 1.7x the FOVs of 1 (same segmentation), so the default is sequential
    concurrent_objects: int = 1
    #: FOV movement step (z, y, x) at inference; (0, 0, 0) = the model's training deltas. Larger
    #: steps need fewer FOVs per object (the network then sees less of its own earlier output)
    deltas_zyx: tuple[int, int, int] = (0, 0, 0)
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
        if min(self.min_segment_voxels, self.batch_size, self.max_fovs_per_object, self.concurrent_objects) < 1:
            raise ValueError("min_segment_voxels, batch_size, max_fovs_per_object and concurrent_objects must be >= 1")


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
    return _distance_peaks(~edges, mask, voxel_nm, cfg)


def _distance_peaks(inside: np.ndarray, mask, voxel_nm, cfg: InferenceConfig) -> np.ndarray:
    """Local maxima (within ``seed_min_distance`` in y, x and one section in z) of the distance
    transform of ``inside`` (nm; masked voxels excluded) at least ``seed_min_radius_nm`` deep,
    in order of decreasing distance (ties by position)."""
    if mask is not None:
        inside = inside & ~np.asarray(mask, bool)
    dt = ndimage.distance_transform_edt(inside, sampling=tuple(float(v) for v in voxel_nm))
    md = max(1, int(cfg.seed_min_distance))
    footprint = np.ones((3, 2 * md + 1, 2 * md + 1), bool)
    peaks = (dt == ndimage.maximum_filter(dt, footprint=footprint, mode="nearest")) & (dt >= cfg.seed_min_radius_nm)
    pts = np.argwhere(peaks)
    if not len(pts):
        return pts.reshape(0, 3)
    order = np.lexsort((pts[:, 2], pts[:, 1], pts[:, 0], -dt[tuple(pts.T)]))
    return pts[order]


def boundary_seeds(
    boundary01: np.ndarray, mask: np.ndarray | None, voxel_nm, cfg: InferenceConfig, threshold: float = 0.5
) -> np.ndarray:
    """(n, 3) seed points from a boundary map in [0, 1] (models with a "boundary" channel): the
    peaks of the distance transform (nm, the voxel aspect ratio as sampling) of the voxels below
    ``threshold``, as :func:`peak_seeds` takes them (minimum distance, minimum radius, order)."""
    return _distance_peaks(np.asarray(boundary01) < threshold, mask, voxel_nm, cfg)


class _Flood:
    """One object being flooded: its lattice of FOV positions and its own logits array."""

    def __init__(self, s, origin, seed_arr: np.ndarray, k_lo, k_hi):
        self.s = s
        self.origin = np.asarray(origin)
        self.seed = seed_arr
        self.k_lo, self.k_hi = k_lo, k_hi
        self.queue, self.visited = deque([(0, 0, 0)]), {(0, 0, 0)}
        self.lo, self.hi = np.asarray(s), np.asarray(s) + 1
        self.n_fovs = 0
        self.truncated = False
        self.deferred: list = []  # seeds of cancelled floods, queued again after this commits
        self.k = None
        self.sl = None


class Canvas:
    """One subvolume being segmented (see the module doc).

    ``concurrent_objects`` floods run side by side (their FOVs batched into one forward pass);
    each has its own logits array. A seed starts a flood only when its voxel is unassigned, not
    tried, and farther than one FOV from every active flood's bounding box (seeds nearer wait);
    floods commit in the order they finish (ties: the order they started), so where two floods
    reached the same voxels the first to finish keeps them. A flood whose seed an earlier-started
    active flood has reached is cancelled (same object) and its seed queued again, so the work
    is not repeated. ``concurrent_objects=1`` is the
    classic sequential FFN. Results are deterministic for a given ``concurrent_objects``."""

    def __init__(self, image: np.ndarray, model: FFNModelConfig, cfg: InferenceConfig, mask: np.ndarray | None = None):
        self.image = np.asarray(image, np.float32)
        if self.image.ndim == 3:
            self.image = self.image[..., None]
        if self.image.shape[3] != len(model.channels):
            raise ValueError(
                f"the image has {self.image.shape[3]} channel(s), the model takes "
                f"{len(model.channels)} ({', '.join(model.channels)})"
            )
        self.shape = tuple(int(v) for v in self.image.shape[:3])
        if any(cfg.deltas_zyx):
            import dataclasses

            model = dataclasses.replace(model, deltas_zyx=tuple(int(v) for v in cfg.deltas_zyx))
        self.model, self.cfg = model, cfg
        if any(s < f for s, f in zip(self.shape, model.fov_zyx)):
            raise ValueError(f"volume {list(self.shape)} is smaller than the FOV {list(model.fov_zyx)}")
        self.seg = np.zeros(self.shape, np.int32)
        if mask is not None:
            self.seg[np.asarray(mask, bool)] = -1
        self.tried = np.zeros(self.shape, bool)
        self._free: list[np.ndarray] = []
        self.n_objects = 0
        self.n_fovs = 0
        self.n_rejected = 0
        self.n_truncated = 0
        self.n_cancelled = 0
        self._r = np.asarray(model.radius_zyx)
        self._hi = np.asarray(self.shape) - 1 - self._r

    def _clamp(self, p) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.clip(p, self._r, self._hi))

    def _fov(self, pos) -> tuple[slice, ...]:
        return tuple(slice(p - r, p + r + 1) for p, r in zip(pos, self._r))

    def _array(self) -> np.ndarray:
        return self._free.pop() if self._free else np.full(self.shape, np.nan, np.float32)

    def _start(self, s) -> _Flood:
        d = np.asarray(self.model.deltas_zyx)
        arr = self._array()
        arr[s] = logit(SEED_PROB)
        # the lattice runs through the first FOV centre: the seed clamped so the FOV fits
        origin = np.asarray(self._clamp(s))
        # positions are lattice indices k: the FOV centre is origin + k * delta, clamped inside;
        # at most one step past the valid range on each side (that step is clamped)
        k_lo = -((origin - self._r + d - 1) // d)
        k_hi = (self._hi - origin + d - 1) // d
        return _Flood(s, origin, arr, k_lo, k_hi)

    def _input(self, f: _Flood, pad: float) -> np.ndarray:
        f.k = f.queue.popleft()
        f.sl = self._fov(self._clamp(f.origin + np.asarray(f.k) * np.asarray(self.model.deltas_zyx)))
        seed_in = f.seed[f.sl]
        return np.concatenate([self.image[f.sl], np.where(np.isnan(seed_in), pad, seed_in)[..., None]], axis=-1)

    def _update(self, f: _Flood, logits: np.ndarray, t_move: float) -> None:
        d, sl = self.model.deltas_zyx, f.sl
        self.n_fovs += 1
        f.n_fovs += 1
        f.seed[sl] = logits
        f.lo = np.minimum(f.lo, [a.start for a in sl])
        f.hi = np.maximum(f.hi, [a.stop for a in sl])
        if f.n_fovs >= self.cfg.max_fovs_per_object:
            f.truncated = True
            f.queue.clear()
            return
        if f.seed[f.s] < self._t_seg:
            # the seed voxel itself fell below the segment threshold: the object would be
            # rejected at commit, so stop flooding now (google/ffn stops on a weak seed too)
            f.queue.clear()
            return
        for ax in range(3):
            for sg in (-1, 1):
                idx = [slice(None)] * 3
                idx[ax] = int(self._r[ax] + sg * d[ax])
                if logits[tuple(idx)].max() < t_move:
                    continue
                nk = list(f.k)
                nk[ax] += sg
                nk = tuple(nk)
                if f.k_lo[ax] <= nk[ax] <= f.k_hi[ax] and nk not in f.visited:
                    f.visited.add(nk)
                    f.queue.append(nk)

    def _commit(self, f: _Flood, t_seg: float) -> None:
        if f.truncated:
            self.n_truncated += 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(f.lo, f.hi))
        region = (f.seed[box] >= t_seg) & (self.seg[box] == 0)
        local = tuple(int(v - a) for v, a in zip(f.s, f.lo))
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
        f.seed[box] = np.nan
        self._free.append(f.seed)

    def run(self, seeds: np.ndarray, concurrent_objects: int | None = None) -> Iterator[np.ndarray]:
        """Generator: yields stacks of FOV inputs ``(n, z, y, x, C + 1)`` (one per active flood),
        receives their logits ``(n, z, y, x)``."""
        pad = logit(PAD_PROB)
        t_move, t_seg = logit(self.cfg.move_threshold), logit(self.cfg.segment_threshold)
        self._t_seg = t_seg
        n_conc = max(1, int(concurrent_objects or self.cfg.concurrent_objects))
        todo = list(map(tuple, np.asarray(seeds, int).reshape(-1, 3)))
        margin = tuple(int(v) for v in self.model.fov_zyx)
        active: list[_Flood] = []
        while True:
            # start floods (in seed order) from seeds outside every active flood's bounding box;
            # seeds inside one wait for it (it is probably flooding their object)
            i = 0
            while i < len(todo) and len(active) < n_conc:
                s = todo[i]
                if self.seg[s] != 0 or self.tried[s]:
                    del todo[i]
                elif any(all(lo - m <= v < hi + m for v, lo, hi, m in zip(s, f.lo, f.hi, margin)) for f in active):
                    i += 1
                else:
                    del todo[i]
                    active.append(self._start(s))
            if not active:
                return
            logits = yield np.stack([self._input(f, pad) for f in active])
            for f, lg in zip(active, logits):
                self._update(f, lg, t_move)
            # two floods that reached one another's seed are (or may merge into) one object: the
            # later-started one is cancelled and its seed waits until the earlier one commits
            keep: list[_Flood] = []
            for f in active:
                e = next((e for e in keep if e.seed[f.s] >= t_seg or f.seed[e.s] >= t_seg), None)
                if e is None:
                    keep.append(f)
                    continue
                f.seed[tuple(slice(int(a), int(b)) for a, b in zip(f.lo, f.hi))] = np.nan
                self._free.append(f.seed)
                e.deferred += [f.s] + f.deferred
                self.n_cancelled += 1
            active = []
            for f in keep:
                if f.queue:
                    active.append(f)
                else:
                    self._commit(f, t_seg)
                    todo[:0] = f.deferred


def run_canvases(
    jobs: list[tuple[Canvas, np.ndarray]],
    predict: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    max_fovs: int | None = None,
) -> bool:
    """Drive several canvases in lock step: each round takes the pending FOV stacks of the
    waiting canvases (whole stacks, up to ``batch_size`` FOVs unless one stack alone is larger)
    and evaluates them in forward passes of at most ``batch_size`` (``predict``:
    (n, z, y, x, C + 1) -> (n, z, y, x) logits). With ``max_fovs``, stop after that many FOVs (the
    objects being flooded then are left out); returns False if it stopped early."""
    waiting = deque()
    for canvas, seeds in jobs:
        gen = canvas.run(seeds)
        try:
            waiting.append((gen, next(gen)))
        except StopIteration:
            pass
    done = 0
    while waiting:
        pending = [waiting.popleft()]
        n = len(pending[0][1])
        while waiting and n + len(waiting[0][1]) <= batch_size:
            pending.append(waiting.popleft())
            n += len(pending[-1][1])
        x = np.concatenate([xs for _, xs in pending])
        out = np.concatenate([predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        at = 0
        for gen, xs in pending:
            try:
                waiting.append((gen, gen.send(out[at : at + len(xs)])))
            except StopIteration:
                pass
            at += len(xs)
        if progress is not None:
            progress(n)
        done += n
        if max_fovs is not None and done >= max_fovs and waiting:
            return False
    return True
