"""Skeletons: the skeletonizer on tubes of known geometry, blockwise equals one block, file
formats round-trip, the `connectome skeletonize` command and its bad-input errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectome.cli import main
from connectome.config import BlockwiseConfig
from connectome.skeletons import Skeleton
from connectome.skeletons.skeletonize import SkeletonizeConfig, skeletonize_volume
from connectome.workspace import Workspace

VOXEL = (40.0, 8.0, 8.0)
SHAPE = (24, 48, 64)
BIG = 2**63 + 5


def tubes() -> np.ndarray:
    """Three neurites: along x lying across the z = 12 block border, along z, and a diagonal."""
    seg = np.zeros(SHAPE, np.uint64)
    seg[10:14, 20:26, :] = 5  # along x, z 10..13: the z border at 12 cuts it lengthwise
    seg[:, 2:8, 30:36] = BIG  # along z, a uint64 id above 2^63
    zz, yy, xx = np.indices(SHAPE)
    d = np.sqrt((8.0 * (yy - 30 - 0.3 * (xx - 32))) ** 2 + (40.0 * (zz - 5)) ** 2)
    seg[(d < 40) & (seg == 0)] = 9  # diagonal in y-x at z ~ 5
    return seg


def _cfg(block) -> SkeletonizeConfig:
    return SkeletonizeConfig(blockwise=BlockwiseConfig(block_shape_zyx=block), dust_voxels=0)


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    return max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max())


def test_straight_tube_known_skeleton():
    seg = np.zeros(SHAPE, np.uint64)
    seg[10:14, 20:26, :] = 5
    sk = skeletonize_volume(seg, VOXEL, _cfg(SHAPE))[5]
    assert sk.components()[0] == 1
    # one line along x through the whole volume: from the first to the last voxel centre
    assert sk.length_nm() == pytest.approx((SHAPE[2] - 1) * VOXEL[2], rel=0.02)
    assert np.ptp(sk.vertices_nm[:, 2]) == pytest.approx((SHAPE[2] - 1) * VOXEL[2])
    # on the axis: z in the tube's 4 sections, y within a voxel of the centre (23 * 8 nm)
    assert np.all((sk.vertices_nm[:, 0] > 10 * 40) & (sk.vertices_nm[:, 0] < 14 * 40))
    assert np.all(np.abs(sk.vertices_nm[:, 1] - 23 * 8) <= 8)
    assert sk.radii_nm is not None and np.all(sk.radii_nm > 0)


@pytest.mark.parametrize("block", [(12, 24, 32), (7, 13, 17)])
def test_blockwise_equals_one_block(block):
    seg = tubes()
    whole = skeletonize_volume(seg, VOXEL, _cfg(SHAPE))
    parts = skeletonize_volume(seg, VOXEL, _cfg(block))
    assert sorted(whole) == sorted(parts) == [5, 9, BIG]
    for i in whole:
        a, b = whole[i], parts[i]
        assert b.components()[0] == 1, f"segment {i} breaks at a block border"
        assert b.length_nm() == pytest.approx(a.length_nm(), rel=0.05)
        assert _hausdorff(a.vertices_nm, b.vertices_nm) <= 2 * max(VOXEL)  # equal up to node spacing


def test_deterministic_and_dust():
    seg = tubes()
    seg[0, 40:42, 0:2] = 77  # 4 voxels
    a = skeletonize_volume(
        seg, VOXEL, SkeletonizeConfig(blockwise=BlockwiseConfig(block_shape_zyx=(12, 24, 32)), dust_voxels=10)
    )
    b = skeletonize_volume(
        seg, VOXEL, SkeletonizeConfig(blockwise=BlockwiseConfig(block_shape_zyx=(12, 24, 32)), dust_voxels=10)
    )
    assert 77 not in a and sorted(a) == [5, 9, BIG]
    for i in a:
        np.testing.assert_array_equal(a[i].vertices_nm, b[i].vertices_nm)
        np.testing.assert_array_equal(a[i].edges, b[i].edges)


def test_formats_round_trip(tmp_path):
    from connectome.skeletons.precomputed import INFO, read_skeletons, write_skeletons
    from connectome.skeletons.swc import read_swc, write_swc

    sk = Skeleton(
        np.array([[0.0, 1, 2], [40, 9, 10], [80, 17, 18], [40, 30, 40]]),
        np.array([[0, 1], [1, 2], [1, 3]]),
        np.array([5, 6, 7, 8], np.float32),
    )
    write_skeletons(tmp_path / "sk", {BIG: sk})
    assert json.loads((tmp_path / "sk" / "info").read_text())["@type"] == INFO["@type"] == "neuroglancer_skeletons"
    back = read_skeletons(tmp_path / "sk")[BIG]
    np.testing.assert_allclose(back.vertices_nm, sk.vertices_nm)
    np.testing.assert_array_equal(back.edges, sk.edges)
    np.testing.assert_allclose(back.radii_nm, sk.radii_nm)
    # on disk: x, y, z order
    raw = (tmp_path / "sk" / str(BIG)).read_bytes()
    assert np.frombuffer(raw, "<f4", 3, 8).tolist() == [2.0, 1.0, 0.0]
    write_swc(tmp_path / "a.swc", sk)
    s2 = read_swc(tmp_path / "a.swc")
    assert s2.length_nm() == pytest.approx(sk.length_nm(), rel=1e-5)
    assert s2.components()[0] == 1 and len(s2.edges) == 3


def test_merged_duplicates_joins_pieces():
    a = Skeleton(np.array([[0.0, 0, 0], [0, 0, 8]]), np.array([[0, 1]]))
    b = Skeleton(np.array([[0.0, 0, 8], [0, 0, 16]]), np.array([[0, 1]]))
    m = Skeleton.concat([a, b]).merged_duplicates()
    assert m.n_vertices == 3 and m.components()[0] == 1 and m.length_nm() == pytest.approx(16)


# ------------------------------------------------------------------ the command
def _workspace(path, seg=None):
    ws = Workspace.create(path, SHAPE, VOXEL)
    ws.require_array("segmentation", "uint64", (12, 24, 32))[:] = tubes() if seg is None else seg
    return path


def test_skeletonize_command(tmp_path, capsys):
    ws = _workspace(tmp_path / "ws")
    args = ["skeletonize", "--workspace", str(ws), "--block-shape", "12,24,32", "--swc", "--executor", "serial", "-q"]
    assert main(args) == 0
    assert "3 skeletons" in capsys.readouterr().out
    from connectome.skeletons.precomputed import read_skeletons

    skels = read_skeletons(ws / "skeletons" / "precomputed")
    assert sorted(skels) == [5, 9, BIG]
    assert all(s.components()[0] == 1 for s in skels.values())
    assert (ws / "skeletons" / "swc" / f"{BIG}.swc").is_file()
    assert sorted(p.name for p in (ws / "precomputed" / "segmentation" / "skeletons").iterdir()) == sorted(
        ["info", "5", "9", str(BIG)]
    )
    assert main(args) == 0  # idempotent
    assert "up to date" in capsys.readouterr().out
    # the export links them from the segmentation layer's info (and keeps them when it rewrites it)
    assert main(["export-precomputed", "--workspace", str(ws), "-q"]) == 0
    info = json.loads((ws / "precomputed" / "segmentation" / "info").read_text())
    assert info["skeletons"] == "skeletons"
    assert (ws / "precomputed" / "segmentation" / "skeletons" / "5").is_file()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_missing_segmentation(tmp_path, capsys):
    ws = Workspace.create(tmp_path / "ws", SHAPE, VOXEL)
    ws.require_array("raw", "uint8", (12, 24, 32))
    assert main(["skeletonize", "--workspace", str(tmp_path / "ws")]) == 2
    assert "segmentation" in _one_error_line(capsys)
    assert main(["skeletonize", "--workspace", str(tmp_path / "nope")]) == 2
    assert "nope" in _one_error_line(capsys)
    assert not (tmp_path / "nope").exists()


def test_bad_input_segmentation_of_another_shape(tmp_path, capsys):
    ws = _workspace(tmp_path / "ws")
    Workspace.open(ws).group.create_array(
        "other", shape=(5, 6, 7), chunks=(5, 6, 7), dtype="uint64", attributes={"voxel_size_nm": list(VOXEL)}
    )
    assert main(["skeletonize", "--workspace", str(ws), "--segmentation", "other"]) == 2
    line = _one_error_line(capsys)
    assert "other" in line and "shape" in line


@pytest.mark.parametrize("aniso", ["0,8,8", "40,0,8", "40,8"])
def test_bad_input_anisotropy(tmp_path, capsys, aniso):
    ws = _workspace(tmp_path / "ws")
    assert main(["skeletonize", "--workspace", str(ws), "--anisotropy", aniso]) == 2
    assert "--anisotropy" in _one_error_line(capsys)


def test_incomplete_segmentation_refused(tmp_path, capsys):
    ws = _workspace(tmp_path / "ws")
    Workspace.open(ws).mark_incomplete("segmentation", "segment-write")
    assert main(["skeletonize", "--workspace", str(ws)]) == 2
    assert "incomplete" in _one_error_line(capsys)


def test_config_defaults_pinned_and_yaml(tmp_path, capsys):
    from connectome.config import config_to_dict, load_config

    assert config_to_dict(SkeletonizeConfig()) == {
        "blockwise": {"block_shape_zyx": [64, 256, 256], "max_retries": 2},
        "input": "segmentation",
        "teasar_scale": 1.5,
        "teasar_const_nm": 300.0,
        "dust_voxels": 100,
        "halo_nm": 480.0,
        "join_radius_nm": 0.0,
        "swc": False,
    }
    (tmp_path / "c.yaml").write_text("halo_nm: 240\nblockwise: {block_shape_zyx: [12, 24, 32]}\n")
    cfg = load_config(SkeletonizeConfig, tmp_path / "c.yaml")
    assert cfg.halo_nm == 240.0 and cfg.blockwise.block_shape_zyx == (12, 24, 32)
    (tmp_path / "bad.yaml").write_text("halo_nm: -1\n")
    ws = _workspace(tmp_path / "ws")
    assert main(["skeletonize", "--workspace", str(ws), "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "halo_nm" in _one_error_line(capsys)


@pytest.mark.timeout(120)
def test_killed_run_resumes_to_the_same_skeletons(tmp_path):
    """SIGKILL mid-run, rerun: only the missing blocks run, and the skeletons equal an
    uninterrupted run's byte for byte."""
    from conftest import kill_mid_run, run_cli, tree_digest

    args = ["skeletonize", "--block-shape", "12,24,32", "--executor", "serial", "--no-progress"]
    ref = _workspace(tmp_path / "ref")
    assert run_cli(*args, "--workspace", ref).returncode == 0
    ws = _workspace(tmp_path / "ws")
    kill_mid_run([*args, "--workspace", ws], ws / "blockwise" / "skeletonize" / "done", at_least=2, delay_s=0.4)
    done = len(list((ws / "blockwise" / "skeletonize" / "done").iterdir()))
    assert 2 <= done < 8 and not (ws / "skeletons" / "summary.json").exists()
    r = run_cli(*args, "--workspace", ws)
    assert r.returncode == 0, r.stderr
    assert f"{done} already done" in r.stderr
    assert tree_digest(ws / "skeletons" / "precomputed") == tree_digest(ref / "skeletons" / "precomputed")
