"""Losses for U-Net logits (2D or 3D, channels last): binary cross-entropy, soft Dice, and
their weighted sum. Targets may be soft (fractions in [0, 1], e.g. the vessel fraction of a
downsampled pixel). An optional ``weight`` map (same shape as the target) masks or
re-weights voxels (0 = ignore)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossConfig:
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    #: additive smoothing of the Dice ratio (in voxels)
    dice_smooth: float = 1.0
    #: BCE weight of positive voxels (> 1 helps very sparse targets)
    pos_weight: float = 1.0

    def __post_init__(self):
        if self.bce_weight < 0 or self.dice_weight < 0 or self.bce_weight + self.dice_weight == 0:
            raise ValueError("bce_weight and dice_weight must be >= 0 and not both 0")
        if self.dice_smooth <= 0 or self.pos_weight <= 0:
            raise ValueError("dice_smooth and pos_weight must be > 0")


def bce(y_true, logits, weight=None, pos_weight: float = 1.0):
    import tensorflow as tf

    y_true = tf.cast(y_true, logits.dtype)
    if pos_weight != 1.0:
        per = tf.nn.weighted_cross_entropy_with_logits(y_true, logits, pos_weight)
    else:
        per = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits)
    if weight is None:
        return tf.reduce_mean(per)
    weight = tf.cast(weight, per.dtype)
    return tf.reduce_sum(per * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def soft_dice_loss(y_true, logits, weight=None, smooth: float = 1.0):
    """1 - Dice of sigmoid(logits) and the target, pooled over the whole batch (so empty
    examples do not produce 0/0)."""
    import tensorflow as tf

    y_true = tf.cast(y_true, logits.dtype)
    p = tf.sigmoid(logits)
    if weight is not None:
        weight = tf.cast(weight, p.dtype)
        p, y_true = p * weight, y_true * weight
    inter = tf.reduce_sum(p * y_true)
    denom = tf.reduce_sum(p) + tf.reduce_sum(y_true)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def combined_loss(y_true, logits, cfg: LossConfig = LossConfig(), weight=None):
    total = 0.0
    if cfg.bce_weight:
        total += cfg.bce_weight * bce(y_true, logits, weight, cfg.pos_weight)
    if cfg.dice_weight:
        total += cfg.dice_weight * soft_dice_loss(y_true, logits, weight, cfg.dice_smooth)
    return total


def np_bce(y_true, prob, eps: float = 1e-7) -> float:
    """Mean BCE in numpy from probabilities (for validation outside TF graphs)."""
    import numpy as np

    p = np.clip(prob.astype(np.float64), eps, 1 - eps)
    t = y_true.astype(np.float64)
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))
