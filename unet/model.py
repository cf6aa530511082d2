"""A configurable U-Net (2D now, 3D for the synapse stage later) in TF 2.15 Keras.

Architecture (``depth`` = number of poolings; filters double per level, capped at
``max_filters``)::

    input (H, W, C)                                                    output (H, W, out_channels)
      |                                                                  ^
    [conv3 x convs_per_level] f0 -----------------------(concat)---> [conv3 x n] f0 -> 1x1 conv
      | pool 2                                                           ^ up 2 (transposed conv)
    [conv3 x n] f1 ------------------------------(concat)---> [conv3 x n] f1
      | pool 2                                                   ^ up 2
      ...                       (depth levels)                  ...
      | pool 2                                                   ^
    [conv3 x n] f_depth  (bottleneck) ---------------------------+

* ``padding="same"`` (default, as in Argonne's EM_mask): output shape == input shape; every
  spatial size must be divisible by ``2**depth`` (the inference tiler guarantees it). Pixels
  near the tile border see zero padding, which is why the tiler crops a margin
  (:mod:`unet.infer`). ``padding="valid"`` is also supported: the output is smaller than the
  input by :func:`valid_margin` on every side (no border effects at all, more computation).
* ``upsampling="transpose"`` (2x2 transposed conv, as in EM_mask) or ``"resize"`` (nearest
  upsampling + 3x3 conv, fewer checkerboard artefacts).
* ``norm``: ``"none"`` (default: inference is then exactly local and independent of batch and
  tile composition, and data-parallel ranks share every variable) or ``"batch"``.
* ``ndim=3`` builds the same network with 3D layers; ``pool_zyx`` (3D only) gives the pooling
  per level, e.g. ``[[1,2,2],[1,2,2],[2,2,2]]`` for anisotropic serial-section data.

The model ends in logits (no sigmoid); losses and predictors apply the sigmoid. Weights are
stored as ``{variable name: array}`` (:mod:`connectome.training.weights`), so a model
directory is readable without TensorFlow and checked variable by variable on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np


@dataclass(frozen=True)
class UNetConfig:
    #: 2 (per-section) or 3 (volumetric)
    ndim: int = 2
    #: number of 2x poolings (levels below the top)
    depth: int = 3
    #: filters at the top level; doubled per level up to max_filters
    base_filters: int = 32
    max_filters: int = 256
    #: input channels (for the vessel model: adjacent sections stacked as channels)
    in_channels: int = 1
    out_channels: int = 1
    convs_per_level: int = 2
    padding: Literal["same", "valid"] = "same"
    upsampling: Literal["transpose", "resize"] = "transpose"
    norm: Literal["none", "batch"] = "none"
    activation: Literal["relu", "elu", "swish"] = "relu"
    dropout: float = 0.0
    #: 3D only: pooling factors per level (z, y, x); default 2 in every axis
    pool_zyx: Optional[tuple[tuple[int, int, int], ...]] = None

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if self.depth < 0 or self.depth > 6:
            raise ValueError(f"depth must be in 0..6, got {self.depth}")
        if self.base_filters < 1 or self.max_filters < self.base_filters:
            raise ValueError(f"need 1 <= base_filters <= max_filters, got {self.base_filters}, {self.max_filters}")
        if self.in_channels < 1 or self.out_channels < 1 or self.convs_per_level < 1:
            raise ValueError("in_channels, out_channels and convs_per_level must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pool_zyx is not None:
            if self.ndim != 3:
                raise ValueError("pool_zyx is for ndim=3 only")
            if len(self.pool_zyx) != self.depth or any(len(p) != 3 or min(p) < 1 for p in self.pool_zyx):
                raise ValueError(f"pool_zyx needs {self.depth} entries of 3 positive ints")

    def filters(self, level: int) -> int:
        return int(min(self.base_filters * 2**level, self.max_filters))

    def pools(self) -> list[tuple[int, ...]]:
        if self.pool_zyx is not None:
            return [tuple(p) for p in self.pool_zyx]
        return [(2,) * self.ndim] * self.depth

    def size_multiple(self) -> tuple[int, ...]:
        """Input sizes must be multiples of this per axis (product of the poolings)."""
        out = np.ones(self.ndim, dtype=int)
        for p in self.pools():
            out *= np.asarray(p)
        return tuple(int(v) for v in out)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["pool_zyx"] = None if self.pool_zyx is None else [list(p) for p in self.pool_zyx]
        return d

    @classmethod
    def from_json(cls, data: dict) -> "UNetConfig":
        data = dict(data)
        if data.get("pool_zyx") is not None:
            data["pool_zyx"] = tuple(tuple(int(v) for v in p) for p in data["pool_zyx"])
        return cls(**data)


def valid_margin(cfg: UNetConfig) -> int:
    """Pixels lost on each side with ``padding="valid"`` (2D/3D isotropic pools), 0 for "same"."""
    if cfg.padding == "same":
        return 0
    # down path: each conv loses 1 per side at its level's scale; up path likewise
    margin, scale = 0, 1
    for _level in range(cfg.depth):
        margin += cfg.convs_per_level * scale
        scale *= 2
    margin += cfg.convs_per_level * scale  # bottleneck
    for _level in reversed(range(cfg.depth)):
        scale //= 2
        margin += cfg.convs_per_level * scale + (scale if cfg.upsampling == "resize" else 0)
    return margin


def build_unet(cfg: UNetConfig, name: str = "unet"):
    """The Keras model (logits out). Spatial input size is left open (None)."""
    import tensorflow as tf

    L = tf.keras.layers
    nd = cfg.ndim
    Conv = L.Conv2D if nd == 2 else L.Conv3D
    ConvT = L.Conv2DTranspose if nd == 2 else L.Conv3DTranspose
    Pool = L.MaxPooling2D if nd == 2 else L.MaxPooling3D
    Up = L.UpSampling2D if nd == 2 else L.UpSampling3D
    k = (3,) * nd

    def block(x, filters, tag):
        for i in range(cfg.convs_per_level):
            x = Conv(
                filters,
                k,
                padding=cfg.padding,
                use_bias=cfg.norm == "none",
                kernel_initializer="he_normal",
                name=f"{tag}_conv{i}",
            )(x)
            if cfg.norm == "batch":
                x = L.BatchNormalization(name=f"{tag}_bn{i}")(x)
            x = L.Activation(cfg.activation, name=f"{tag}_act{i}")(x)
        return x

    inp = tf.keras.Input(shape=(None,) * nd + (cfg.in_channels,), name="image")
    x = inp
    skips = []
    pools = cfg.pools()
    for level in range(cfg.depth):
        x = block(x, cfg.filters(level), f"down{level}")
        skips.append(x)
        x = Pool(pools[level], name=f"pool{level}")(x)
    x = block(x, cfg.filters(cfg.depth), "bottom")
    if cfg.dropout:
        x = L.Dropout(cfg.dropout, name="bottom_dropout")(x)
    for level in reversed(range(cfg.depth)):
        f = cfg.filters(level)
        if cfg.upsampling == "transpose":
            x = ConvT(f, pools[level], strides=pools[level], kernel_initializer="he_normal", name=f"up{level}")(x)
        else:
            x = Up(pools[level], name=f"up{level}_resize")(x)
            x = Conv(f, k, padding=cfg.padding, kernel_initializer="he_normal", name=f"up{level}")(x)
        skip = skips[level]
        if cfg.padding == "valid":
            skip = _center_crop(skip, x, nd, f"crop{level}")
        x = L.Concatenate(name=f"concat{level}")([skip, x])
        x = block(x, f, f"dec{level}")
    out = Conv(
        cfg.out_channels,
        (1,) * nd,
        padding="same",
        name="logits",
        bias_initializer=tf.keras.initializers.Constant(-2.0),
    )(x)
    return tf.keras.Model(inp, out, name=name)


def _center_crop(skip, target, nd, name):
    """Crop ``skip`` to ``target``'s spatial size, centred (for "valid" padding)."""
    import tensorflow as tf

    def crop(args):
        s, t = args
        ss, ts = tf.shape(s), tf.shape(t)
        b = [(ss[i] - ts[i]) // 2 for i in range(1, nd + 1)]
        if nd == 2:
            return s[:, b[0] : b[0] + ts[1], b[1] : b[1] + ts[2], :]
        return s[:, b[0] : b[0] + ts[1], b[1] : b[1] + ts[2], b[2] : b[2] + ts[3], :]

    return tf.keras.layers.Lambda(crop, name=name)([skip, target])


def count_params(model) -> int:
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))
