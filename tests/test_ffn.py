"""FFN model, training examples and FOV-movement training (issue 6, first part): the reference
model's size, object fractions against brute force, balanced partitions, face-max movement, a
short training run that learns, and an exact resume of the stateful FOV-movement job."""

from __future__ import annotations

import numpy as np
import pytest

from ffn.data import THRESHOLDS, CentreSampler, augment, object_fractions, partition_of
from ffn.model import COMPACT, REFERENCE, FFNModelConfig, logit
from ffn.train import FFNExampleConfig, accepted_moves


def test_model_sizes_and_config_checks():
    assert REFERENCE.n_parameters() == 638_433  # google/ffn's reference size (depth 12, 32 features)
    assert (REFERENCE.fov_zyx, REFERENCE.deltas_zyx) == ((17, 33, 33), (4, 8, 8))
    assert REFERENCE.example_zyx == (25, 49, 49)
    assert COMPACT.n_parameters() < REFERENCE.n_parameters() / 5
    for bad in (dict(fov_zyx=(16, 33, 33)), dict(deltas_zyx=(9, 8, 8)), dict(depth=0), dict(deltas_zyx=(0, 8, 8))):
        with pytest.raises(ValueError):
            FFNModelConfig(**bad)
    with pytest.raises(ValueError, match="move_threshold"):
        FFNExampleConfig(move_threshold=1.0)


def test_keras_model_matches_the_config():
    tf = pytest.importorskip("tensorflow")
    from ffn.model import build_model

    cfg = FFNModelConfig(depth=3, features=8, fov_zyx=(5, 9, 9), deltas_zyx=(1, 2, 2))
    m = build_model(cfg)
    assert m.count_params() == cfg.n_parameters()
    x = np.zeros((2, 5, 9, 9, 2), np.float32)
    x[..., 1] = 3.0
    out = m(tf.convert_to_tensor(x)).numpy()
    assert out.shape == (2, 5, 9, 9, 1)
    # the output is seed + update: with all-zero conv weights it is exactly the seed
    for w in m.weights:
        w.assign(np.zeros(w.shape, np.float32))
    np.testing.assert_array_equal(m(tf.convert_to_tensor(x)).numpy()[..., 0], x[..., 1])


def test_object_fractions_equal_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (7, 12, 11)).astype(np.uint64)
    labels[1:6, 2:10, 1:9] = 9  # one big object (the others are scattered and smaller)
    r = (1, 2, 3)
    got = object_fractions(labels, r)
    want = np.full(labels.shape, -1.0)
    for z, y, x in np.ndindex(labels.shape):
        if labels[z, y, x] == 0:
            continue
        box = labels[max(z - r[0], 0) : z + r[0] + 1, max(y - r[1], 0) : y + r[1] + 1, max(x - r[2], 0) : x + r[2] + 1]
        want[z, y, x] = np.mean(box == labels[z, y, x])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # exclusions: small objects and masked voxels
    biggest_other = max(int((labels == k).sum()) for k in (1, 2, 3))
    assert biggest_other < (labels == 9).sum()
    small = object_fractions(labels, r, min_object_voxels=biggest_other + 1)
    assert (small[labels != 9] == -1).all() and (small[labels == 9] > 0).all()
    masked = object_fractions(labels, r, mask=labels == 9)
    assert (masked[labels == 9] == -1).all()
    assert partition_of(np.array([-1.0, 0.0, 0.03, 0.95, 1.0])).tolist() == [-1, 0, 1, len(THRESHOLDS), len(THRESHOLDS)]


def test_sampler_balances_partitions_and_keeps_boxes_inside():
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 60, 60), np.uint32)
    labels[:, :, :30] = 1  # a big object
    labels[:, 28:31, 30:] = 2  # a thin one
    labels[:, 40:50, 40:50] = 3
    s = CentreSampler.from_labels(labels, (2, 5, 5), (7, 15, 15), max_per_partition=500, seed=1)
    parts = [k for k, c in enumerate(s.counts) if c]
    assert len(parts) >= 4
    drawn = [s.draw(rng) for _ in range(3000)]
    for c in drawn:
        assert (c >= (3, 7, 7)).all() and (c < (17, 53, 53)).all()
    # equal frequency per non-empty partition (not per voxel)
    frac = object_fractions(labels, (2, 5, 5))
    hist = np.bincount([partition_of(frac[tuple(c)]) for c in drawn], minlength=len(THRESHOLDS) + 1)[parts]
    assert hist.min() > 0.6 * hist.mean() and hist.max() < 1.4 * hist.mean()


def test_augment_applies_one_transform_to_all_arrays():
    a = np.arange(3 * 5 * 5).reshape(3, 5, 5)
    for seed in range(8):
        x, y = augment([a, a * 10], np.random.default_rng(seed), transpose_xy=True)
        np.testing.assert_array_equal(y, x * 10)
        assert sorted(x.ravel()) == sorted(a.ravel())


def test_face_max_movement():
    cfg = FFNModelConfig(depth=1, features=1, fov_zyx=(5, 9, 9), deltas_zyx=(1, 2, 2))
    lg = np.full((5, 9, 9), logit(0.05), np.float32)
    lg[2, 4, 6] = logit(0.95)  # on the +x face (x = 4 + 2)
    lg[3, 1, 1] = logit(0.95)  # on the +z face (z = 2 + 1)
    lg[2, 6, 4] = logit(0.85)  # +y face, below the threshold
    assert sorted(accepted_moves(lg, (10, 20, 30), cfg, 0.9)) == [(10, 20, 32), (11, 20, 30)]


# ---------------------------------------------------------------------------------------------
# training with FOV movement

TINY = FFNModelConfig(depth=2, features=8, fov_zyx=(7, 13, 13), deltas_zyx=(2, 3, 3))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from connectome.synth import generate
    from ffn.train import load_training_volume

    root = tmp_path_factory.mktemp("ffn")
    ex = FFNExampleConfig(
        min_object_voxels=300,
        val_episodes_per_volume=6,
        val_segment_zyx=(8, 48, 48),
        val_segment_max_fovs=1500,
        val_min_segment_voxels=50,
    )
    train = load_training_volume(generate(root / "a", preset="small", seed=401), TINY, ex)
    val = load_training_volume(generate(root / "b", preset="small", seed=402), TINY, ex)
    return ex, train, val


def _train(volumes, work, steps, seed=1):
    from connectome.training import TrainerConfig
    from connectome.training.distributed import Session
    from connectome.training.loop import run_training
    from ffn.train import FFNJob

    ex, train, val = volumes
    cfg = TrainerConfig(
        steps=steps,
        batch_size=4,
        learning_rate=2e-3,
        warmup_steps=5,
        checkpoint_every=20,
        lr_decay="constant",
        validate_every=40,
        log_every=10,
        seed=seed,
        grad_clip_norm=1.0,
        intra_op_threads=1,
        inter_op_threads=1,
    )
    job = FFNJob(TINY, ex, [train], [val], seed=seed, reset_every=cfg.checkpoint_every, fingerprint={"t": "tiny"})
    return run_training(job, cfg, work, Session()), job


def test_fov_movement_training_learns_and_moves(volumes, tmp_path, monkeypatch):
    import json

    from ffn.train import FFNJob

    moved = []  # per training step: how many slots are on a FOV past their episode's centre one
    real_batch = FFNJob.batch

    def batch(self, step, rank, size, batch_size):
        out = real_batch(self, step, rank, size, batch_size)
        moved.append(sum(slot.round > 0 for slot in self._slots))
        return out

    monkeypatch.setattr(FFNJob, "batch", batch)
    res, job = _train(volumes, tmp_path / "w", 80)
    events = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0]
    val = [e for e in events if e["event"] == "validate"]
    assert [e["step"] for e in val] == [0, 40, 80]
    assert val[-1]["f1"] > val[0]["f1"]  # learned to fill objects
    # segmentation metrics of the held-out crop are logged and choose the checkpoint
    assert all(0 <= e["arand"] <= 1 and e["voi_split"] >= 0 and "seg_score" in e for e in val)
    assert job.score_key == "seg_score"
    # the slots moved: some episodes went past their centre FOV
    assert len(moved) == 80 and sum(moved) > 0, moved
    ex, train, _ = volumes
    x, _ = job.batch(80, 0, 1, 4)
    assert x.shape == (4, 7, 13, 13, 2)


def test_resume_of_the_stateful_job_is_exact(volumes, tmp_path):
    from connectome.training import weights as wio

    _train(volumes, tmp_path / "full", 40)
    _train(volumes, tmp_path / "part", 20)  # stops at a checkpoint (a kill would too)
    res, _ = _train(volumes, tmp_path / "part", 40)
    assert res.start_step == 20
    a = wio.load_npz(tmp_path / "full" / "last_weights.npz")
    b = wio.load_npz(tmp_path / "part" / "last_weights.npz")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# inference: the canvas with an oracle network reproduces a known segmentation


def _voronoi(shape, n, seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n, 3)) * np.asarray(shape) * np.array([5.0, 1.0, 1.0])  # anisotropic cells
    zz, yy, xx = np.meshgrid(*(np.arange(s, dtype=float) for s in shape), indexing="ij")
    d = (zz[..., None] * 5 - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2 + (xx[..., None] - pts[:, 2]) ** 2
    return (d.argmin(-1) + 1).astype(np.int32)


def oracle(x: np.ndarray) -> np.ndarray:
    """A perfect network for images whose voxel values are object ids: the object is the id most
    common under the seed's positive logits; it predicts +6 on it and -6 elsewhere."""
    out = np.empty(x.shape[:-1], np.float32)
    for i, fov in enumerate(x):
        ids = fov[..., 0][fov[..., 1] > 0].astype(int)
        obj = np.bincount(ids).argmax()
        out[i] = np.where(fov[..., 0] == obj, 6.0, -6.0)
    return out


def test_canvas_with_an_oracle_reproduces_the_objects():
    from connectome.evaluate.segmentation import Contingency, adapted_rand
    from ffn.inference import Canvas, InferenceConfig, run_canvases

    model = FFNModelConfig(depth=1, features=1, fov_zyx=(5, 9, 9), deltas_zyx=(2, 3, 3))
    labels = _voronoi((12, 40, 40), 12, seed=5)
    cfg = InferenceConfig(min_segment_voxels=20, batch_size=4)
    # seeds: one interior point per object (the oracle needs no image-based policy)
    seeds = np.array([np.argwhere(ndi_erode(labels == k))[0] for k in range(1, 13) if ndi_erode(labels == k).any()])
    canvases = [Canvas(labels.astype(np.float32), model, cfg) for _ in range(2)]
    run_canvases([(canvases[0], seeds), (canvases[1], seeds[::-1])], oracle, batch_size=cfg.batch_size)
    for c in canvases:
        assert c.n_objects == len(seeds) and (c.seg > 0).all()
        err = adapted_rand(Contingency.from_labels(labels.astype(np.uint64), c.seg.astype(np.uint64)))[0]
        assert err < 1e-9
    # masked voxels are never claimed
    mask = np.zeros(labels.shape, bool)
    mask[:, :10] = True
    c = Canvas(labels.astype(np.float32), model, cfg, mask=mask)
    seeds = np.array(
        [
            np.argwhere(ndi_erode((labels == k) & ~mask))[0]
            for k in range(1, 13)
            if ndi_erode((labels == k) & ~mask).any()
        ]
    )
    run_canvases([(c, seeds)], oracle, batch_size=2)
    assert (c.seg[mask] == -1).all() and (c.seg[~mask] > 0).all()


def test_concurrent_floods_match_the_sequential_canvas_in_fewer_passes():
    from ffn.inference import Canvas, InferenceConfig, run_canvases

    model = FFNModelConfig(depth=1, features=1, fov_zyx=(5, 9, 9), deltas_zyx=(2, 3, 3))
    labels = _voronoi((12, 40, 40), 12, seed=7)
    seeds = np.array([np.argwhere(ndi_erode(labels == k))[0] for k in range(1, 13) if ndi_erode(labels == k).any()])
    results, passes = {}, {}
    for conc in (1, 6):
        cfg = InferenceConfig(min_segment_voxels=20, batch_size=8, concurrent_objects=conc)
        calls: list[int] = []

        def counted(x, calls=calls):  # called within this iteration only
            calls.append(len(x))
            return oracle(x)

        c = Canvas(labels.astype(np.float32), model, cfg)
        run_canvases([(c, seeds)], counted, batch_size=cfg.batch_size)
        results[conc], passes[conc] = c.seg.copy(), len(calls)
        assert max(calls) <= cfg.batch_size
    # the oracle's objects are disjoint, so the order of commits cannot change them
    from connectome.evaluate.segmentation import Contingency, adapted_rand

    assert adapted_rand(Contingency.from_labels(results[1].astype(np.uint64), results[6].astype(np.uint64)))[0] < 1e-9
    assert passes[6] < passes[1] / 2


def ndi_erode(m):
    from scipy import ndimage

    return ndimage.binary_erosion(m, iterations=1)


def test_canvas_rejects_small_objects_and_moves_through_big_ones():
    from ffn.inference import Canvas, InferenceConfig, run_canvases

    model = FFNModelConfig(depth=1, features=1, fov_zyx=(5, 9, 9), deltas_zyx=(2, 3, 3))
    labels = np.ones((10, 30, 60), np.int32)
    labels[:, :, 30:] = 2
    labels[4:6, 10:13, 40:43] = 3  # 18 voxels: too small
    cfg = InferenceConfig(min_segment_voxels=50)
    c = Canvas(labels.astype(np.float32), model, cfg)
    run_canvases([(c, np.array([[5, 15, 10], [5, 11, 41], [5, 15, 50]]))], oracle, batch_size=3)
    assert c.n_objects == 2 and c.n_rejected == 1
    assert (c.seg[labels == 3] == 0).all()
    assert c.n_fovs > 10  # it moved across the 30 x 60 section
    assert np.array_equal(c.seg[labels == 1] > 0, np.ones((labels == 1).sum(), bool))


def test_peak_seeds_hit_every_object_and_avoid_boundaries(volumes):
    from ffn.inference import InferenceConfig, peak_seeds

    _, train, _ = volumes
    pts = peak_seeds(train.image, None, (40, 8, 8), InferenceConfig())
    lab = train.labels
    ids, cnt = np.unique(lab, return_counts=True)
    big = set(ids[(cnt >= 1000) & (ids > 0)].tolist())
    hit = set(lab[tuple(pts.T)].tolist())
    assert len(big & hit) >= 0.95 * len(big)
    boundary = np.zeros(lab.shape, bool)
    for ax in (1, 2):
        d = np.diff(lab, axis=ax) != 0
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        boundary[tuple(lo)] |= d
        boundary[tuple(hi)] |= d
    assert boundary[tuple(pts.T)].mean() < 0.05
    # deterministic
    np.testing.assert_array_equal(pts, peak_seeds(train.image, None, (40, 8, 8), InferenceConfig()))


def test_bfloat16_inference_close_to_float32():
    tf = pytest.importorskip("tensorflow")
    from ffn.model import build_model

    cfg = FFNModelConfig(depth=2, features=8, fov_zyx=(5, 9, 9), deltas_zyx=(1, 2, 2))
    m32, m16 = build_model(cfg), build_model(cfg, precision="bfloat16")
    m16.set_weights(m32.get_weights())
    x = tf.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 5, 9, 9, 2)).astype(np.float32))
    a, b = m32(x).numpy(), m16(x).numpy()
    assert b.dtype == np.float32 and np.abs(a - b).max() < 0.05 * max(1.0, np.abs(a).max())
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # the global policy is restored
