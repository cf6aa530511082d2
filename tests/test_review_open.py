"""`connectome review open` (issue 23): the review session without a browser (resume, moves,
decisions, missed points), the neuroglancer state, refusals (exit 2, one line), a real process
driven through neuroglancer's action endpoint and killed mid-way, and a real headless Chromium
sending the keys."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from connectome.cli import main
from connectome.errors import UserInputError
from connectome.review.decisions import decide, latest_decisions, missed_points
from connectome.review.plan import plan_review
from connectome.review.queue import read_queue
from connectome.workspace import Workspace

SHAPE = (8, 64, 64)
VOXEL = (40.0, 8.0, 8.0)


def _make_ws(path, segmentation: bool = True) -> Workspace:
    """A tiny workspace whose vessel probability is uncertain (0.5) over z<8, y>=32, x<32."""
    ws = Workspace.create(path, SHAPE, VOXEL)
    rng = np.random.default_rng(0)
    ws.require_array("raw", "uint8", SHAPE)[...] = rng.integers(0, 255, SHAPE)
    prob = np.zeros(SHAPE, np.uint8)
    prob[:, :20, 40:] = 255
    prob[:, 32:, :32] = 128
    ws.require_array("vessel_prob", "uint8", SHAPE)[...] = prob
    ws.require_array("vessel_mask", "uint8", SHAPE)[...] = (prob >= 128).astype(np.uint8)
    if segmentation:
        seg = np.zeros(SHAPE, np.uint64)
        seg[:, :32, :20], seg[:, :32, 20:40] = 1, 2
        ws.require_array("segmentation", "uint64", SHAPE)[...] = seg
        bnd = np.full((4, *SHAPE), 10, np.uint8)
        ws.require_array("boundary", "uint8", SHAPE, channels=("boundary", "aff_z", "aff_y", "aff_x"))[...] = bnd
    return ws


@pytest.fixture
def ws(tmp_path):
    ws = _make_ws(tmp_path / "ws")
    plan_review(ws.path, "vessels", 4, box_zyx=(4, 16, 16))  # four 4x16x16 boxes, vessels-0001..0004
    return ws


def _items(ws):
    return read_queue(ws.path / "review" / "vessels" / "queue.csv")


def _decisions(ws) -> list[list[str]]:
    p = ws.path / "review" / "vessels" / "decisions.csv"
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["item_id", "decision", "author", "time"]
    return [r[:3] for r in rows[1:]]


def _centre(item) -> list[float]:
    z0, y0, x0, z1, y1, x1 = item.box
    return [(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2]  # x, y, z: the viewer's dimension order


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------- the session
def test_session_resumes_at_the_first_undecided_item(ws):
    from connectome.review.viewer import ReviewSession

    items = _items(ws)
    assert len(items) == 4
    s = ReviewSession(ws.path, "vessels", author="ana")
    assert s.index == 0 and s.current == items[0] and not s.done
    decide(ws.path, "vessels", items[0].item_id, "accept", author="x")
    decide(ws.path, "vessels", items[2].item_id, "reject", author="x")
    s = ReviewSession(ws.path, "vessels", author="ana")
    assert s.current == items[1] and s.n_decided == 2
    assert s.status().startswith(f"item 2/4 {items[1].item_id} uncertain-region: ")
    assert "decided: not yet (2/4 decided)" in s.status()
    s.decide("accept")  # skips the decided item 3
    assert s.current == items[3]
    s.decide("reject")  # the last undecided one: all decided, the view stays
    assert s.done and s.current == items[3] and "all items decided" in s.status()
    assert _decisions(ws) == [
        [items[0].item_id, "accept", "x"],
        [items[2].item_id, "reject", "x"],
        [items[1].item_id, "accept", "ana"],
        [items[3].item_id, "reject", "ana"],
    ]
    # a finished queue: a new session starts at the first item, says so, and a decision there
    # still goes in (a later row supersedes the earlier one)
    s = ReviewSession(ws.path, "vessels", author="bo")
    assert s.done and s.index == 0 and "all items decided" in s.status()
    s.decide("reject")
    assert s.done and s.index == 0
    assert latest_decisions(ws.path, "vessels")[items[0].item_id]["decision"] == "reject"


def test_session_moves_and_missed_points(ws):
    from connectome.review.viewer import ReviewSession

    items = _items(ws)
    s = ReviewSession(ws.path, "vessels", author="ana")
    assert s.prev() == items[0] and "first item" in s.message
    assert s.next() == items[1] and s.next() == items[2] and s.next() == items[3]
    assert s.next() == items[3] and "last item" in s.message
    assert s.prev() == items[2] and s.message == ""
    box = items[2].box
    with pytest.raises(UserInputError, match="outside"):
        s.decide("missed", point=(box[0], box[1], box[5]))  # x1 is outside (half-open box)
    with pytest.raises(UserInputError, match="mouse"):
        s.decide("missed")
    with pytest.raises(UserInputError, match="mouse"):
        s.decide("missed", point=(float("nan"), 1, 1))  # the mouse over no panel
    with pytest.raises(UserInputError, match="only a 'missed'"):
        s.decide("accept", point=(box[0], box[1], box[2]))
    assert _decisions(ws) == [] and not (ws.path / "review" / "vessels" / "points.csv").exists()
    inside = (box[0] + 0.7, box[1] + 3.2, box[5] - 0.5)  # continuous coordinates: floor -> voxel
    s.decide("missed", point=inside)
    s.decide("missed", point=(box[0], box[1], box[2]))  # a second missed object in the same box
    assert s.current == items[2]  # missed stays on the item
    want = [(box[0], box[1] + 3, box[5] - 1), (box[0], box[1], box[2])]
    assert missed_points(ws.path, "vessels") == {items[2].item_id: want}
    assert s.points == {items[2].item_id: want}
    s.decide("accept")  # the detection is right too: the points still count (a statement each)
    assert missed_points(ws.path, "vessels") == {items[2].item_id: want} and s.points == {items[2].item_id: want}
    assert s.current == items[3]
    assert [r[1] for r in _decisions(ws)] == ["missed", "missed", "accept"]


def test_state_layers_positions_and_boxes_are_in_xyz(ws):
    from connectome.review.viewer import ReviewSession, build_state, target_layers

    items = _items(ws)
    s = ReviewSession(ws.path, "vessels")
    s.next()
    state = build_state(s)
    assert [layer.name for layer in state.layers] == ["raw", "vessel_prob", "vessel_mask", "queue", "missed"]
    dims = state.dimensions.to_json()
    assert list(dims) == ["x", "y", "z"] and dims["z"] == [40e-9, "m"] and dims["x"] == [8e-9, "m"]
    assert list(state.position) == _centre(items[1])
    queue = state.layers["queue"]
    assert [a.id for a in queue.annotations] == [it.item_id for it in items]
    z0, y0, x0, z1, y1, x1 = items[0].box
    assert list(queue.annotations[0].point_a) == [x0, y0, z0] and list(queue.annotations[0].point_b) == [x1, y1, z1]
    assert items[0].item_id in queue.annotations[0].description and "uncertain" in queue.annotations[0].description
    assert list(queue.annotations[1].props) == ["#00e5ff"]  # the current item stands out
    raw = state.layers["raw"].source[0].url
    assert raw.dimensions.to_json() == {"z": [40e-9, "m"], "y": [8e-9, "m"], "x": [8e-9, "m"]}
    assert raw.shape == SHAPE
    # read lazily, one request at a time, in the workspace's z, y, x order
    sub = raw.data[1:3, 2:5, 7:9]
    assert np.array_equal(sub, s.ws.array("raw")[1:3, 2:5, 7:9])
    names = {t: [d["name"] for d in target_layers(s.ws, t)] for t in ("vessels", "synapses", "segmentation")}
    assert names == {
        "vessels": ["raw", "vessel_prob", "vessel_mask"],
        "synapses": ["raw", "segmentation"],  # no synapse_prob in this workspace: only what exists
        "segmentation": ["raw", "segmentation", "boundary"],
    }
    bnd = target_layers(s.ws, "segmentation")[2]["array"]
    assert bnd.shape == SHAPE and bnd[0:1, 0:2, 0:2].shape == (1, 2, 2)
    plan_review(ws.path, "segmentation", 3, box_zyx=(4, 16, 16))
    state = build_state(ReviewSession(ws.path, "segmentation"))
    assert [layer.name for layer in state.layers] == ["raw", "segmentation", "boundary", "queue", "missed"]
    seg = state.layers["segmentation"]
    assert seg.type == "segmentation" and seg.source[0].url.volume_type == "segmentation"
    assert state.layers["boundary"].visible is False and state.layers["boundary"].source[0].url.shape == SHAPE


# ---------------------------------------------------------------------------------- refusals
def _open(ws_path, target="vessels", *extra):
    return main(["review", "open", "--workspace", str(ws_path), "--target", target, *map(str, extra)])


def test_refusals_are_one_line(ws, tmp_path, capsys):
    assert _open(ws.path, "segmentation") == 2 and "review plan" in _err(capsys)  # no queue
    other = _make_ws(tmp_path / "other", segmentation=False)
    shutil.copytree(ws.path / "review", other.path / "review")  # a review made for another workspace
    assert _open(other.path) == 2
    err = _err(capsys)
    assert "made for workspace" in err and str(ws.path.resolve()) in err
    assert _open(ws.path, "vessels", "--port", 70000) == 2 and "--port" in _err(capsys)
    assert _open(ws.path, "vessels", "--bind", "192.0.2.1") == 2 and "--bind" in _err(capsys)  # not ours
    assert _open(ws.path, "vessels", "--author", "a\nb") == 2 and "--author" in _err(capsys)
    (ws.path / "review" / "vessels" / "queue.csv").write_text("item_id,target,kind,z0,y0,x0,z1,y1,x1,score,reason\n")
    assert _open(ws.path) == 2 and "empty" in _err(capsys)


def test_all_decided_with_exit_when_done_returns_at_once(ws, capsys):
    for it in _items(ws):
        decide(ws.path, "vessels", it.item_id, "accept")
    t0 = time.monotonic()
    assert _open(ws.path, "vessels", "--exit-when-done") == 0
    assert time.monotonic() - t0 < 10
    assert "all items decided" in capsys.readouterr().out


# ------------------------------------------------------------------- a real process, killed
def _start(ws, *extra) -> tuple[subprocess.Popen, str, list[str]]:
    """``connectome review open`` as a real process; returns it, its URL and its first lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectome", "review", "open", "--workspace", str(ws.path), "--target", "vessels"]
        + list(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("http"):
            return proc, line.strip(), lines
    proc.kill()
    raise AssertionError(f"no URL from review open: {lines} {proc.stderr.read() if proc.stderr else ''}")


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Wait for the process; the rest of its stdout (what :func:`_start` did not read) and stderr."""
    proc.wait(timeout=timeout)
    assert proc.stdout is not None and proc.stderr is not None
    with proc.stdout, proc.stderr:
        return proc.stdout.read(), proc.stderr.read()


def _press(url: str, action: str) -> None:
    """What the browser does on a key: POST the bound action to the viewer's action endpoint."""
    token = url.rstrip("/").rsplit("/", 1)[1]
    base = url.split("/v/")[0]
    req = urllib.request.Request(
        f"{base}/action/{token}",
        data=json.dumps({"action": action, "state": {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def _wait_rows(ws, n: int, timeout: float = 20.0) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _decisions(ws)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"expected {n} decisions, got {_decisions(ws)}")


@pytest.mark.timeout(120)
def test_a_killed_process_keeps_its_decisions_and_the_next_resumes(ws):
    items = _items(ws)
    ids = [it.item_id for it in items]
    proc, url, lines = _start(ws, "--author", "ana")
    try:
        assert url.startswith("http://127.0.0.1:")
        assert f"starting at item 1 ({ids[0]})" in lines[0]
        _press(url, "review-accept")  # item 1, then on to item 2
        _press(url, "review-next")  # item 3
        _press(url, "review-reject")  # item 3, then on to item 4
        want = [[ids[0], "accept", "ana"], [ids[2], "reject", "ana"]]
        assert _wait_rows(ws, 2) == want
    finally:
        proc.send_signal(signal.SIGKILL)  # killed mid-way: no clean-up of any kind
        _finish(proc, 10)
    assert proc.returncode == -signal.SIGKILL
    assert _decisions(ws) == want
    # the next session resumes at the first undecided item and stops by itself once all are decided
    proc, url, lines = _start(ws, "--author", "bo", "--exit-when-done")
    try:
        assert f"4 items of {ws.path / 'review' / 'vessels' / 'queue.csv'}, 2 decided" in lines[0]
        assert f"starting at item 2 ({ids[1]})" in lines[0]
        _press(url, "review-accept")  # item 2, then on to item 4 (item 3 is decided)
        _press(url, "review-missed")  # no mouse position: refused, nothing written
        _press(url, "review-reject")  # item 4: all decided
        out, err = _finish(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            _finish(proc, 10)
    assert proc.returncode == 0, err
    assert "review open: stopped; 4/4 items decided" in out
    assert _decisions(ws) == want + [[ids[1], "accept", "bo"], [ids[3], "reject", "bo"]]
    assert not (ws.path / "review" / "vessels" / "points.csv").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_with_exit_0(ws, sig):
    proc, url, lines = _start(ws)
    assert lines[-1] == url and url.startswith("http://127.0.0.1:")
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = _finish(proc, 20)
    assert proc.returncode == 0, err
    assert "Ctrl-C to stop" in out and "keys: a accept" in out
    assert "review open: stopped; 0/4 items decided" in out


# --------------------------------------------------------------------------- real Chromium
_PROBE = """
const v = window.viewer;
if (!v) return null;
let ready = false;
try { ready = v.isReady(); } catch (e) { ready = false; }
const panels = Array.from(v.display.panels).filter(p => p.element && p.element.isConnected && 'sliceView' in p)
  .map(p => { const r = p.element.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; });
return {ready: ready, layers: v.layerManager.managedLayers.map(l => l.name),
        position: Array.from(v.position.value), panels: panels, text: document.body.innerText};
"""


def _browser():
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[viewer]')")
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("headless Chromium not available: install Debian's `chromium` and `chromium-driver`")
    import tempfile

    from selenium import webdriver

    from connectome.viewer.screenshot import CHROME_ARGS, find_browser

    browser, driver_path = find_browser()
    opts = webdriver.ChromeOptions()
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument("--window-size=1000,800")
    profile = tempfile.mkdtemp(prefix="connectome-review-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.binary_location = browser
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_script_timeout(10)
    return driver, profile


def _until(driver, cond, what: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    probe = None
    while time.monotonic() < deadline:
        probe = driver.execute_script(_PROBE)
        if probe and cond(probe):
            return probe
        time.sleep(0.1)
    raise AssertionError(f"browser: {what} not within {timeout} s; last: {json.dumps(probe)[:1500]}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_keys_in_headless_chromium_decide_jump_and_survive_a_kill(ws):
    import neuroglancer
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    from connectome.review.viewer import ReviewSession, open_review

    items = _items(ws)
    ids = [it.item_id for it in items]
    driver, profile = _browser()
    app = open_review(ws.path, "vessels", author="ana")
    try:
        host, port = app.server_address
        assert host == "127.0.0.1" and app.url.startswith(f"http://127.0.0.1:{port}/v/")
        driver.get(app.url)

        def at(item) -> bool:  # server and browser both at the item's centre
            return list(app.viewer.state.position) == _centre(item)

        p = _until(
            driver,
            lambda p: p["ready"] and p["panels"] and f"item 1/4 {ids[0]}" in p["text"],
            "the viewer connected, with the layers and the review status",
            timeout=45,
        )
        assert p["layers"] == ["raw", "vessel_prob", "vessel_mask", "queue", "missed"]
        assert p["position"] == _centre(items[0]) and at(items[0])

        def mouse(px: int, py: int) -> None:  # the pointer to a point of the page (CSS pixels)
            act = ActionBuilder(driver)
            act.pointer_action.move_to_location(px, py)
            act.perform()

        def key(k: str, text: str, rows: int) -> dict:
            ActionChains(driver).send_keys(k).perform()
            _wait_rows(ws, rows)
            return _until(driver, lambda p: text in p["text"], f"after {k!r}: {text!r}")

        key("a", f"item 2/4 {ids[1]}", 1)  # accept item 1 -> item 2
        key("r", f"item 3/4 {ids[2]}", 2)  # reject item 2 -> item 3
        ActionChains(driver).send_keys("p").perform()  # back to item 2
        p = _until(driver, lambda p: f"item 2/4 {ids[1]} uncertain-region" in p["text"], "p: back to item 2")
        assert "decided: reject" in p["text"]
        p = key("a", f"item 3/4 {ids[2]}", 3)  # item 2 again: accept -> item 3
        assert _decisions(ws) == [[ids[0], "accept", "ana"], [ids[1], "reject", "ana"], [ids[1], "accept", "ana"]]
        _until(driver, lambda p: p["position"] == _centre(items[2]), "the browser's position on item 3")
        assert at(items[2]) and app.session.current == items[2]

        # m: a missed object at the mouse. The xy panel's centre is the view position (inside
        # item 3's box); its corner lies outside: refused, nothing written
        x, y, w, h = p["panels"][0]
        mouse(int(x + 3), int(y + 3))
        ActionChains(driver).send_keys("m").perform()
        _until(driver, lambda p: "outside item" in p["text"], "m outside the box refused")
        assert len(_decisions(ws)) == 3
        mouse(int(x + w / 2), int(y + h / 2))
        key("m", "recorded missed", 4)
        z0, y0, x0, z1, y1, x1 = items[2].box
        pts = missed_points(ws.path, "vessels")[ids[2]]
        assert len(pts) == 1 and z0 <= pts[0][0] < z1 and y0 <= pts[0][1] < y1 and x0 <= pts[0][2] < x1
        assert _decisions(ws)[-1] == [ids[2], "missed", "ana"]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        neuroglancer.stop()  # the session dies here: nothing is saved on the way out
    # a new session starts at the first undecided item (item 4), with the missed point shown
    s = ReviewSession(ws.path, "vessels")
    assert s.current == items[3] and s.n_decided == 3 and s.points == {ids[2]: pts}
