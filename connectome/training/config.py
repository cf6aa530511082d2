"""The typed, frozen config of a training run (nested inside each model package's config)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainerConfig:
    #: optimisation steps in total (a resumed run continues up to this number)
    steps: int = 2000
    #: examples per rank per step; the global batch is ranks * batch_size
    batch_size: int = 4
    #: learning rate of a single rank; scaled by the rank count with ``lr_scaling``
    learning_rate: float = 1e-3
    #: "linear" (lr x N: best up to ~16 nodes), "sqrt" (lr x sqrt N: beyond), or "none"
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    #: linear warm-up from lr/N (the single-rank rate) to the scaled rate over these steps
    warmup_steps: int = 100
    #: after warm-up: cosine decay to ``final_lr_fraction`` of the peak, or constant
    lr_decay: Literal["cosine", "constant"] = "cosine"
    final_lr_fraction: float = 0.05
    optimizer: Literal["adam", "sgd"] = "adam"
    #: clip gradients by global norm (0 = off)
    grad_clip_norm: float = 0.0
    #: checkpoint (rank 0) every this many steps, and at the end or on SIGTERM
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    #: validation every this many steps (0 = only at the end); sharded over the ranks
    validate_every: int = 200
    log_every: int = 10
    #: batches prepared ahead in a background thread (0 = none)
    prefetch: int = 2
    seed: int = 0
    #: TensorFlow threads per rank (0 = TensorFlow's default). 1/1 for clean scaling runs.
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    #: "auto": Horovod when launched by horovodrun/mpiexec with more than one rank,
    #: "horovod": always (also a 1-rank Horovod run), "none": never
    distributed: Literal["auto", "horovod", "none"] = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "validate_every", "intra_op_threads", "inter_op_threads", "seed", "prefetch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be >= 0, got {self.grad_clip_norm}")

    def lr_scale(self, ranks: int) -> float:
        return {"linear": float(ranks), "sqrt": math.sqrt(ranks), "none": 1.0}[self.lr_scaling]

    def learning_rate_at(self, step: int, ranks: int) -> float:
        """The schedule as a plain function (the TF schedule in :mod:`.loop` mirrors it)."""
        peak = self.learning_rate * self.lr_scale(ranks)
        if self.warmup_steps and step < self.warmup_steps:
            start = self.learning_rate
            return start + (peak - start) * step / self.warmup_steps
        if self.lr_decay == "constant":
            return peak
        span = max(1, self.steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return peak * (self.final_lr_fraction + (1 - self.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))
