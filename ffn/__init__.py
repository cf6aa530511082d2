"""Flood-Filling Network neuron segmentation (training with Horovod, blockwise inference). See issue 6."""
