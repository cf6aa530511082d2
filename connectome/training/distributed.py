"""The Horovod lifecycle as a context manager, and a one-process stand-in with the same API.

::

    with horovod_session("auto", intra_op_threads=1) as s:   # hvd.init() ... hvd.shutdown()
        s.rank, s.size, s.local_rank, s.is_root
        tape = s.distributed_tape(tape)                       # averages gradients over ranks
        s.broadcast_variables(model.variables)                # from rank 0
        s.allreduce_sum(np.array([...]))                      # numpy in, numpy out
        s.broadcast_object(x), s.allgather_object(x), s.barrier()

``mode="auto"`` uses Horovod when the process was started by a launcher with more than one
rank (``horovodrun`` sets ``HOROVOD_SIZE``; MPICH/PALS ``mpiexec`` set ``PMI_SIZE``; Open MPI
sets ``OMPI_COMM_WORLD_SIZE``) and runs as a single process otherwise, without importing
Horovod. ``mode="horovod"`` always initialises Horovod (also for one rank); ``"none"`` never.

Threads are set before TensorFlow starts (``intra_op_threads``/``inter_op_threads``, 0 = its
default); with GPUs each rank sees only the GPU of its local rank (on Polaris the job script
may also set ``CUDA_VISIBLE_DEVICES``, on Aurora ``ZE_AFFINITY_MASK``, per local rank).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from connectome.errors import UserInputError

log = logging.getLogger(__name__)

#: environment variables through which launchers announce the number of ranks
SIZE_ENV = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "PALS_SIZE")


def launcher_size() -> int:
    """Ranks announced by a launcher in the environment (1 when there is none)."""
    for name in SIZE_ENV:
        value = os.environ.get(name)
        if value and value.strip().isdigit():
            return int(value)
    return 1


class Session:
    """One process's view of the job. Without Horovod: rank 0 of 1, collectives are identities."""

    def __init__(self, hvd: Any = None):
        self.hvd = hvd
        self.rank = hvd.rank() if hvd else 0
        self.size = hvd.size() if hvd else 1
        self.local_rank = hvd.local_rank() if hvd else 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.hvd is not None

    def distributed_tape(self, tape):
        return self.hvd.DistributedGradientTape(tape) if self.hvd else tape

    def broadcast_variables(self, variables) -> None:
        if self.hvd and variables:
            self.hvd.broadcast_variables(list(variables), root_rank=0)

    def allreduce_sum(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if not self.hvd:
            return values
        import tensorflow as tf

        out = self.hvd.allreduce(tf.constant(values), op=self.hvd.Sum)
        return np.asarray(out.numpy(), dtype=np.float64)

    def allreduce_max(self, value: float) -> float:
        if not self.hvd:
            return float(value)
        import tensorflow as tf

        return float(self.hvd.allreduce(tf.constant([float(value)], tf.float64), op=self.hvd.Max).numpy()[0])

    def broadcast_object(self, obj: Any) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0) if self.hvd else obj

    def allgather_object(self, obj: Any) -> list:
        return list(self.hvd.allgather_object(obj)) if self.hvd else [obj]

    def barrier(self) -> None:
        """All ranks wait here (an allreduce: horovod.tensorflow 0.28 has no barrier())."""
        if self.hvd:
            self.allreduce_sum([0.0])


def set_threads(intra: int, inter: int) -> None:
    """TensorFlow's thread pools (0 = its default); a no-op once TensorFlow has started."""
    import tensorflow as tf

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra))
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter))
    except RuntimeError:  # TensorFlow already started in this process (e.g. a second run in tests)
        log.debug("TensorFlow already initialised; thread settings unchanged")


def _pin_gpu(local_rank: int) -> None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    try:
        gpu = gpus[local_rank % len(gpus)]
        tf.config.set_visible_devices(gpu, "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        log.debug("GPUs already initialised; visibility unchanged")


@contextmanager
def horovod_session(mode: str = "auto", intra_op_threads: int = 0, inter_op_threads: int = 0) -> Iterator[Session]:
    """Initialise Horovod (or not, see the module doc), yield a :class:`Session`, shut down."""
    if mode not in ("auto", "horovod", "none"):
        raise UserInputError(f"distributed: expected auto, horovod or none, got {mode!r}")
    use = mode == "horovod" or (mode == "auto" and launcher_size() > 1)
    set_threads(intra_op_threads, inter_op_threads)
    if not use:
        _pin_gpu(0)
        yield Session(None)
        return
    try:
        import horovod.tensorflow as hvd
    except ImportError as exc:
        raise UserInputError(
            f"this run needs Horovod ({launcher_size()} ranks were launched) but "
            f"`import horovod.tensorflow` failed: {exc}"
        ) from None
    hvd.init()
    try:
        _pin_gpu(hvd.local_rank())
        session = Session(hvd)
        log.debug("horovod: rank %d of %d (local rank %d)", session.rank, session.size, session.local_rank)
        yield session
    finally:
        hvd.shutdown()
