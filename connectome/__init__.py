"""connectome — reconstruct neural circuits from serial-section EM volumes.

Importing this package is cheap: it loads no TensorFlow, Horovod, DeepHyper or neuroglancer;
those are imported only inside the stages that need them.
"""

__version__ = "0.1.0"
