"""U-Nets for EM: a reusable 2D/3D U-Net package (model, losses, augmentation, data, training,
tiled inference) and the vessel-mask stage built on it (``connectome mask-vessels``,
``connectome train vessel``). The synapse 3D U-Net reuses the same pieces.

* :mod:`.model`        :class:`UNetConfig`, :func:`build_unet` (2D/3D, "same"/"valid")
* :mod:`.losses`       BCE + soft Dice (TF)
* :mod:`.augment`      flips/rot90/transpose, elastic, intensity/contrast/gamma, noise, blur, defects
* :mod:`.data`         labelled synthetic volumes, area downsampling, example sampling
* :mod:`.modeldir`     the self-describing model directory (model.json + weights.npz), validated
* :mod:`.infer`        tiled prediction on a global tile grid (blockwise == whole volume),
                       upsampling, per-section post-processing
* :mod:`.train`        ``connectome train vessel``: config, TrainJob, export of the model dir
* :mod:`.vessel`       the blockwise stage: ``vessel_prob`` then ``vessel_mask``

Importing this package does not import TensorFlow.
"""

import os
from pathlib import Path

#: the shipped vessel model (package data), the default ``--model`` of ``mask-vessels``
DEFAULT_VESSEL_MODEL = Path(__file__).resolve().parent / "models" / "vessel"


def default_vessel_model() -> Path:
    """``$CONNECTOME_VESSEL_MODEL`` if set, else the shipped model."""
    return Path(os.environ.get("CONNECTOME_VESSEL_MODEL") or DEFAULT_VESSEL_MODEL)
