"""The command line as a user meets it: help, import lightness, usage errors and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_cli

HEAVY = ("tensorflow", "horovod", "deephyper", "neuroglancer", "keras")


def test_import_connectome_is_light():
    code = (
        "import sys, connectome, connectome.cli, connectome.workspace, connectome.blockwise, connectome.config, "
        "connectome.stages.importer, connectome.stages.smooth, connectome.sources\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("import", "smooth", "info"):
        assert cmd in r.stdout


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("connectome ")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["import"], "required"),
        (["info", "--workspace", "/nonexistent/ws"], "workspace /nonexistent/ws: not found"),
        ([], None),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, fragment):
    r = run_cli(*args)
    assert r.returncode == 2
    if fragment:
        assert len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr, r.stderr


def test_info_describes_workspace(tmp_path, volume_u8):
    import tifffile

    tifffile.imwrite(tmp_path / "v.tif", volume_u8)
    assert (
        run_cli("import", tmp_path / "v.tif", "--workspace", tmp_path / "ws", "--voxel-size", "40,8,8").returncode == 0
    )
    r = run_cli("info", "--workspace", tmp_path / "ws")
    assert r.returncode == 0 and "[13, 70, 57]" in r.stdout and "raw" in r.stdout and "uint8" in r.stdout
    logs = list((tmp_path / "ws" / "logs").glob("import-*.log"))
    assert logs and "stage import" in logs[0].read_text()


@pytest.mark.parametrize("err, code", [(13, 2), (30, 2), (28, 1)])  # EACCES, EROFS: the user's; ENOSPC: ours
def test_unwritable_workspace_is_bad_input(monkeypatch, capsys, tmp_path, err, code):
    """A workspace the user cannot write (read-only mount, other owner) is exit 2 with one line
    naming the path; tests run as root, which ignores permission bits, so the stage is made to
    raise what the OS would raise."""
    import os

    from connectome import cli

    def denied(args):
        raise OSError(err, os.strerror(err), str(tmp_path / "ws" / "volume.zarr"))

    monkeypatch.setattr(cli, "cmd_info", denied)
    rc = cli.main(["info", "--workspace", str(tmp_path / "ws")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == code and len(lines) == 1
    if code == 2:
        assert str(tmp_path / "ws" / "volume.zarr") in lines[0] and "writable" in lines[0]
    else:
        assert "internal error" in lines[0]
