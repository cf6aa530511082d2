"""The data-parallel training loop shared by the model packages.

A model package implements :class:`TrainJob` (what to train) and calls :func:`run_training`
(how to train) inside a :func:`~connectome.training.distributed.horovod_session`::

    with horovod_session(cfg.distributed, cfg.intra_op_threads, cfg.inter_op_threads) as s:
        result = run_training(job, cfg, work_dir, s)

``work_dir`` (written by rank 0 only)::

    work_dir/
      run.json              what was trained (job fingerprint + trainer config); a resume with
                            a different one is refused unless ``restart``
      checkpoints/          tf.train.Checkpoint: model, optimizer, step, best score (last few)
      tensorboard/          scalars: loss, learning rate, examples/s, validation metrics
      log.jsonl             one JSON line per event: start, train (every log_every), validate, end
                            (with wall-clock "time"; a killed run has no "end")
      best_weights.npz      weights at the best validation score (score_key, higher is better)
      last_weights.npz      weights after the last step

Resuming: every rank restores the newest checkpoint (its path is chosen by rank 0 and
broadcast) and continues at the step after it; examples depend only on (seed, step, rank),
so the continuation draws the same examples as an uninterrupted run would. A run whose
checkpoint already reached ``steps`` trains nothing (idempotent).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from connectome.errors import UserInputError
from connectome.training import weights as wio
from connectome.training.config import TrainerConfig
from connectome.training.distributed import Session

log = logging.getLogger(__name__)

#: Fault-injection hook for tests of kill-and-resume: seconds to sleep after every step.
STEP_DELAY_ENV = "CONNECTOME_TRAIN_STEP_DELAY_S"

#: trainer fields that may change between a run and its resumption
_RESUMABLE_CHANGES = (
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "validate_every",
    "log_every",
    "intra_op_threads",
    "inter_op_threads",
    "distributed",
    "prefetch",
)


class TrainJob(Protocol):
    """What a model package supplies. ``batch`` and ``validate`` get numpy data, no globals."""

    #: key of the validation metric to maximise when picking the best weights (None: last)
    score_key: Optional[str]

    def build_model(self) -> Any:
        """A fresh Keras model (called once per rank)."""

    def loss(self, y_true, logits) -> Any:
        """Scalar TF loss of one batch."""

    def batch(self, step: int, rank: int, size: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The examples of ``rank`` at ``step``: a pure function of (seed, step, rank)."""

    def validate(self, model, shard: int, num_shards: int) -> dict[str, float]:
        """Additive sums over this rank's shard of the validation set (same keys on all ranks)."""

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from the sums over all shards."""

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of what is trained (model, data, loss)."""

    # Optional: a *stateful* job (FFN training moves its field of view by its own predictions)
    # also defines ``observe(step, logits)``, called with the batch's output logits (numpy) after
    # every step. Its batches then depend on earlier outputs, so they are not prefetched, and
    # the job resets its state whenever ``step % checkpoint_every == 0`` and on resumption, so
    # that a resume from a periodic checkpoint continues exactly as the uninterrupted run.


@dataclass
class TrainResult:
    steps: int
    start_step: int
    ranks: int
    global_batch: int
    seconds: float
    examples_per_s: Optional[float]
    final_loss: Optional[float]
    best_step: Optional[int]
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    rank_weight_digests: list[str] = field(default_factory=list)
    stopped_by_signal: bool = False
    weights_file: Optional[str] = None

    def to_json(self) -> dict:
        return asdict(self)


def _make_schedule(cfg: TrainerConfig, ranks: int):
    import tensorflow as tf

    class Schedule(tf.keras.optimizers.schedules.LearningRateSchedule):
        """TF mirror of :meth:`TrainerConfig.learning_rate_at`."""

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            base = cfg.learning_rate
            peak = base * cfg.lr_scale(ranks)
            warm = float(max(1, cfg.warmup_steps))
            warm_lr = base + (peak - base) * step / warm
            if cfg.lr_decay == "constant":
                after = tf.constant(peak, tf.float32)
            else:
                span = float(max(1, cfg.steps - cfg.warmup_steps))
                t = tf.minimum(1.0, (step - cfg.warmup_steps) / span)
                after = peak * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + tf.cos(math.pi * t)))
            if cfg.warmup_steps:
                return tf.where(step < cfg.warmup_steps, warm_lr, after)
            return after

        def get_config(self):
            return {}

    return Schedule()


def _make_optimizer(cfg: TrainerConfig, ranks: int):
    import tensorflow as tf

    schedule = _make_schedule(cfg, ranks)
    if cfg.optimizer == "adam":
        return tf.keras.optimizers.Adam(learning_rate=schedule)
    return tf.keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)


class _StopFlag:
    """SIGTERM/SIGINT -> stop at the next step boundary (after a checkpoint)."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # second signal: give up at once
            raise KeyboardInterrupt
        log.warning("signal %d: stopping after the current step (checkpoint first)", signum)
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _json_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def _check_run_json(work_dir: Path, fingerprint: dict, restart: bool) -> None:
    """rank 0: record what is trained; refuse to resume something else."""
    run_json = work_dir / "run.json"
    if restart:
        for sub in ("checkpoints", "tensorboard"):
            shutil.rmtree(work_dir / sub, ignore_errors=True)
        for name in ("run.json", "log.jsonl", "best_weights.npz", "last_weights.npz"):
            (work_dir / name).unlink(missing_ok=True)
    if run_json.is_file() and (work_dir / "checkpoints").is_dir():
        try:
            old = json.loads(run_json.read_text())
        except (OSError, ValueError):
            raise UserInputError(f"{run_json}: unreadable; rerun with --restart to start over") from None
        diff = _first_difference(old, fingerprint)
        if diff:
            raise UserInputError(
                f"{work_dir}: holds a run of a different setup ({diff}); use another output "
                "folder or --restart to discard it"
            )
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_json.with_name(f".run.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
    os.replace(tmp, run_json)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"'{path}{k}' only in {'the new' if k in b else 'the old'} setup"
            d = _first_difference(a[k], b[k], f"{path}{k}.")
            if d:
                return d
        return ""
    if a != b:
        return f"'{path.rstrip('.')}' was {a!r}, now {b!r}"
    return ""


def run_training(
    job: TrainJob, cfg: TrainerConfig, work_dir: str | Path, session: Session, restart: bool = False
) -> TrainResult:
    """Train ``job`` to ``cfg.steps`` steps (resuming from ``work_dir``); see the module doc."""
    import tensorflow as tf

    work_dir = Path(work_dir)
    rank, size = session.rank, session.size
    trainer_fp = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES}
    fingerprint = {"job": job.fingerprint(), "trainer": trainer_fp}
    error = None
    if session.is_root:
        try:
            _check_run_json(work_dir, json.loads(json.dumps(fingerprint)), restart)
        except UserInputError as exc:
            error = str(exc)
    error = session.broadcast_object(error)
    if error:
        raise UserInputError(error)
    log_path = work_dir / "log.jsonl"

    tf.keras.utils.set_random_seed(cfg.seed)  # same initial weights everywhere (rank 0's win anyway)
    model = job.build_model()
    opt = _make_optimizer(cfg, size)
    opt.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    best_score = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_score")
    best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, step=step_var, best_score=best_score, best_step=best_step)
    manager = tf.train.CheckpointManager(ckpt, str(work_dir / "checkpoints"), max_to_keep=cfg.keep_checkpoints)

    latest = session.broadcast_object(manager.latest_checkpoint if session.is_root else None)
    if latest:
        try:
            ckpt.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise UserInputError(
                f"{latest}: checkpoint does not fit this model ({str(exc).splitlines()[0][:200]}); use --restart"
            ) from None
    start = int(step_var.numpy())
    session.broadcast_variables(model.variables)

    writer = tf.summary.create_file_writer(str(work_dir / "tensorboard")) if session.is_root else None
    if session.is_root:
        _json_line(
            log_path,
            {
                "event": "start",
                "time": time.time(),
                "start_step": start,
                "steps": cfg.steps,
                "ranks": size,
                "batch_per_rank": cfg.batch_size,
                "global_batch": size * cfg.batch_size,
                "resumed": bool(latest),
            },
        )
        if latest:
            log.info("resuming from %s (step %d of %d)", latest, start, cfg.steps)
        log.info(
            "training on %d rank(s), global batch %d, peak learning rate %.3g",
            size,
            size * cfg.batch_size,
            cfg.learning_rate * cfg.lr_scale(size),
        )

    observe = getattr(job, "observe", None)

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = job.loss(y, logits)
        tape = session.distributed_tape(tape)
        grads = tape.gradient(loss, model.trainable_variables)
        if cfg.grad_clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, cfg.grad_clip_norm)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss, logits

    def validate(step: int) -> dict[str, float]:
        sums = job.validate(model, rank, size)
        keys = sorted(sums)
        total = session.allreduce_sum([sums[k] for k in keys])
        metrics = job.summarize(dict(zip(keys, (float(v) for v in total))))
        improved = False
        if job.score_key and metrics.get(job.score_key) is not None and np.isfinite(metrics[job.score_key]):
            if metrics[job.score_key] > float(best_score.numpy()):
                best_score.assign(metrics[job.score_key])
                best_step.assign(step)
                improved = True
        if session.is_root:
            _json_line(log_path, {"event": "validate", "time": time.time(), "step": step, **metrics, "best": improved})
            assert writer is not None  # the root rank has one
            with writer.as_default():
                for k, v in metrics.items():
                    tf.summary.scalar(f"validation/{k}", v, step=step)
            writer.flush()
            log.info(
                "step %d validation: %s%s",
                step,
                ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                " (best)" if improved else "",
            )
            if improved:
                wio.save_npz(wio.variables_dict(model.weights), work_dir / "best_weights.npz")
        return metrics

    delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
    losses: list[float] = []
    last_metrics: dict[str, float] = {}
    t_run = time.perf_counter()
    t_steady = None
    steady_steps = 0
    window_t, window_n = time.perf_counter(), 0
    stopped = False
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") if cfg.prefetch and not observe else None
    pending: dict[int, Any] = {}

    def next_batch(step: int):
        """Batches are pure functions of (seed, step, rank): compute the next ones in a thread."""
        if pool is None:
            return job.batch(step, rank, size, cfg.batch_size)
        for s in range(step, min(cfg.steps, step + cfg.prefetch + 1)):
            if s not in pending:
                pending[s] = pool.submit(job.batch, s, rank, size, cfg.batch_size)
        return pending.pop(step).result()

    if start == 0 and cfg.validate_every:
        last_metrics = validate(0)  # the untrained baseline
    with _StopFlag() as stop:
        for step in range(start, cfg.steps):
            x, y = next_batch(step)
            loss_t, logits = train_step(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
            loss = float(loss_t.numpy())
            if observe is not None:
                observe(step, logits.numpy())
            if step == start:
                # optimizer state exists now on every rank: make it rank 0's (canonical Horovod)
                session.broadcast_variables(opt.variables())
                t_steady = time.perf_counter()
            else:
                steady_steps += 1
            losses.append(loss)
            window_n += 1
            done = step + 1
            step_var.assign(done)
            if delay:
                time.sleep(delay)
            if done % cfg.log_every == 0 or done == cfg.steps:
                mean_loss = float(session.allreduce_sum([np.mean(losses[-window_n:])])[0]) / size
                now = time.perf_counter()
                eps = window_n * cfg.batch_size * size / max(1e-9, now - window_t)
                window_t, window_n = now, 0
                if session.is_root:
                    lr = cfg.learning_rate_at(step, size)
                    _json_line(
                        log_path,
                        {
                            "event": "train",
                            "time": time.time(),
                            "step": done,
                            "loss": mean_loss,
                            "lr": lr,
                            "examples_per_s": eps,
                        },
                    )
                    assert writer is not None
                    with writer.as_default():
                        tf.summary.scalar("train/loss", mean_loss, step=done)
                        tf.summary.scalar("train/learning_rate", lr, step=done)
                        tf.summary.scalar("train/examples_per_s", eps, step=done)
                    log.info("step %d/%d loss %.4f lr %.2e %.1f examples/s", done, cfg.steps, mean_loss, lr, eps)
            if (cfg.validate_every and done % cfg.validate_every == 0) or done == cfg.steps:
                last_metrics = validate(done)
            stop_now = session.allreduce_max(1.0 if stop.set else 0.0) > 0 if session.distributed else stop.set
            if session.is_root and (done % cfg.checkpoint_every == 0 or done == cfg.steps or stop_now):
                manager.save(checkpoint_number=done)
            if stop_now:
                stopped = True
                break
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - t_run
    steady = (time.perf_counter() - t_steady) if t_steady is not None else 0.0
    steady_eps = steady_steps * cfg.batch_size * size / steady if steady_steps and steady > 0 else None

    # every rank hashes its own weights (before any further broadcast): they must agree
    digests = session.allgather_object(wio.digest(wio.variables_dict(model.weights)))
    final_step = int(step_var.numpy())
    weights_file = None
    if session.is_root:
        if final_step >= cfg.steps and not stopped:
            wio.save_npz(wio.variables_dict(model.weights), work_dir / "last_weights.npz")
        weights_file = str(work_dir / "last_weights.npz")
        if job.score_key and int(best_step.numpy()) >= 0 and (work_dir / "best_weights.npz").is_file():
            weights_file = str(work_dir / "best_weights.npz")
        _json_line(
            log_path,
            {
                "event": "end",
                "time": time.time(),
                "step": final_step,
                "seconds": seconds,
                "examples_per_s": steady_eps,
                "rank_weight_digests": digests,
                "stopped_by_signal": stopped,
            },
        )
        assert writer is not None
        writer.close()
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks hold different weights after training: {digests}")
    result = TrainResult(
        steps=final_step,
        start_step=start,
        ranks=size,
        global_batch=size * cfg.batch_size,
        seconds=round(seconds, 3),
        examples_per_s=None if steady_eps is None else round(steady_eps, 3),
        final_loss=float(np.mean(losses[-cfg.log_every :])) if losses else None,
        best_step=int(best_step.numpy()) if int(best_step.numpy()) >= 0 else None,
        best_metrics={},
        last_metrics=last_metrics,
        rank_weight_digests=digests,
        stopped_by_signal=stopped,
        weights_file=weights_file,
    )
    if result.best_step is not None and session.is_root:
        result.best_metrics = _metrics_at(log_path, result.best_step)
    return result


def _metrics_at(log_path: Path, step: int) -> dict[str, float]:
    found: dict[str, float] = {}
    try:
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "validate" and rec.get("step") == step:
                found = {k: v for k, v in rec.items() if k not in ("event", "time", "step", "best")}
    except (OSError, ValueError):
        pass
    return found
