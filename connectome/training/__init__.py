"""The shared training loop (used by ``unet`` now and ``ffn`` later): synchronous
data-parallel training with Horovod, or a single process without it.

Modules:

* :mod:`.config`       :class:`TrainerConfig`, the typed frozen config of a training run
* :mod:`.distributed`  :func:`horovod_session`, the Horovod lifecycle as a context manager
                       (init, thread settings, GPU pinning, collectives, shutdown)
* :mod:`.loop`         :func:`run_training` and the :class:`TrainJob` protocol a model
                       package implements (build the model, give batches, loss, validation)
* :mod:`.weights`      weights as ``.npz`` (name -> array), digests to compare ranks

Conventions every job follows (the Argonne FFN/Horovod recipe, tested end to end):

* one process per rank; ``batch_size`` is per rank, the global batch is ``size * batch_size``;
* the learning rate is scaled by the rank count (linear, square root, or not), with warm-up;
* rank 0's variables are broadcast to all ranks before the first step and the optimizer's
  after it; gradients are averaged by ``hvd.DistributedGradientTape``;
* every rank draws its own examples from ``seed``, ``step`` and ``rank`` (no shared RNG state,
  so a resumed run draws the same examples as an uninterrupted one);
* only rank 0 writes checkpoints, TensorBoard summaries, logs and exported weights; every
  rank restores the same checkpoint on resume;
* SIGTERM/SIGINT (a PBS walltime, Ctrl-C) makes all ranks stop at the next step boundary
  after a checkpoint.

Importing this package does not import TensorFlow or Horovod; the functions that need them
import them when called.
"""

from connectome.training.config import TrainerConfig

__all__ = ["TrainerConfig"]
