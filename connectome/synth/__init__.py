"""``connectome synth``: synthetic serial-section EM data with complete ground truth.

It imports nothing of the pipeline stages. Entry point::

    from connectome.synth import generate
    generate("out/", preset="small", seed=0)          # -> Path("out/")

What it makes, and why it looks like real data, module by module:

* :mod:`.presets`      the frozen :class:`SynthConfig` and the small / demo / bench presets
* :mod:`.neurites`     packed, branching axons and dendrites with spines, boutons, mitochondria
* :mod:`.vessels`      a capillary with lumen, wall, basal lamina and red blood cells
* :mod:`.synapses`     synapses on real axon contacts: cleft, PSD, vesicle cloud, pre/post ids
* :mod:`.volume`       voxels of one block: owners, dense fill, ECS, truth labels
* :mod:`.imaging`      image formation: staining, membranes, blur, noise, section drift
* :mod:`.acquisition`  drift + elastic warp per section, tile grid, jitter, tile gain, damage
* :mod:`.writer`       the OUT layout, idempotence, zarr arrays and tables
* :mod:`.preview`      OUT/preview.png
* :mod:`.geometry`, :mod:`.fields`   shared shape and randomness helpers
"""

from __future__ import annotations

from connectome.synth.pipeline import generate
from connectome.synth.presets import PRESETS, SynthConfig, make_config

__all__ = ["generate", "make_config", "SynthConfig", "PRESETS"]
