"""The shared trainer (connectome.training) with a toy job: learning-rate schedule, launcher
detection, checkpoints, resume after a crash equals an uninterrupted run, SIGTERM stops after a
checkpoint, a finished run trains nothing, a different setup is refused."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from connectome.errors import UserInputError
from connectome.training import TrainerConfig
from connectome.training.distributed import Session, horovod_session, launcher_size

tf = pytest.importorskip("tensorflow")

from connectome.training import weights as wio  # noqa: E402
from connectome.training.loop import run_training  # noqa: E402


class ToyJob:
    """Linear regression y = x @ w_true; batches are pure functions of (seed, step, rank)."""

    score_key = "neg_mse"

    def __init__(self, crash_at=None, sigterm_at=None, tag="toy", concat_ranks=0):
        self.crash_at, self.sigterm_at, self.tag = crash_at, sigterm_at, tag
        self.concat_ranks = concat_ranks  # 1 process playing N ranks: their batches concatenated
        self.w_true = np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)

    def fingerprint(self):
        return {"job": self.tag}

    def build_model(self):
        inp = tf.keras.Input((8,))
        return tf.keras.Model(inp, tf.keras.layers.Dense(1, name="dense")(inp))

    def loss(self, y, pred):
        return tf.reduce_mean(tf.square(y - pred))

    def batch(self, step, rank, size, batch_size):
        if step == self.crash_at:
            raise RuntimeError("simulated crash")
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.concat_ranks:
            n = self.concat_ranks
            parts = [ToyJob().batch(step, r, n, batch_size // n) for r in range(n)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        rng = np.random.default_rng([0, step, rank])
        x = rng.normal(size=(batch_size, 8)).astype(np.float32) * (1 + rank)  # ranks see different data
        return x, x @ self.w_true

    def validate(self, model, shard, num_shards):
        x = np.random.default_rng(99).normal(size=(32, 8)).astype(np.float32)[shard::num_shards]
        err = model(x, training=False).numpy() - x @ self.w_true
        return {"sse": float((err**2).sum()), "n": float(err.size)}

    def summarize(self, sums):
        return {"neg_mse": -sums["sse"] / sums["n"]}


CFG = TrainerConfig(
    steps=10,
    batch_size=4,
    learning_rate=0.05,
    warmup_steps=2,
    checkpoint_every=5,
    validate_every=5,
    log_every=2,
    seed=3,
)


def _weights(work_dir):
    return wio.load_npz(work_dir / "last_weights.npz")


def test_learning_rate_schedule():
    cfg = TrainerConfig(steps=110, learning_rate=1e-3, warmup_steps=10, lr_decay="cosine", final_lr_fraction=0.1)
    assert cfg.learning_rate_at(0, 4) == pytest.approx(1e-3)  # warm-up starts at the 1-rank rate
    assert cfg.learning_rate_at(10, 4) == pytest.approx(4e-3)  # linear scaling by 4 ranks
    assert cfg.learning_rate_at(110, 4) == pytest.approx(4e-4)  # cosine down to 10 %
    assert TrainerConfig(lr_scaling="sqrt", warmup_steps=0).learning_rate_at(0, 16) == pytest.approx(4e-3)
    assert TrainerConfig(lr_scaling="none", warmup_steps=0, lr_decay="constant").learning_rate_at(5, 8) == 1e-3
    with pytest.raises(ValueError):
        TrainerConfig(batch_size=0)


def test_launcher_detection(monkeypatch):
    for name in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "PALS_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert launcher_size() == 4
    with pytest.raises(UserInputError):
        with horovod_session("sometimes"):
            pass


def test_single_process_session():
    with horovod_session("none") as s:
        assert (s.rank, s.size, s.is_root, s.distributed) == (0, 1, True, False)
        np.testing.assert_array_equal(s.allreduce_sum([1.0, 2.0]), [1.0, 2.0])
        assert s.allgather_object("a") == ["a"] and s.broadcast_object(5) == 5


def test_trains_checkpoints_and_logs(tmp_path):
    res = run_training(ToyJob(), CFG, tmp_path / "a", Session())
    assert res.steps == 10 and res.start_step == 0 and not res.stopped_by_signal
    events = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert len(losses) == 5 and losses[-1] < 0.6 * losses[0]  # it learns
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "end"
    assert [e["step"] for e in events if e["event"] == "validate"] == [0, 5, 10]  # 0: untrained baseline
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("*.index")) == ["ckpt-10.index", "ckpt-5.index"]
    assert (tmp_path / "a" / "best_weights.npz").is_file() and list((tmp_path / "a" / "tensorboard").iterdir())


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    ref = run_training(ToyJob(), CFG, tmp_path / "ref", Session())
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(ToyJob(crash_at=7), CFG, tmp_path / "run", Session())
    res = run_training(ToyJob(), CFG, tmp_path / "run", Session())
    assert res.start_step == 5 and res.steps == 10  # continued from the last checkpoint
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert ref.rank_weight_digests == [wio.digest(a)]
    again = run_training(ToyJob(), CFG, tmp_path / "run", Session())  # finished: nothing to do
    assert again.start_step == 10 and again.steps == 10


def test_sigterm_stops_after_a_checkpoint(tmp_path):
    res = run_training(ToyJob(sigterm_at=3), CFG, tmp_path / "s", Session())  # (batches are prefetched)
    stopped_at = res.steps
    assert res.stopped_by_signal and 1 <= stopped_at <= 4
    assert (tmp_path / "s" / "checkpoints" / f"ckpt-{stopped_at}.index").is_file()
    assert not (tmp_path / "s" / "last_weights.npz").exists()
    res = run_training(ToyJob(), CFG, tmp_path / "s", Session())
    assert res.start_step == stopped_at and res.steps == 10


def test_a_different_setup_is_refused_unless_restart(tmp_path):
    run_training(ToyJob(), CFG, tmp_path / "d", Session())
    with pytest.raises(UserInputError, match="different setup .*'job.job' was 'toy', now 'other'"):
        run_training(ToyJob(tag="other"), CFG, tmp_path / "d", Session())
    res = run_training(ToyJob(tag="other"), CFG, tmp_path / "d", Session(), restart=True)
    assert res.start_step == 0 and res.steps == 10
