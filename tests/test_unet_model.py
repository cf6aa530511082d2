"""The U-Net builder (2D/3D, same/valid padding), the losses and the weights files."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from connectome.training import weights as wio  # noqa: E402
from unet.losses import LossConfig, bce, combined_loss, soft_dice_loss  # noqa: E402
from unet.model import UNetConfig, build_unet, count_params, valid_margin  # noqa: E402


def test_2d_same_padding_keeps_shape_and_argonne_size():
    cfg = UNetConfig(ndim=2, depth=3, base_filters=32, max_filters=256, in_channels=1)
    m = build_unet(cfg)
    assert m(np.zeros((2, 48, 64, 1), np.float32)).shape == (2, 48, 64, 1)
    # EM_mask-sized network: 3 pools, 32 -> 256 filters
    assert [cfg.filters(i) for i in range(4)] == [32, 64, 128, 256]
    assert 1.8e6 < count_params(m) < 2.1e6
    assert cfg.size_multiple() == (8, 8)


def test_valid_padding_crops_by_the_computed_margin():
    cfg = UNetConfig(ndim=2, depth=2, base_filters=4, max_filters=8, padding="valid")
    m = build_unet(cfg)
    out = m(np.zeros((1, 92, 92, 1), np.float32))
    margin = valid_margin(cfg)
    assert out.shape[1] == 92 - 2 * margin and margin == (92 - out.shape[1]) // 2 > 0


def test_3d_anisotropic_pools():
    cfg = UNetConfig(
        ndim=3,
        depth=2,
        base_filters=4,
        max_filters=8,
        in_channels=2,
        out_channels=3,
        pool_zyx=((1, 2, 2), (2, 2, 2)),
        upsampling="resize",
    )
    assert cfg.size_multiple() == (2, 4, 4)
    m = build_unet(cfg)
    assert m(np.zeros((1, 4, 16, 16, 2), np.float32)).shape == (1, 4, 16, 16, 3)
    assert UNetConfig.from_json(cfg.to_json()) == cfg


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        UNetConfig(ndim=4)
    with pytest.raises(ValueError):
        UNetConfig(base_filters=64, max_filters=32)
    with pytest.raises(ValueError):
        UNetConfig(ndim=2, depth=1, pool_zyx=((1, 2, 2),))


def test_losses_known_values():
    y = np.array([[[[1.0], [0.0]], [[1.0], [0.0]]]], np.float32)  # (1, 2, 2, 1)
    logits = np.array([[[[2.0], [-1.0]], [[0.0], [3.0]]]], np.float32)
    p = 1 / (1 + np.exp(-logits))
    want_bce = np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert float(bce(y, tf.constant(logits))) == pytest.approx(want_bce, rel=1e-5)
    want_dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    assert float(soft_dice_loss(y, tf.constant(logits))) == pytest.approx(want_dice, rel=1e-5)
    assert float(combined_loss(y, tf.constant(logits), LossConfig(1, 1))) == pytest.approx(
        want_bce + want_dice, rel=1e-5
    )
    perfect = np.where(y > 0, 20.0, -20.0).astype(np.float32)
    assert float(combined_loss(y, tf.constant(perfect))) < 1e-3
    w = np.array([[[[1.0], [0.0]], [[1.0], [0.0]]]], np.float32)  # ignore the x=1 column
    assert float(bce(y, tf.constant(logits), weight=w)) == pytest.approx(
        np.mean(-np.log(p[..., 0, :][w[..., 0, :] > 0])), rel=1e-5
    )


def test_weights_npz_roundtrip_and_mismatch(tmp_path):
    cfg = UNetConfig(depth=1, base_filters=4, max_filters=4, in_channels=3)
    m1, m2 = build_unet(cfg), build_unet(cfg)
    arrays = wio.variables_dict(m1.weights)
    wio.save_npz(arrays, tmp_path / "w.npz")
    wio.assign(m2.weights, wio.load_npz(tmp_path / "w.npz"))
    assert wio.digest(wio.variables_dict(m2.weights)) == wio.digest(arrays)
    other = build_unet(UNetConfig(depth=1, base_filters=4, max_filters=4, in_channels=1))
    with pytest.raises(ValueError, match="shape"):
        wio.assign(other.weights, arrays)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable weights file"):
        wio.load_npz(tmp_path / "bad.npz")
