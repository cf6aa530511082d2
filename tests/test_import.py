"""`connectome import`: every source type, uint16 rescaling, and bad input (exit 2, workspace
untouched)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from conftest import tree_digest
from PIL import Image

from connectome.sources import open_source
from connectome.stages.intensity import sample_sections
from connectome.workspace import Workspace


def _write_sources(tmp_path, vol):
    srcs = {}
    tifffile.imwrite(tmp_path / "stack.tif", vol)
    srcs["tiff"] = str(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "stack_zlib.tif", vol, compression="zlib")
    srcs["tiff-compressed"] = str(tmp_path / "stack_zlib.tif")
    folder = tmp_path / "pngs"
    folder.mkdir()
    for z in range(vol.shape[0]):  # names sort naturally: s2 before s10
        Image.fromarray(vol[z]).save(folder / f"s{z}.png")
    srcs["png-folder"] = str(folder)
    tfolder = tmp_path / "tifs"
    tfolder.mkdir()
    for z in range(vol.shape[0]):
        tifffile.imwrite(tfolder / f"section_{z:03d}.tif", vol[z])
    srcs["tif-folder"] = str(tfolder)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("/em/raw", data=vol, chunks=(4, 32, 32))
    srcs["hdf5"] = str(tmp_path / "v.h5") + ":/em/raw"
    z3 = zarr.open_array(
        str(tmp_path / "v3.zarr"), mode="w", shape=vol.shape, chunks=(5, 16, 16), dtype=vol.dtype, zarr_format=3
    )
    z3[:] = vol
    srcs["zarr3"] = str(tmp_path / "v3.zarr")
    z2 = zarr.open_array(
        str(tmp_path / "v2.zarr"), mode="w", shape=vol.shape, chunks=(5, 16, 16), dtype=vol.dtype, zarr_format=2
    )
    z2[:] = vol
    srcs["zarr2"] = str(tmp_path / "v2.zarr")
    return srcs


def test_every_source_type_imports_exactly(tmp_path, volume_u8, cli):
    for kind, src in _write_sources(tmp_path, volume_u8).items():
        ws = tmp_path / f"ws_{kind}"
        r = cli(
            "import",
            src,
            "--workspace",
            ws,
            "--voxel-size",
            "40,8,8",
            "--block-shape",
            "4,32,32",
            "--executor",
            "serial",
        )
        assert r.returncode == 0, (kind, r.stderr)
        raw = Workspace.open(ws).array("raw")
        assert raw.chunks == (4, 32, 32)
        np.testing.assert_array_equal(np.asarray(raw[:]), volume_u8, err_msg=kind)
        assert raw.attrs["intensity"]["rule"] == "copy"


def test_uint16_is_rescaled_by_the_stated_rule(tmp_path, cli):
    rng = np.random.default_rng(5)
    vol = rng.normal(20000, 3000, size=(10, 64, 64)).clip(0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "v16.tif", vol)
    r = cli(
        "import",
        tmp_path / "v16.tif",
        "--workspace",
        tmp_path / "ws",
        "--voxel-size",
        "30,4,4",
        "--block-shape",
        "3,32,32",
        "--executor",
        "serial",
    )
    assert r.returncode == 0, r.stderr
    raw = Workspace.open(tmp_path / "ws").array("raw")
    lo, hi = np.percentile(sample_sections(open_source(str(tmp_path / "v16.tif"))), (0.1, 99.9))
    expect = np.clip(np.rint((vol.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))), 0, 255)
    np.testing.assert_array_equal(np.asarray(raw[:]), expect.astype(np.uint8))
    assert raw.attrs["intensity"] == {"rule": "linear", "lo": pytest.approx(lo), "hi": pytest.approx(hi)}
    # an explicit range overrides the percentiles
    r = cli(
        "import",
        tmp_path / "v16.tif",
        "--workspace",
        tmp_path / "ws2",
        "--voxel-size",
        "30,4,4",
        "--intensity-range",
        "10000,30000",
        "--executor",
        "serial",
    )
    assert r.returncode == 0, r.stderr
    got = np.asarray(Workspace.open(tmp_path / "ws2").array("raw")[:])
    want = np.clip(np.rint((vol.astype(np.float32) - 10000) * np.float32(255 / 20000)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)


def _bad_sources(tmp_path):
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage" * 10)
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((30, 40), np.uint8))
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((3, 30, 40), np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 30, 40, 3), np.uint8), photometric="rgb")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(mixed / "a1.png")
    Image.fromarray(np.zeros((31, 40), np.uint8)).save(mixed / "a2.png")
    (tmp_path / "empty").mkdir()
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("d", data=np.zeros((3, 4, 5), np.int32))
    g = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w", zarr_format=3)
    g.create_array("raw", shape=(2, 2, 2), dtype="uint8")
    return [
        (tmp_path / "nope.tif", "source not found"),
        (tmp_path / "corrupt.tif", "not a readable TIFF"),
        (tmp_path / "flat.tif", "expected a 3D volume"),
        (tmp_path / "float.tif", "unsupported dtype float32"),
        (tmp_path / "rgb.tif", "expected a 3D volume"),
        (mixed, "all sections must match"),
        (tmp_path / "empty", "no .tif/.tiff/.png"),
        (f"{tmp_path / 'x.h5'}:/d", "unsupported dtype int32"),
        (f"{tmp_path / 'x.h5'}:/missing", "has no dataset"),
        (tmp_path / "x.h5", "needs a dataset"),
        (tmp_path / "grp.zarr", "is a zarr group"),
    ]


def test_bad_sources_exit_2_and_leave_the_workspace_untouched(tmp_path, volume_u8, cli):
    tifffile.imwrite(tmp_path / "good.tif", volume_u8)
    ws = tmp_path / "ws"
    assert (
        cli(
            "import", tmp_path / "good.tif", "--workspace", ws, "--voxel-size", "40,8,8", "--executor", "serial"
        ).returncode
        == 0
    )
    before = tree_digest(ws)
    cases = _bad_sources(tmp_path)
    cases += [(tmp_path / "good.tif", "voxel size is [40.0, 8.0, 8.0] nm")]  # mismatched voxel size
    for src, fragment in cases:
        voxel = "30,8,8" if fragment.startswith("voxel size") else "40,8,8"
        r = cli("import", src, "--workspace", ws, "--voxel-size", voxel, "--executor", "serial")
        assert r.returncode == 2, (src, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (src, r.stderr)
        assert "Traceback" not in r.stderr
    assert tree_digest(ws) == before


def test_shape_mismatch_with_existing_workspace(tmp_path, volume_u8, cli):
    tifffile.imwrite(tmp_path / "a.tif", volume_u8)
    tifffile.imwrite(tmp_path / "b.tif", volume_u8[:, :-1])
    ws = tmp_path / "ws"
    assert cli("import", tmp_path / "a.tif", "--workspace", ws, "--voxel-size", "40,8,8").returncode == 0
    before = tree_digest(ws)
    r = cli("import", tmp_path / "b.tif", "--workspace", ws, "--voxel-size", "40,8,8")
    assert r.returncode == 2 and "frame shape" in r.stderr
    assert tree_digest(ws) == before


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--voxel-size", "40,8"], "--voxel-size"),
        (["--voxel-size", "40,0,8"], "--voxel-size"),
        (["--voxel-size", "40,8,8", "--executor", "gpu"], "--executor"),
        (["--voxel-size", "40,8,8", "--workers", "0"], "--workers"),
        (["--voxel-size", "40,8,8", "--block-shape", "4,x,4"], "--block-shape"),
        (["--voxel-size", "40,8,8", "--intensity-range", "9"], "--intensity-range"),
        (["--voxel-size", "40,8,8", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "--voxel-size"),
    ],
)
def test_bad_options_exit_2(tmp_path, volume_u8, cli, args, fragment):
    tifffile.imwrite(tmp_path / "a.tif", volume_u8)
    r = cli("import", tmp_path / "a.tif", "--workspace", tmp_path / "ws", *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr, r.stderr
    assert not (tmp_path / "ws").exists()


def test_rerun_is_a_no_op_and_changed_layout_is_refused(tmp_path, volume_u8, cli):
    tifffile.imwrite(tmp_path / "a.tif", volume_u8)
    ws = tmp_path / "ws"
    base = ["import", tmp_path / "a.tif", "--workspace", ws, "--voxel-size", "40,8,8", "--executor", "serial"]
    assert cli(*base, "--block-shape", "4,32,32").returncode == 0
    r = cli(*base, "--block-shape", "4,32,32")
    assert r.returncode == 0 and "0 blocks processed, 24 already done" in r.stdout
    before = tree_digest(ws / "volume.zarr")
    r = cli(*base, "--block-shape", "8,32,32")
    assert r.returncode == 2 and "--restart" in r.stderr and "block_shape_zyx" in r.stderr
    assert tree_digest(ws / "volume.zarr") == before
    r = cli(*base, "--block-shape", "8,32,32", "--restart")
    assert r.returncode == 0 and "12 blocks processed, 0 already done" in r.stdout
    raw = Workspace.open(ws).array("raw")
    assert raw.chunks == (8, 32, 32)
    np.testing.assert_array_equal(np.asarray(raw[:]), volume_u8)


def test_import_memory_is_bounded_by_the_block_not_the_volume(tmp_path):
    """Out-of-core: importing a 512 MiB volume in 8 MiB blocks must not hold the volume in memory."""
    import subprocess
    import sys

    shape = (64, 2048, 4096)  # 512 MiB of uint8
    src = zarr.open_array(
        str(tmp_path / "big.zarr"), mode="w", shape=shape, chunks=(8, 1024, 1024), dtype="uint8", zarr_format=3
    )
    pattern = (np.arange(2048 * 4096, dtype=np.uint32).reshape(2048, 4096) % 251).astype(np.uint8)
    for z in range(0, shape[0], 8):
        src[z : z + 8] = pattern[None] + np.uint8(z)
    probe = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
        "sys.exit(r.returncode)"
    )
    cmd = [
        sys.executable,
        "-c",
        probe,
        sys.executable,
        "-m",
        "connectome",
        "import",
        str(tmp_path / "big.zarr"),
        "--workspace",
        str(tmp_path / "ws"),
        "--voxel-size",
        "40,8,8",
        "--block-shape",
        "8,512,2048",
        "--executor",
        "serial",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    peak = int(r.stdout.strip().splitlines()[-1])
    assert peak < 400 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB for a 512 MiB volume"
    raw = Workspace.open(tmp_path / "ws").array("raw")
    np.testing.assert_array_equal(np.asarray(raw[37]), pattern + np.uint8(32))
