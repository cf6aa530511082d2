"""Stages, found by name and imported lazily (so ``import connectome`` stays light).

Each stage module provides a typed frozen ``Config`` and ``plan(workspace, config, ...) -> Task``.
Model stages (FFN, U-Nets) live in the ``ffn`` and ``unet`` packages and are registered here
by module path only.
"""

from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "import": "connectome.stages.importer",
    "smooth": "connectome.stages.smooth",
    "mask-vessels": "unet.vessel",
    "train-vessel": "unet.train",
    "train-ffn": "ffn.train",
    "segment": "ffn.segment",
    "synapses": "connectome.synapses.predict",
    "train-synapse": "unet.synapse_train",
    "train-boundary": "unet.boundary_train",
    "predict-boundaries": "unet.boundary",
}


def load_stage(name: str):
    return importlib.import_module(REGISTRY[name])
