"""U-Net data geometry with known answers (no TensorFlow): mirroring, area downsampling,
example crops, augmentation, tile geometry, upsampling, and the post-processing rule that
makes blockwise masks equal whole-volume masks."""

from __future__ import annotations

import numpy as np
import pytest

from unet.augment import AugmentConfig, dihedral, geometric_augment, intensity_augment
from unet.data import (
    ExampleSpec,
    IntensityStats,
    LabelledVolume,
    adjust_stats,
    crop_example,
    downsample_mean,
    intensity_stats,
    model_factor,
    reflect_index,
    take_reflected,
)
from unet.infer import (
    PostprocessConfig,
    TileGeometry,
    bilinear_matrix,
    postprocess,
    postprocess_volume,
    read_prob_for_mask,
)


def test_reflect_index_is_numpy_symmetric_padding():
    n = 5
    idx = reflect_index(np.arange(-7, 13), n)
    want = np.pad(np.arange(n), (7, 8), mode="symmetric")
    np.testing.assert_array_equal(idx, want)
    assert reflect_index(np.array([-1, 5]), 5).tolist() == [0, 4]


def test_take_reflected_equals_padding_and_plain_slices():
    a = np.random.default_rng(0).integers(0, 256, (4, 30, 20), dtype=np.uint8)
    got = take_reflected(a, (-2, -5, -31), (7, 40, 3))
    want = np.pad(a, ((2, 3), (5, 10), (31, 0)), mode="symmetric")[:, :, :34]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(take_reflected(a, (1, 2, 3), (3, 9, 11)), a[1:3, 2:9, 3:11])


def test_downsample_mean_is_exact_area_average():
    a = np.random.default_rng(1).integers(0, 256, (2, 12, 8), dtype=np.uint8)
    want = a.astype(np.float64).reshape(2, 3, 4, 2, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(downsample_mean(a, 4), want, atol=1e-5)
    # the same pixels give the same value wherever the crop starts (on the factor grid)
    np.testing.assert_array_equal(downsample_mean(a[:, 4:12, 4:8], 4), downsample_mean(a, 4)[:, 1:3, 1:2])
    with pytest.raises(ValueError):
        downsample_mean(a[:, :10], 4)


def test_model_factor_accepts_near_integers_only():
    assert model_factor(32, 8, "x") == 4
    assert model_factor(32, 7, "x") == 5  # 35 nm: 9% off, accepted
    assert model_factor(32, 40, "x") == 1  # 40 nm data for a 32 nm model: 25% off, accepted
    from connectome.errors import UserInputError

    with pytest.raises(UserInputError, match="incompatible"):
        model_factor(32, 64, "workspace W")


def _vol(shape=(5, 64, 64)):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, shape, dtype=np.uint8)
    label = np.zeros(shape, np.uint8)
    label[:, 20:40, 10:30] = 1
    return LabelledVolume(path=__import__("pathlib").Path("v"), raw=raw, label=label, voxel_size_nm=(40, 8, 8))


def test_crop_example_at_scale_one_is_the_inference_downsampling():
    vol = _vol()
    img, lab = crop_example(vol, factor=4, z_context=3, tile=8, spec=ExampleSpec(0, 0, (32, 32), 1.0))
    assert img.shape == (8, 8, 3) and lab.shape == (8, 8, 1)
    # centre 32 -> crop [16, 48) raw; section 0 with mirrored section -1 == section 0
    np.testing.assert_allclose(img[..., 1], downsample_mean(vol.raw[0, 16:48, 16:48], 4) / 255, atol=1e-6)
    np.testing.assert_allclose(img[..., 0], img[..., 1], atol=1e-6)
    np.testing.assert_allclose(img[..., 2], downsample_mean(vol.raw[1, 16:48, 16:48], 4) / 255, atol=1e-6)
    np.testing.assert_allclose(lab[..., 0], downsample_mean(vol.label[0, 16:48, 16:48], 4), atol=1e-6)
    img2, lab2 = crop_example(vol, 4, 3, 8, ExampleSpec(0, 2, (32, 32), 1.5))  # zoomed out, resampled
    assert img2.shape == (8, 8, 3) and 0 <= lab2.min() and lab2.max() <= 1


def test_dihedral_moves_image_and_label_together():
    img = np.zeros((6, 6, 2), np.float32)
    lab = np.zeros((6, 6, 1), np.float32)
    img[1, 3] = 1  # off both diagonals and midlines: 8 distinct images
    lab[1, 3] = 1
    seen = set()
    for k in range(8):
        i2, l2 = dihedral([img, lab], k)
        assert np.argwhere(i2[..., 0]).tolist() == np.argwhere(l2[..., 0]).tolist()
        seen.add(tuple(np.argwhere(l2[..., 0])[0]))
    assert len(seen) == 8  # the 8 symmetries are distinct


def test_augmentation_is_seeded_bounded_and_keeps_labels_aligned():
    vol = _vol()
    img, lab = crop_example(vol, 4, 3, 16, ExampleSpec(0, 2, (30, 20), 1.0))
    cfg = AugmentConfig(elastic_prob=1.0, blur_prob=1.0, noise_prob=1.0, defect_prob=1.0)
    a = geometric_augment(img, lab, np.random.default_rng(5), cfg)
    b = geometric_augment(img, lab, np.random.default_rng(5), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    assert abs(float(a[1].sum()) - float(lab.sum())) < 0.15 * float(lab.sum())  # elastic keeps the area
    out, g, sigma = intensity_augment(a[0], np.random.default_rng(6), cfg)
    assert out.min() >= 0 and out.max() <= 1 and sigma >= 0
    v = np.linspace(0, 1, 11, dtype=np.float32)
    assert np.all(np.diff(g(v)) >= 0)  # the point map is monotone, so percentiles map through it
    st = adjust_stats(IntensityStats(0.2, 0.5, 0.8), g, 0.0)
    np.testing.assert_allclose([st.p5, st.p50, st.p95], g(np.array([0.2, 0.5, 0.8], np.float32)), atol=1e-6)


def test_intensity_stats_standardise_affine_changes_away():
    vol = _vol((4, 128, 128))
    s1 = intensity_stats(vol.raw, 4)
    darker = (vol.raw.astype(np.float32) * 0.5 + 20).astype(np.uint8)
    s2 = intensity_stats(darker, 4)
    x1 = s1.standardize(downsample_mean(vol.raw[1], 4) / 255)
    x2 = s2.standardize(downsample_mean(darker[1], 4) / 255)
    assert np.corrcoef(x1.ravel(), x2.ravel())[0, 1] > 0.99
    assert abs(float(x1.mean() - x2.mean())) < 0.05 and abs(float(x1.std() / x2.std()) - 1) < 0.05


def test_tile_cores_cover_every_pixel_exactly_once():
    g = TileGeometry(factor=4, tile=64, margin=8, z_context=3)
    assert g.core == 48 and g.core_raw == 192
    covered = np.zeros(1000, int)
    for j in g.tile_range(0, 1000):
        covered[j * g.core_raw : (j + 1) * g.core_raw][: max(0, 1000 - j * g.core_raw)] += 1
    assert np.all(covered == 1)
    assert list(g.tile_range(190, 200)) == [0, 1]
    with pytest.raises(ValueError):
        TileGeometry(4, 16, 8, 3)


def test_bilinear_matrix_interpolates_linear_ramps_exactly():
    m = bilinear_matrix(n_out=48, n_in=16, factor=4, offset=2)
    np.testing.assert_allclose(m.sum(axis=1), 1, atol=1e-6)
    ramp = np.arange(16, dtype=np.float32)
    # raw pixel r sits at model coordinate (r + 0.5)/4 - 0.5 + 2
    np.testing.assert_allclose(m @ ramp, (np.arange(48) + 0.5) / 4 - 0.5 + 2, atol=1e-5)


def _blobs(shape, seed):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.normal(size=shape), (0, 3, 3))
    prob = np.clip((field - field.mean()) / field.std() * 90 + 100, 0, 255).astype(np.uint8)
    prob[:, 30:70, 40:90] = 250  # a big object with holes and specks around
    prob[:, 45:50, 60:65] = 0
    prob[:, 10:12, 5:7] = 255
    return prob


@pytest.mark.parametrize("z_smooth", [1, 3])
def test_postprocess_blockwise_equals_whole_volume(z_smooth):
    prob = _blobs((5, 120, 150), seed=3)
    cfg = PostprocessConfig(threshold=0.55, min_area_um2=0.004, max_extent_um=0.2, z_smooth=z_smooth)
    vy = 8.0  # extent 25 px, min area 63 px
    whole = postprocess_volume(prob, cfg, vy)
    assert whole.dtype == np.uint8 and set(np.unique(whole)) <= {0, 1}
    raw_mask = (prob >= cfg.threshold_u8()).astype(np.uint8)
    assert (whole != raw_mask).sum() > 0 or z_smooth > 1  # the rule changed something
    halo = cfg.extent_px(vy) + 1
    zh = z_smooth // 2
    for block in [(2, 37, 41), (5, 64, 64), (1, 19, 150)]:
        out = np.zeros_like(whole)
        for z0 in range(0, 5, block[0]):
            for y0 in range(0, 120, block[1]):
                for x0 in range(0, 150, block[2]):
                    end = (min(5, z0 + block[0]), min(120, y0 + block[1]), min(150, x0 + block[2]))
                    data, inner = read_prob_for_mask(prob, (z0, y0, x0), end, zh, halo)
                    out[z0 : end[0], y0 : end[1], x0 : end[2]] = postprocess(data, cfg, vy, inner, zh)
        np.testing.assert_array_equal(out, whole)


def test_postprocess_fills_holes_and_drops_specks():
    prob = np.zeros((1, 60, 60), np.uint8)
    prob[0, 10:40, 10:40] = 255
    prob[0, 20:25, 20:25] = 0  # a hole: filled
    prob[0, 50:52, 50:52] = 255  # a speck: removed
    prob[0, 0:30, 55:60] = 255  # touches the volume border, small but kept if large enough
    cfg = PostprocessConfig(threshold=0.5, min_area_um2=0.005, max_extent_um=1.0)
    m = postprocess_volume(prob, cfg, 8.0)[0]
    assert m[22, 22] == 1 and m[51, 51] == 0 and m[15, 57] == 1


def test_model_packages_import_without_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, unet, unet.model, unet.losses, unet.augment, unet.data, unet.infer, unet.modeldir, "
        "unet.train, unet.vessel, connectome.training, connectome.training.loop, connectome.training.distributed\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'horovod', 'keras'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
