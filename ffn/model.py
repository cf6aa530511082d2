"""The Flood-Filling Network: a residual 3-D convolution stack ("ConvStack3D") as a Keras model.

Input: one field of view (FOV) ``(z, y, x, C + 1)`` -- the ``C`` image channels named by
``channels`` (``raw``: the standardised EM image; ``boundary``: the boundary probability of
``connectome predict-boundaries`` mapped to [-1, 1]), then the current object-mask *logits*
(the seed) as the last channel. Output: updated logits ``(z, y, x, 1)``::

    [channels..., seed] -> conv3 -> relu -> conv3              (features channels)
                  -> (depth - 1) x [relu -> conv3 -> relu -> conv3, + skip]
                  -> relu -> conv1 (1 channel)  = update;   output = seed + update

``anisotropic``: the first convolution of every residual module is 1 x 3 x 3 (in-plane only),
the second 3 x 3 x 3 -- a third fewer multiply-adds for serial-section data whose z step is
2.5-5x the pixel size. All convolutions use SAME padding, so every layer keeps the FOV's shape;
the network sees its whole FOV (the receptive field of ``2 * depth`` 3x3x3 layers covers 33^3 at depth 12...16). The
reference configuration (depth 12, 32 features) has 638,433 parameters, the size google/ffn
uses; the compact one (depth 6, 16 features) runs ~7x faster on a CPU and is what the demo ships.

``fov_zyx`` and ``deltas_zyx`` are in voxels, z first. For anisotropic serial-section data
(40 nm sections, 8 nm pixels) an FOV of 17 x 33 x 33 with deltas (4, 8, 8) is usual: the FOV
moves by half its radius in each direction. FOV sizes must be odd (a centre voxel) and each
delta below the FOV radius (consecutive FOVs overlap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: logits of the seed's background and of the initial centre (google/ffn's 0.05 / 0.95)
PAD_PROB, SEED_PROB = 0.05, 0.95
#: image channels a model may take (see the module doc)
INPUT_CHANNELS = ("raw", "boundary")


def logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


@dataclass(frozen=True)
class FFNModelConfig:
    #: residual modules + 1 (the first module is the plain two-conv stem)
    depth: int = 12
    #: channels of every convolution
    features: int = 32
    #: field of view (z, y, x), voxels, odd
    fov_zyx: tuple[int, int, int] = (17, 33, 33)
    #: step of the FOV movement (z, y, x), voxels
    deltas_zyx: tuple[int, int, int] = (4, 8, 8)
    #: image input channels, in order (the seed follows them): "raw" and/or "boundary"
    channels: tuple[str, ...] = ("raw",)
    #: residual modules' first convolution 1 x 3 x 3 instead of 3 x 3 x 3
    anisotropic: bool = False

    def __post_init__(self):
        if (
            not self.channels
            or len(set(self.channels)) != len(self.channels)
            or any(c not in INPUT_CHANNELS for c in self.channels)
        ):
            raise ValueError(f"channels must be distinct names from {list(INPUT_CHANNELS)}, got {list(self.channels)}")
        if self.depth < 1 or self.features < 1:
            raise ValueError(f"depth and features must be >= 1, got {self.depth} and {self.features}")
        if len(self.fov_zyx) != 3 or any(int(f) < 3 or int(f) % 2 == 0 for f in self.fov_zyx):
            raise ValueError(f"fov_zyx must be three odd sizes >= 3, got {list(self.fov_zyx)}")
        if len(self.deltas_zyx) != 3 or any(
            not 0 < int(d) <= int(f) // 2 for d, f in zip(self.deltas_zyx, self.fov_zyx)
        ):
            raise ValueError(
                f"deltas_zyx must be in 1..fov//2 per axis, got {list(self.deltas_zyx)} for fov {list(self.fov_zyx)}"
            )

    @property
    def radius_zyx(self) -> tuple[int, int, int]:
        return tuple(int(f) // 2 for f in self.fov_zyx)  # type: ignore[return-value]

    @property
    def example_zyx(self) -> tuple[int, int, int]:
        """Training example box: one FOV plus one move in every direction."""
        return tuple(int(f) + 2 * int(d) for f, d in zip(self.fov_zyx, self.deltas_zyx))  # type: ignore[return-value]

    def n_parameters(self) -> int:
        f, k = self.features, 27
        ka = 9 if self.anisotropic else 27
        stem = ((len(self.channels) + 1) * k * f + f) + (f * k * f + f)
        return stem + (self.depth - 1) * ((f * ka * f + f) + (f * k * f + f)) + (f + 1)

    def flops_per_fov(self) -> float:
        """Multiply-adds x 2 of one forward pass over one FOV."""
        n = int(np.prod(self.fov_zyx))
        return 2.0 * n * (self.n_parameters() - self._biases())

    def _biases(self) -> int:
        return 2 * self.features + (self.depth - 1) * 2 * self.features + 1


#: google/ffn's size for anisotropic serial-section data
REFERENCE = FFNModelConfig()
#: CPU / demo size
COMPACT = FFNModelConfig(depth=6, features=16, fov_zyx=(17, 33, 33), deltas_zyx=(4, 8, 8))


def build_model(cfg: FFNModelConfig, name: str = "ffn", precision: str = "float32") -> Any:
    """The Keras model (layer names are stable: they key the saved weights). ``precision``
    "bfloat16" computes in bfloat16 (variables stay float32, the output logits are float32)."""
    import tensorflow as tf

    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16, got {precision!r}")
    if precision == "bfloat16":
        old = tf.keras.mixed_precision.global_policy()
        tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            return _build(cfg, name, tf)
        finally:
            tf.keras.mixed_precision.set_global_policy(old)
    return _build(cfg, name, tf)


def _build(cfg: FFNModelConfig, name: str, tf) -> Any:
    L = tf.keras.layers
    inp = tf.keras.Input(tuple(cfg.fov_zyx) + (len(cfg.channels) + 1,), name="fov")
    seed = L.Lambda(lambda t: t[..., -1:], name="seed")(inp)
    ka = (1, 3, 3) if cfg.anisotropic else 3
    x = L.Conv3D(cfg.features, 3, padding="same", name="stem_conv_a")(inp)
    x = L.ReLU(name="stem_relu")(x)
    x = L.Conv3D(cfg.features, 3, padding="same", name="stem_conv_b")(x)
    for i in range(1, cfg.depth):
        h = L.ReLU(name=f"res{i}_relu_a")(x)
        h = L.Conv3D(cfg.features, ka, padding="same", name=f"res{i}_conv_a")(h)
        h = L.ReLU(name=f"res{i}_relu_b")(h)
        h = L.Conv3D(cfg.features, 3, padding="same", name=f"res{i}_conv_b")(h)
        x = L.Add(name=f"res{i}_add")([x, h])
    x = L.ReLU(name="out_relu")(x)
    update = L.Conv3D(1, 1, padding="same", name="update", dtype="float32")(x)
    out = L.Add(name="logits", dtype="float32")([seed, update])
    return tf.keras.Model(inp, out, name=name)
