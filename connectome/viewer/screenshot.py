"""Headless screenshots of a neuroglancer URL with Chromium + chromedriver (selenium).

Waits until the viewer reports every layer ready (``viewer.isReady()``, several polls in a
row), bounded by a timeout: a layer that fails to load makes this raise instead of hanging.
Returns the layer names of the loaded state and the on-screen rectangles of the rendered
panels, so callers (and tests) can check the pixels of each panel.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from connectome.errors import StageFailed, UserInputError

CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)

_PROBE = """
const v = window.viewer;
if (!v) return null;
let ready = false;
try { ready = v.isReady(); } catch (e) { ready = false; }
const layers = v.layerManager.managedLayers.map(l => l.name);
const panels = Array.from(v.display.panels).filter(p => p.element && p.element.isConnected).map(p => {
  const r = p.element.getBoundingClientRect();
  // PerspectivePanel (3D) holds sliceViews; SliceViewPanel holds one sliceView
  return {x: r.x, y: r.y, width: r.width, height: r.height,
          kind: ('sliceViews' in p) ? '3d' : (('sliceView' in p) ? 'slice' : 'other')};
}).filter(p => p.width > 0 && p.height > 0 && p.kind !== 'other');
const status = Array.from(document.querySelectorAll('.neuroglancer-layer-item-value, .neuroglancer-status'))
  .map(e => e.textContent).join(' | ');
return {ready: ready, layers: layers, panels: panels, status: status};
"""


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or a clear error naming the packages to install."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise UserInputError(
            "--screenshot needs headless Chromium and chromedriver on PATH "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise UserInputError("--screenshot needs selenium (pip install -e '.[viewer]')") from None
    return browser, driver


def take_screenshot(
    url: str,
    out_png: str | Path,
    size=(1280, 960),
    timeout: float = 60.0,
    settle_polls: int = 4,
    state: dict | None = None,
) -> dict:
    """Load ``url`` headless, wait for the layers, write a PNG; returns ``{"layers", "panels",
    "seconds"}``. Raises :class:`StageFailed` if the viewer is not ready within ``timeout``.

    ``state``: the state the URL carries. The bundled client occasionally (about one load in
    four, headless) drops the first layer while parsing the URL; if the loaded layer list
    differs from ``state``'s, the state is applied again through the viewer's own API."""
    from selenium import webdriver

    browser, driver_path = find_browser()
    width, height = (int(v) for v in size)
    opts = webdriver.ChromeOptions()
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={width},{height}")
    profile = tempfile.mkdtemp(prefix="connectome-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.binary_location = browser
    t0 = time.perf_counter()
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(timeout)
        driver.set_script_timeout(10)
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.get(url)
        deadline = time.monotonic() + timeout
        streak, probe = 0, None
        want = [layer["name"] for layer in state["layers"]] if state else None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            probe = driver.execute_script(_PROBE)
            if probe and want is not None and probe["layers"] != want:
                driver.execute_script("window.viewer.state.restoreState(JSON.parse(arguments[0]));", json.dumps(state))
                streak = 0
                continue
            streak = streak + 1 if probe and probe["ready"] and probe["panels"] else 0
            if streak >= settle_polls:
                break
        else:
            raise StageFailed(
                f"view --screenshot: the viewer did not finish loading within {timeout:.0f} s "
                f"(last status: {(probe or {}).get('status') or 'no viewer'})"
            )
        png = driver.get_screenshot_as_png()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        from connectome.atomic import atomic_write_bytes

        atomic_write_bytes(out_png, png)
        return {"layers": probe["layers"], "panels": probe["panels"], "seconds": time.perf_counter() - t0}
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
