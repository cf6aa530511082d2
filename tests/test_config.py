"""Typed stage configs: pinned defaults, YAML loading, unknown keys and wrong types rejected."""

from __future__ import annotations

import dataclasses

import pytest

from connectome.config import BlockwiseConfig, config_from_dict, config_to_dict, load_config
from connectome.errors import UserInputError
from connectome.stages.importer import ImportConfig
from connectome.stages.smooth import SmoothConfig


def test_defaults_are_pinned():
    assert config_to_dict(BlockwiseConfig()) == {"block_shape_zyx": [32, 256, 256], "max_retries": 2}
    assert config_to_dict(ImportConfig()) == {
        "blockwise": {"block_shape_zyx": [32, 256, 256], "max_retries": 2},
        "rescale": "percentile",
        "percentiles": [0.1, 99.9],
        "intensity_range": None,
    }
    assert config_to_dict(SmoothConfig()) == {
        "blockwise": {"block_shape_zyx": [32, 256, 256], "max_retries": 2},
        "sigma_nm": [40.0, 16.0, 16.0],
        "truncate": 4.0,
        "input": "raw",
        "output": "raw_smooth",
        "output_dtype": "uint8",
    }


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SmoothConfig().truncate = 3.0  # type: ignore[misc]


def test_yaml_overrides_and_nested(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sigma_nm: [80, 8, 8]\nblockwise:\n  block_shape_zyx: [4, 64, 64]\noutput_dtype: float32\n")
    cfg = load_config(SmoothConfig, p)
    assert cfg.sigma_nm == (80.0, 8.0, 8.0)
    assert cfg.blockwise.block_shape_zyx == (4, 64, 64)
    assert cfg.blockwise.max_retries == 2
    assert cfg.output_dtype == "float32"
    cfg2 = load_config(SmoothConfig, p, {"blockwise.max_retries": 0})
    assert cfg2.blockwise.max_retries == 0 and cfg2.blockwise.block_shape_zyx == (4, 64, 64)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("sigma: [1, 2, 3]\n", "unknown key 'sigma' in SmoothConfig"),
        ("blockwise:\n  block_shape: [1, 2, 3]\n", "unknown key 'blockwise.block_shape' in BlockwiseConfig"),
        ("truncate: big\n", "'truncate' expects float, got 'big'"),
        ("sigma_nm: [1, 2]\n", "'sigma_nm' expects a list of 3 floats"),
        ("output_dtype: int16\n", "'output_dtype' expects one of 'uint8', 'float32'"),
        ("blockwise:\n  max_retries: true\n", "'blockwise.max_retries' expects int"),
        ("blockwise:\n  block_shape_zyx: [0, 8, 8]\n", "block_shape_zyx must be positive"),
        ("- a\n- b\n", "expected a mapping"),
        ("a: [1,\n", "not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, fragment):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(UserInputError) as err:
        load_config(SmoothConfig, p)
    assert fragment in str(err.value)
    assert str(p) in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserInputError, match="config file not found"):
        load_config(SmoothConfig, tmp_path / "nope.yaml")


def test_optional_and_int_to_float():
    cfg = config_from_dict(ImportConfig, {"intensity_range": [100, 4000]})
    assert cfg.intensity_range == (100.0, 4000.0)
    assert config_from_dict(ImportConfig, {"intensity_range": None}).intensity_range is None
    with pytest.raises(UserInputError, match="intensity_range"):
        config_from_dict(ImportConfig, {"intensity_range": [5, 1]})


def test_cli_rejects_unknown_config_key_with_exit_2(tmp_path, cli, volume_u8):
    import tifffile

    tifffile.imwrite(tmp_path / "v.tif", volume_u8)
    cfg = tmp_path / "import.yaml"
    cfg.write_text("blockwise:\n  block_shape_zyx: [4, 32, 32]\nrescael: minmax\n")
    r = cli("import", tmp_path / "v.tif", "--workspace", tmp_path / "ws", "--voxel-size", "40,8,8", "--config", cfg)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "unknown key 'rescael'" in r.stderr and "import.yaml" in r.stderr
    assert not (tmp_path / "ws").exists()
