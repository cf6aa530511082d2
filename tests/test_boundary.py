"""The boundary model and the learned-boundary segmentation (issue 19): training targets and
their geometry under augmentation, the watershed + agglomeration on known boundaries,
`connectome predict-boundaries` (blockwise == whole volume, resume, channels, bad input), the
shipped boundary model on an unseen volume, and the FFN agglomeration's pieces."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from conftest import run_cli, tree_digest

from connectome.evaluate.segmentation import contingency_from_arrays, segmentation_metrics

# ---------------------------------------------------------------------------------------------
# targets


def test_affinity_targets_of_a_hand_built_volume():
    from unet.boundary_data import affinities_from_labels

    lab = np.zeros((3, 4, 4), np.int64)
    lab[:, :, :2] = 1
    lab[:, :, 2:] = 2
    lab[2, :, 2:] = 3  # section 2 has another object on the right
    lab[1, 0, 0] = 0  # one background voxel
    padded = np.pad(lab, 1, mode="edge")
    aff = affinities_from_labels(padded)
    assert aff.shape == (3, 3, 4, 4)
    # x: the border between x = 1 and x = 2 is the only 0 (besides the background voxel)
    assert (aff[2][:, :, 2] == 0).all() and aff[2][0, :, 1].all() and aff[2][0, :, 3].all()
    # z: section 2's right half changed id; section 0 is compared with its edge copy (itself)
    assert (aff[0][2, :, 2:] == 0).all() and aff[0][2, 1:, :2].all() and aff[0][0].all()
    # background: no affinity to or from it
    assert aff[:, 1, 0, 0].sum() == 0 and aff[0][2, 0, 0] == 0 and aff[2][1, 0, 1] == 0


def test_boundary_target_is_the_pooled_membrane_line():
    from unet.boundary_data import boundary_full_res, make_boundary_target

    neu = np.ones((1, 8, 8), np.uint64)
    neu[:, :, 5:] = 2
    full = boundary_full_res(neu)
    assert full[0, :, 4].all() and full[0, :, 5].all() and not full[0, :, :4].any() and not full[0, :, 6:].any()
    pooled = make_boundary_target(neu, 2)
    assert pooled.shape == (1, 4, 4)
    assert (pooled[0, :, 2] == 1).all() and not pooled[0, :, :2].any() and not pooled[0, :, 3].any()


def test_crop_and_augmentation_keep_image_labels_and_boundary_aligned():
    """The image is a function of the labels: after any flip / rotation / zoom the affinities
    computed from the augmented label crop must sit on the augmented image's edges."""
    from unet.augment import AugmentConfig
    from unet.boundary_data import BoundaryVolume, augment, crop_example, targets
    from unet.data import IntensityStats

    rng = np.random.default_rng(3)
    labels = rng.integers(1, 40, size=(12, 40, 40)).repeat(2, axis=1).repeat(2, axis=2)[:, :64, :64]
    image = (labels % 17).astype(np.float32) / 16.0
    bnd = np.zeros(labels.shape, np.uint8)
    bnd[:, 1:, :] |= labels[:, 1:, :] != labels[:, :-1, :]
    vol = BoundaryVolume(None, image, bnd, labels.astype(np.int64), (40, 16, 16), 1, IntensityStats(0.1, 0.5, 0.9))
    off = AugmentConfig(
        section_jitter=0,
        contrast_range=(1, 1),
        brightness=0,
        gamma_range=(1, 1),
        illumination=0,
        blur_prob=0,
        noise_prob=0,
        defect_prob=0,
    )
    for seed in range(12):
        r = np.random.default_rng(seed)
        img, b, lab = crop_example(vol, (6, 30, 33), (8, 24, 24), 1.0)
        assert np.array_equal(img, (lab[1:-1, 1:-1, 1:-1] % 17).astype(np.float32) / 16.0)
        img, b, lab, _, _ = augment(img, b, lab, r, off)
        core = lab[1:-1, 1:-1, 1:-1]
        np.testing.assert_allclose(img, (core % 17).astype(np.float32) / 16.0, atol=1e-6)
        t = targets(b, lab)
        assert t.shape == (8, 24, 24, 4)
        np.testing.assert_array_equal(t[..., 2], (core == lab[1:-1, :-2, 1:-1]).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# the watershed on known boundaries


def _oracle(neurons: np.ndarray, sigma: float = 1.0, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """(4, z, y, x) float: blurred, noisy true boundaries and the true affinities."""
    from scipy import ndimage

    from unet.boundary_data import boundary_full_res

    b = boundary_full_res(neurons).astype(np.float32)
    b = np.stack([ndimage.gaussian_filter(s, sigma) for s in b])
    b = np.clip(b + np.random.default_rng(seed).normal(0, noise, b.shape), 0, 1)
    aff = np.stack([(np.roll(neurons, 1, axis=d) == neurons) & (neurons != 0) for d in range(3)]).astype(np.float32)
    return np.concatenate([b[None], aff])


@pytest.fixture(scope="module")
def small_truth(tmp_path_factory):
    from connectome.synth import generate

    syn = generate(tmp_path_factory.mktemp("bnd") / "syn", preset="small", seed=431, shape_zyx=(16, 128, 128))
    g = zarr.open_group(str(syn / "truth.zarr"), mode="r")
    return syn, np.asarray(g["neurons"][:]), np.asarray(g["vessels"][:])


def test_watershed_recovers_the_truth_from_true_affinities(small_truth):
    from ffn.watershed import WatershedConfig, segment_watershed

    _, neurons, vessels = small_truth
    b4 = _oracle(neurons)
    seg = segment_watershed(b4, WatershedConfig(), mask=vessels > 0)
    m = segmentation_metrics(contingency_from_arrays(neurons, seg, vessels))
    assert m["arand_error"] < 0.06, m
    assert not seg[vessels > 0].any()
    # deterministic
    np.testing.assert_array_equal(seg, segment_watershed(b4, WatershedConfig(), mask=vessels > 0))
    # derived affinities (no z information) merge across sections: the learned ones matter
    m2 = segmentation_metrics(
        contingency_from_arrays(
            neurons, segment_watershed(b4, WatershedConfig(affinities="boundary"), mask=vessels > 0), vessels
        )
    )
    assert m2["arand_error"] > m["arand_error"]


def test_absorb_small_gives_small_objects_to_their_main_neighbour():
    from ffn.watershed import absorb_small

    lab = np.ones((1, 6, 6), np.uint64)
    lab[0, :, 4:] = 2
    lab[0, 2, 3] = 7  # one voxel: touches 1 (three faces) and 2 (one face)
    lab[0, 0, 0] = 0
    out = absorb_small(lab, 2)
    assert out[0, 2, 3] == 1 and out[0, 0, 0] == 0 and (out[0, :, 4:] == 2).all()


def test_contact_points_and_union_find():
    from ffn.agglomerate import contact_points, join

    lab = np.zeros((3, 6, 6), np.uint64)
    lab[:, :, :3], lab[:, :, 3:] = 1, 2
    lab[2] = 3
    c = contact_points(lab, np.array([[1, 2], [2, 1], [1, 3], [4, 5]]))
    assert c[0].tolist() == c[1].tolist() and c[0][2] == 3 and c[0][0] in (0, 1)  # on the x face, high side
    assert c[2][0] == 2 and lab[tuple(c[2])] == 3  # on the z face
    assert c[3].tolist() == [-1, -1, -1]
    out = join(lab, np.array([[2, 3]]))
    assert set(np.unique(out)) == {1, 2}


# ---------------------------------------------------------------------------------------------
# the stage and the shipped model

SHIPPED = __import__("pathlib").Path(__file__).resolve().parents[1] / "unet" / "models" / "boundary"


@pytest.fixture(scope="module")
def ws(small_truth, tmp_path_factory):
    pytest.importorskip("tensorflow")
    syn, _, _ = small_truth
    w = tmp_path_factory.mktemp("bndws") / "ws"
    r = run_cli("import", syn / "truth.zarr" / "raw", "--workspace", w, "--voxel-size", "40,8,8")
    assert r.returncode == 0, r.stderr
    return w


def test_predict_boundaries_blockwise_equals_whole_and_resumes(ws, small_truth, tmp_path):
    from unet.boundary import CHANNELS, predict_arrays

    syn, _, _ = small_truth
    w = tmp_path / "w"
    shutil.copytree(ws, w)
    r = run_cli(
        "predict-boundaries", "--workspace", w, "--block-shape", "8,64,64", "--executor", "local", "--workers", "2"
    )
    assert r.returncode == 0, r.stderr
    arr = zarr.open_group(str(w / "volume.zarr"), mode="r")["boundary"]
    assert arr.shape == (4, 16, 128, 128) and arr.dtype == np.uint8 and arr.attrs["channels"] == list(CHANNELS)
    got = np.asarray(arr[:])
    raw = np.asarray(zarr.open_group(str(syn / "truth.zarr"), mode="r")["raw"][:])
    np.testing.assert_array_equal(got, predict_arrays(raw, (40.0, 8.0, 8.0)))
    before = tree_digest(w / "volume.zarr")
    r = run_cli("predict-boundaries", "--workspace", w, "--block-shape", "8,64,64")
    assert r.returncode == 0 and "0 blocks processed, 8 already done" in r.stdout, r.stdout + r.stderr
    assert tree_digest(w / "volume.zarr") == before
    r = run_cli("info", "--workspace", w)
    assert "boundary" in r.stdout
    # exported to Neuroglancer: the boundary channel as an image layer, scale 0 == the array (x, y, z order)
    pytest.importorskip("cloudvolume")
    from cloudvolume import CloudVolume

    r = run_cli("export-precomputed", "--workspace", w)
    assert r.returncode == 0 and "boundary written" in r.stdout, r.stdout + r.stderr
    cv = CloudVolume(f"file://{w / 'precomputed' / 'boundary'}", progress=False)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0), got[0])
    assert json.loads((w / "precomputed" / "connectome.json").read_text())["layers"]["boundary"] == "image"
    # an unfinished boundary array (a block's marker gone, as after a kill) is not consumed
    markers = sorted((w / "blockwise" / "predict-boundaries" / "done").iterdir())
    markers[0].unlink()
    r = run_cli("segment", "--workspace", w)
    assert r.returncode == 2 and "unfinished (7 of 8 blocks" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_segment_needs_the_boundary_array_and_bad_models_exit_2(ws, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(ws, w)
    before = tree_digest(w)
    r = run_cli("segment", "--workspace", w)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'boundary'" in r.stderr and "connectome predict-boundaries" in r.stderr
    # a model of another task, a missing model
    syn_model = SHIPPED.parent / "synapse"
    r = run_cli("predict-boundaries", "--workspace", w, "--model", syn_model)
    assert r.returncode == 2 and "'synapse' model" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("predict-boundaries", "--workspace", w, "--model", tmp_path / "none")
    assert r.returncode == 2 and "not found" in r.stderr
    assert tree_digest(w) == before


def test_ffn_model_with_a_boundary_channel_needs_the_boundary_array(ws, tmp_path):
    pytest.importorskip("tensorflow")
    from ffn.model import FFNModelConfig, build_model
    from ffn.modeldir import write_model_dir

    cfg = FFNModelConfig(
        depth=1, features=2, fov_zyx=(5, 9, 9), deltas_zyx=(2, 3, 3), channels=("raw", "boundary"), anisotropic=True
    )
    m = build_model(cfg)
    assert m.input_shape[-1] == 3 and m.count_params() == cfg.n_parameters()
    mdir = tmp_path / "ffn"
    write_model_dir(mdir, {w.name: w.numpy() for w in m.weights}, cfg, (40, 8, 8), {})
    assert json.loads((mdir / "model.json").read_text())["architecture"]["channels"] == ["raw", "boundary"]
    w = tmp_path / "w"
    shutil.copytree(ws, w)
    r = run_cli("segment", "--workspace", w, "--method", "ffn", "--model", mdir)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'boundary'" in r.stderr and "raw, boundary" in r.stderr
    doc = json.loads((mdir / "model.json").read_text())
    doc["architecture"]["channels"] = ["raw", "membranes"]
    (mdir / "model.json").write_text(json.dumps(doc))
    r = run_cli("segment", "--workspace", w, "--method", "ffn", "--model", mdir)
    assert r.returncode == 2 and "channels" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_shipped_boundary_model_segments_an_unseen_volume(ws, small_truth, tmp_path):
    """Floor on a volume no model saw (seed 431, small preset): the watershed on the shipped
    model's boundaries beats the classical baseline clearly."""
    syn, neurons, vessels = small_truth
    scores = {}
    for method in ("watershed", "baseline"):
        w = tmp_path / method
        shutil.copytree(ws, w)
        if method == "watershed":
            assert run_cli("predict-boundaries", "--workspace", w).returncode == 0
        r = run_cli("segment", "--workspace", w, "--method", method)
        assert r.returncode == 0, r.stderr
        seg = np.asarray(zarr.open_group(str(w / "volume.zarr"), mode="r")["segmentation"][:])
        scores[method] = segmentation_metrics(contingency_from_arrays(neurons, seg, vessels))
    ws_, base = scores["watershed"], scores["baseline"]
    print({k: (round(v["arand_error"], 4), round(v["voi_sum"], 3)) for k, v in scores.items()})
    assert ws_["arand_error"] <= 0.12 and ws_["voi_sum"] <= 1.5
    assert ws_["arand_error"] < base["arand_error"] and ws_["voi_sum"] < base["voi_sum"]


def test_ffn_agglomeration_merges_only_what_both_floods_agree_on(small_truth):
    """Plumbing with scripted networks (no TensorFlow): a network that never moves decides no
    merge (the result is the watershed at the base threshold); one that floods everything merges
    every candidate pair (fewer objects, never more)."""
    from types import SimpleNamespace

    from ffn.agglomerate import FFNAgglomerationConfig, segment_ffn_agglomerate
    from ffn.inference import InferenceConfig
    from ffn.model import FFNModelConfig
    from ffn.watershed import WatershedConfig, segment_watershed
    from unet.data import intensity_stats

    syn, neurons, vessels = small_truth
    raw = np.asarray(zarr.open_group(str(syn / "truth.zarr"), mode="r")["raw"][:8, :96, :96])
    b4 = (_oracle(neurons[:8, :96, :96], noise=0.2) * 255).astype(np.uint8)
    b4[1:] = (0.5 * b4[1:] + 0.5 * (255 - b4[:1])).astype(np.uint8)  # blur the affinities: uncertain pairs
    model = FFNModelConfig(depth=1, features=1, fov_zyx=(5, 9, 9), deltas_zyx=(2, 3, 3), channels=("raw", "boundary"))
    ws_cfg = WatershedConfig()
    cfg = FFNAgglomerationConfig(
        base_threshold=0.2, band=0.7, box_zyx=(5, 17, 17), max_fovs_per_flood=40, decision="floods"
    )
    stats = intensity_stats(raw, 2)

    def run(bias):
        spec = SimpleNamespace(model=model)
        return segment_ffn_agglomerate(
            b4, raw, None, (40, 8, 8), 2, stats, ws_cfg, cfg, InferenceConfig(), (spec, lambda x: x[..., -1] + bias)
        )

    never, s0 = run(-4.0)
    base = segment_watershed(b4, WatershedConfig(merge_threshold=cfg.base_threshold))
    assert s0["decided"] > 0 and s0["merged"] == 0
    np.testing.assert_array_equal(never, base)
    always, s1 = run(6.0)
    assert s1["merged"] == s1["decided"] > 0 and s1["fovs"] > s0["fovs"]
    assert len(np.unique(always)) < len(np.unique(never))
    # a merge only joins whole segments of the base segmentation
    pairs = np.unique(np.stack([never.ravel(), always.ravel()], 1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)


def test_ffn_agglomeration_soft_decisions(small_truth):
    """decision soft (the default): one scripted forward pass per side; a network that gives the
    other segment high probability merges every decided pair, a low one none."""
    from types import SimpleNamespace

    from ffn.agglomerate import FFNAgglomerationConfig, segment_ffn_agglomerate
    from ffn.inference import InferenceConfig
    from ffn.model import FFNModelConfig
    from ffn.watershed import WatershedConfig, segment_watershed
    from unet.data import intensity_stats

    syn, neurons, _ = small_truth
    raw = np.asarray(zarr.open_group(str(syn / "truth.zarr"), mode="r")["raw"][:8, :96, :96])
    b4 = (_oracle(neurons[:8, :96, :96], noise=0.2) * 255).astype(np.uint8)
    b4[1:] = (0.5 * b4[1:] + 0.5 * (255 - b4[:1])).astype(np.uint8)
    model = FFNModelConfig(depth=1, features=1, fov_zyx=(5, 9, 9), deltas_zyx=(2, 3, 3), channels=("raw", "boundary"))
    cfg = FFNAgglomerationConfig(base_threshold=0.2, band=0.7, box_zyx=(5, 17, 17))
    assert cfg.decision == "soft"
    stats = intensity_stats(raw, 2)
    runs = {}
    for bias in (-4.0, 6.0):
        runs[bias] = segment_ffn_agglomerate(
            b4,
            raw,
            None,
            (40, 8, 8),
            2,
            stats,
            WatershedConfig(),
            cfg,
            InferenceConfig(),
            (SimpleNamespace(model=model), lambda x, b=bias: x[..., -1] + b),
        )
    (low, s0), (high, s1) = runs[-4.0], runs[6.0]
    assert s0["decided"] > 0 and s0["merged"] == 0 and s0["fovs"] == 2 * s0["decided"]
    np.testing.assert_array_equal(low, segment_watershed(b4, WatershedConfig(merge_threshold=0.2)))
    # merged unless the other segment has no voxel in the FOV around the seed
    assert s1["merged"] >= 0.8 * s1["decided"] and len(np.unique(high)) < len(np.unique(low))
