"""Workspace creation, validation and the one-frame rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from connectome.errors import UserInputError
from connectome.workspace import Workspace, parse_zyx


def test_create_open_roundtrip(tmp_path):
    ws = Workspace.create(tmp_path / "ws", (10, 20, 30), (40, 8, 8))
    arr = ws.require_array("raw", "uint8", (4, 8, 8))
    arr[:] = 7
    again = Workspace.open(tmp_path / "ws", mode="r")
    assert again.shape_zyx == (10, 20, 30) and again.voxel_size_nm == (40.0, 8.0, 8.0)
    raw = again.array("raw")
    assert raw.chunks == (4, 8, 8) and raw.attrs["voxel_size_nm"] == [40.0, 8.0, 8.0]
    assert int(np.asarray(raw[:]).sum()) == 7 * 10 * 20 * 30
    meta = json.loads((tmp_path / "ws" / "volume.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"


def test_chunks_clipped_to_small_volume(tmp_path):
    ws = Workspace.create(tmp_path / "ws", (3, 20, 30), (40, 8, 8))
    assert ws.require_array("raw", "uint8", (32, 256, 256)).chunks == (3, 20, 30)


def test_create_refuses_other_frame(tmp_path):
    Workspace.create(tmp_path / "ws", (10, 20, 30), (40, 8, 8))
    with pytest.raises(UserInputError, match="frame shape"):
        Workspace.create(tmp_path / "ws", (10, 20, 31), (40, 8, 8))
    with pytest.raises(UserInputError, match="voxel size"):
        Workspace.create(tmp_path / "ws", (10, 20, 30), (30, 8, 8))


def test_missing_array_names_the_stage(tmp_path):
    ws = Workspace.create(tmp_path / "ws", (4, 4, 4), (40, 8, 8))
    with pytest.raises(UserInputError, match="no array 'segmentation'.*connectome segment"):
        ws.array("segmentation")


def _inject(tmp_path, name, shape, dtype, voxel=(40, 8, 8)):
    g = zarr.open_group(str(tmp_path / "ws" / "volume.zarr"), mode="a", zarr_format=3)
    g.create_array(name, shape=shape, chunks=shape, dtype=dtype, attributes={"voxel_size_nm": list(voxel)})


@pytest.mark.parametrize(
    "name, shape, dtype, voxel, fragment",
    [
        ("raw", (4, 4, 5), "uint8", (40, 8, 8), "has shape [4, 4, 5], expected the frame [4, 4, 4]"),
        ("segmentation", (4, 4, 4), "uint32", (40, 8, 8), "dtype uint32, expected uint64"),
        ("raw", (4, 4, 4), "uint8", (30, 8, 8), "voxel_size_nm"),
    ],
)
def test_open_validates_arrays(tmp_path, name, shape, dtype, voxel, fragment):
    Workspace.create(tmp_path / "ws", (4, 4, 4), (40, 8, 8))
    _inject(tmp_path, name, shape, dtype, voxel)
    with pytest.raises(UserInputError) as err:
        Workspace.open(tmp_path / "ws")
    assert fragment in str(err.value) and f"'{name}'" in str(err.value)


def test_not_a_workspace(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        Workspace.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="not a connectome workspace"):
        Workspace.open(tmp_path / "empty")
    (tmp_path / "broken" / "volume.zarr").mkdir(parents=True)
    (tmp_path / "broken" / "volume.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(UserInputError, match="not a readable zarr v3 group"):
        Workspace.open(tmp_path / "broken")


def test_require_array_spec_mismatch(tmp_path):
    ws = Workspace.create(tmp_path / "ws", (8, 8, 8), (40, 8, 8))
    ws.require_array("raw_smooth", "uint8", (4, 4, 4))
    with pytest.raises(UserInputError, match="--restart"):
        ws.require_array("raw_smooth", "float32", (4, 4, 4))
    assert ws.require_array("raw_smooth", "float32", (4, 4, 4), recreate=True).dtype == np.float32


@pytest.mark.parametrize("text", ["40,8", "a,b,c", "0,8,8", "-1,8,8", "40,8,8,8"])
def test_parse_zyx_errors(text):
    with pytest.raises(UserInputError, match="--voxel-size"):
        parse_zyx(text, "--voxel-size")


def test_chunk_writes_go_through_a_temporary_file(tmp_path, monkeypatch):
    """Atomic writes: a chunk is written to a temporary file and renamed into place, so a killed
    writer can never leave a torn chunk under its real name."""
    import pathlib

    ws = Workspace.create(tmp_path / "ws", (4, 8, 8), (40, 8, 8))
    arr = ws.require_array("raw", "uint8", (2, 4, 4))
    opened = []
    real_open = pathlib.Path.open

    def spy(self, mode="r", *a, **k):
        if "w" in mode or "+" in mode or "x" in mode:
            opened.append(self.name)
        return real_open(self, mode, *a, **k)

    monkeypatch.setattr(pathlib.Path, "open", spy)
    arr[:] = 5
    monkeypatch.undo()
    assert len(opened) == 8  # one per chunk
    assert all(name.endswith(".partial") for name in opened), opened
    assert int(np.asarray(Workspace.open(tmp_path / "ws").array("raw")[:]).sum()) == 5 * 4 * 8 * 8
