"""The served export renders in a real browser: headless Chromium (Debian's chromium +
chromium-driver, installed by `make install`) loads the viewer URL from our server, waits until
every layer reports ready (bounded), and screenshots it; the image panels and the 3D mesh panel
must show content, and the loaded state must list every layer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from viewer_helpers import make_workspace

from connectome.cli import main

pytestmark = pytest.mark.slow


def _need_browser():
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[viewer]')")
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip(
            "headless Chromium not available: install Debian's `chromium` and `chromium-driver` "
            "(make install does so when apt is usable)"
        )


def _panel_stats(png, panels):
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    stats = []
    for p in panels:
        x0, y0 = int(p["x"]) + 2, int(p["y"]) + 2
        crop = img[y0 : y0 + int(p["height"]) - 4, x0 : x0 + int(p["width"]) - 4]
        gray = crop.mean(-1)
        colourful = (crop.max(-1) - crop.min(-1)) > 60
        stats.append({"kind": p["kind"], "std": float(gray.std()), "colourful": float(colourful.mean())})
    return stats


@pytest.mark.timeout(120)
def test_view_renders_all_layers_headless(tmp_path):
    _need_browser()
    from connectome.viewer.export import export_precomputed
    from connectome.viewer.screenshot import take_screenshot
    from connectome.viewer.serve import ViewServer
    from connectome.viewer.state import build_state, state_url

    ws = make_workspace(tmp_path / "ws")
    out = export_precomputed(ws).out
    manifest = json.loads((out / "connectome.json").read_text())
    png = tmp_path / "shot.png"
    with ViewServer(out, port=0) as srv:
        state = build_state(manifest, srv.data_url)
        state["showSlices"] = False  # the 3D panel then shows meshes (and synapse points) only
        url = state_url(srv.client_url, state)
        result = take_screenshot(url, png, size=(1000, 800), timeout=45, state=state)
    assert result["layers"] == ["raw", "segmentation", "vessel_mask", "synapses"], result
    stats = _panel_stats(png, result["panels"])
    slices = [s for s in stats if s["kind"] == "slice"]
    three_d = [s for s in stats if s["kind"] == "3d"]
    assert len(slices) == 3 and len(three_d) == 1, stats
    # image panels: the raw texture (not a flat background)
    assert all(s["std"] > 8 for s in slices), stats
    # xy panel shows the coloured segments over raw; the 3D panel (no slices) the segment meshes
    assert slices[0]["colourful"] > 0.02, stats
    assert three_d[0]["colourful"] > 0.03, stats


@pytest.mark.timeout(120)
def test_view_screenshot_command(tmp_path, capsys):
    _need_browser()
    ws = make_workspace(tmp_path / "ws")
    png = tmp_path / "cli.png"
    assert main(["view", "--workspace", str(ws), "--screenshot", str(png), "--size", "800,600", "-q"]) == 0
    out = capsys.readouterr().out
    assert "layers raw, segmentation, vessel_mask, synapses" in out
    from PIL import Image

    img = Image.open(png)
    assert img.size == (800, 600)
    assert np.asarray(img.convert("L")).std() > 10


@pytest.mark.timeout(180)
def test_view_shows_skeletons_headless(tmp_path):
    """After `connectome skeletonize`, the export's segmentation layer carries skeletons: with
    the meshes switched off, the 3D panel shows the skeletons of the selected segments (and
    nothing without the skeletons subsource)."""
    _need_browser()
    from connectome.viewer.screenshot import take_screenshot
    from connectome.viewer.serve import ViewServer
    from connectome.viewer.state import build_state, state_url

    ws = make_workspace(tmp_path / "ws")
    assert main(["skeletonize", "--workspace", str(ws), "--executor", "serial", "-q"]) == 0
    assert main(["export-precomputed", "--workspace", str(ws), "-q"]) == 0
    out = ws / "precomputed"
    assert json.loads((out / "segmentation" / "info").read_text())["skeletons"] == "skeletons"
    manifest = json.loads((out / "connectome.json").read_text())
    stats = {}
    with ViewServer(out, port=0) as srv:
        for skeletons in (True, False):
            state = build_state(manifest, srv.data_url)
            state["showSlices"] = False
            state["layout"] = "3d"
            seg = next(layer for layer in state["layers"] if layer["name"] == "segmentation")
            seg["source"] = {
                "url": seg["source"],
                "enableDefaultSubsources": False,
                "subsources": {"default": True, "mesh": False, "skeletons": skeletons},
            }
            seg["skeletonRendering"] = {"mode3d": "lines", "lineWidth3d": 8}
            state["layers"] = [layer for layer in state["layers"] if layer["name"] == "segmentation"]
            png = tmp_path / f"skeletons_{skeletons}.png"
            result = take_screenshot(state_url(srv.client_url, state), png, size=(800, 600), timeout=60, state=state)
            (panel,) = [s for s in _panel_stats(png, result["panels"]) if s["kind"] == "3d"]
            stats[skeletons] = panel
    assert stats[True]["colourful"] > 0.002, stats
    assert stats[False]["colourful"] < stats[True]["colourful"] / 4, stats
