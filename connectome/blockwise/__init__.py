"""Blockwise execution: geometry, done-markers, executors and the runner.

See :mod:`connectome.blockwise.geometry` for the block conventions.
"""

from connectome.blockwise.executors import EXECUTORS, Executor, make_executor
from connectome.blockwise.geometry import Block, BlockGrid, Box
from connectome.blockwise.io import crop_to_write, read_with_halo
from connectome.blockwise.markers import MarkerStore
from connectome.blockwise.runner import RunReport, run_task
from connectome.blockwise.task import BlockResult, OutputSpec, Task

__all__ = [
    "Block",
    "BlockGrid",
    "Box",
    "BlockResult",
    "EXECUTORS",
    "Executor",
    "MarkerStore",
    "OutputSpec",
    "RunReport",
    "Task",
    "crop_to_write",
    "make_executor",
    "read_with_halo",
    "run_task",
]
