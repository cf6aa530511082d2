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
        box = labels[max(z - r[0], 0):z + r[0] + 1, max(y - r[1], 0):y + r[1] + 1, max(x - r[2], 0):x + r[2] + 1]
        want[z, y, x] = np.mean(box == labels[z, y, x])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # exclusions: small objects and masked voxels
    biggest_other = max(int((labels == k).sum()) for k in (1, 2, 3))
    assert biggest_other < (labels == 9).sum()
    small = object_fractions(labels, r, min_object_voxels=biggest_other + 1)
    assert (small[labels != 9] == -1).all() and (small[labels == 9] > 0).all()
    masked = object_fractions(labels, r, mask=labels == 9)
    assert (masked[labels == 9] == -1).all()
    assert partition_of(np.array([-1.0, 0.0, 0.03, 0.95, 1.0])).tolist() == [-1, 0, 1, len(THRESHOLDS),
                                                                              len(THRESHOLDS)]


def test_sampler_balances_partitions_and_keeps_boxes_inside():
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 60, 60), np.uint32)
    labels[:, :, :30] = 1                        # a big object
    labels[:, 28:31, 30:] = 2                    # a thin one
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
    lg[2, 4, 6] = logit(0.95)   # on the +x face (x = 4 + 2)
    lg[3, 1, 1] = logit(0.95)   # on the +z face (z = 2 + 1)
    lg[2, 6, 4] = logit(0.85)   # +y face, below the threshold
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
    ex = FFNExampleConfig(min_object_voxels=300, val_episodes_per_volume=6)
    train = load_training_volume(generate(root / "a", preset="small", seed=401), TINY, ex)
    val = load_training_volume(generate(root / "b", preset="small", seed=402), TINY, ex)
    return ex, train, val


def _train(volumes, work, steps, seed=1):
    from connectome.training import TrainerConfig
    from connectome.training.distributed import Session
    from connectome.training.loop import run_training
    from ffn.train import FFNJob

    ex, train, val = volumes
    cfg = TrainerConfig(steps=steps, batch_size=4, learning_rate=2e-3, warmup_steps=5, checkpoint_every=20,
                        lr_decay="constant",
                        validate_every=40, log_every=10, seed=seed, grad_clip_norm=1.0,
                        intra_op_threads=1, inter_op_threads=1)
    job = FFNJob(TINY, ex, [train], [val], seed=seed, reset_every=cfg.checkpoint_every, fingerprint={"t": "tiny"})
    return run_training(job, cfg, work, Session()), job


def test_fov_movement_training_learns_and_moves(volumes, tmp_path):
    import json

    res, job = _train(volumes, tmp_path / "w", 80)
    events = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0]
    val = [e for e in events if e["event"] == "validate"]
    assert [e["step"] for e in val] == [0, 40, 80]
    assert val[-1]["f1"] > val[0]["f1"]          # learned to fill objects
    # the slots moved: some episodes went past their centre FOV
    ex, train, _ = volumes
    x, _ = job.batch(80, 0, 1, 4)
    assert x.shape == (4, 7, 13, 13, 2)


def test_resume_of_the_stateful_job_is_exact(volumes, tmp_path):
    from connectome.training import weights as wio

    _train(volumes, tmp_path / "full", 40)
    _train(volumes, tmp_path / "part", 20)       # stops at a checkpoint (a kill would too)
    res, _ = _train(volumes, tmp_path / "part", 40)
    assert res.start_step == 20
    a = wio.load_npz(tmp_path / "full" / "last_weights.npz")
    b = wio.load_npz(tmp_path / "part" / "last_weights.npz")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
