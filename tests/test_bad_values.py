"""Bad values at the boundary: nan / inf in float options and configs, duplicate YAML keys.
Each is bad input: exit 2 with one line on stderr naming the option, key and file."""

from __future__ import annotations

import numpy as np
import pytest

from connectome.cli import main
from connectome.errors import UserInputError
from connectome.inputs import finite_float, load_yaml_text


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    import tifffile

    d = tmp_path_factory.mktemp("bad")
    tifffile.imwrite(d / "v.tif", np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8))
    assert (
        main(
            [
                "import",
                str(d / "v.tif"),
                "--workspace",
                str(d / "ws"),
                "--voxel-size",
                "40,8,8",
                "--no-progress",
                "--quiet",
            ]
        )
        == 0
    )
    return d / "ws"


def _err(capsys) -> str:
    """The one line on stderr (the fixture's own output was read off before)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_smooth_sigma_nan_option_exit_2(ws, capsys):
    capsys.readouterr()
    rc = main(["smooth", "--workspace", str(ws), "--sigma-nm", "nan,16,16"])
    err = _err(capsys)
    assert rc == 2 and "--sigma-nm" in err and "finite" in err, err
    assert not (ws / "volume.zarr" / "raw_smooth").exists()


def test_smooth_config_inf_exit_2(ws, tmp_path, capsys):
    capsys.readouterr()
    cfg = tmp_path / "smooth.yaml"
    cfg.write_text("sigma_nm: [.inf, 16, 16]\n")
    rc = main(["smooth", "--workspace", str(ws), "--config", str(cfg)])
    err = _err(capsys)
    assert rc == 2 and str(cfg) in err and "sigma_nm[0] = inf: expected a finite number" in err, err


def test_import_voxel_size_inf_exit_2(tmp_path, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "v.tif", np.zeros((2, 16, 16), dtype=np.uint8))
    rc = main(["import", str(tmp_path / "v.tif"), "--workspace", str(tmp_path / "ws"), "--voxel-size", "inf,8,8"])
    err = _err(capsys)
    assert rc == 2 and "--voxel-size" in err, err
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (
            ["import", "SRC", "--workspace", "WS", "--voxel-size", "40,8,8", "--intensity-range", "0,nan"],
            "--intensity-range",
        ),
        (["synapses", "--workspace", "WS", "--threshold", "nan"], "--threshold"),
        (["graph", "--workspace", "WS", "--min-score=-inf"], "--min-score"),
        (["stitch", "--tiles", "T.csv", "--workspace", "WS", "--voxel-size", "40,nan,8"], "--voxel-size"),
    ],
)
def test_nonfinite_float_options_exit_2(tmp_path, capsys, argv, fragment):
    argv = [a.replace("WS", str(tmp_path / "ws")) for a in argv]
    rc = main(argv)
    err = _err(capsys)
    assert rc == 2 and fragment in err and "finite" in err, err


def test_duplicate_key_in_stage_config_exit_2(ws, tmp_path, capsys):
    capsys.readouterr()
    cfg = tmp_path / "smooth.yaml"
    cfg.write_text("sigma_nm: [1, 2, 3]\ntruncate: 3.0\nsigma_nm: [4, 5, 6]\n")
    rc = main(["smooth", "--workspace", str(ws), "--config", str(cfg)])
    err = _err(capsys)
    assert rc == 2 and str(cfg) in err and "duplicate key 'sigma_nm'" in err and "line 3" in err, err


def test_duplicate_nested_key_in_stage_config_exit_2(ws, tmp_path, capsys):
    capsys.readouterr()
    cfg = tmp_path / "smooth.yaml"
    cfg.write_text("blockwise:\n  max_retries: 1\n  max_retries: 2\n")
    rc = main(["smooth", "--workspace", str(ws), "--config", str(cfg)])
    err = _err(capsys)
    assert rc == 2 and "duplicate key 'max_retries'" in err, err


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("stages:\n  - stage: align\n    executor: local\n    executor: serial\n", "duplicate key 'executor'"),
        ("name: a\nname: b\nstages:\n  - stage: align\n", "duplicate key 'name'"),
        (
            "stages:\n  - stage: align\n    config: {blockwise: {max_retries: 1, max_retries: 2}}\n",
            "duplicate key 'max_retries'",
        ),
        ("stages:\n  - stage: stitch\n    options: {tiles: t.csv, voxel-size: [.inf, 8, 8]}\n", "finite"),
        ("stages:\n  - stage: smooth\n    config: {sigma_nm: [.nan, 8, 8]}\n", "sigma_nm[0] = nan"),
    ],
)
def test_bad_pipeline_values_exit_2(tmp_path, capsys, text, fragment):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    rc = main(["run", str(p), "--workspace", str(tmp_path / "ws")])
    err = _err(capsys)
    assert rc == 2 and str(p) in err and fragment in err, err
    assert not (tmp_path / "ws").exists()


def test_shared_helpers():
    assert finite_float("1.5", "--x") == 1.5
    for bad in ("nan", "inf", "-inf", "abc"):
        with pytest.raises(UserInputError, match="--x"):
            finite_float(bad, "--x")
    # merge keys may be overridden; only a key written twice is refused
    doc = load_yaml_text("base: &b {a: 1, c: 2}\nother:\n  <<: *b\n  a: 3\n", "f.yaml")
    assert doc["other"] == {"a": 3, "c": 2}
    with pytest.raises(UserInputError, match=r"f.yaml: duplicate key 'a' \(line 2; first at line 1\)"):
        load_yaml_text("a: 1\na: 2\n", "f.yaml")
