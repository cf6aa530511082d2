"""``connectome export-precomputed`` / ``view`` without a browser: the export read back with
cloud-volume equals the workspace (asymmetric volume: an axis swap cannot pass), the pyramid,
meshes, segment properties, synapse annotations (decoded independently), incremental and
resumed runs, the HTTP server (CORS, Content-Encoding, ranges), the state, and every bad-input
path (exit 2, one line)."""

from __future__ import annotations

import json
import socket
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest
from viewer_helpers import BIG, SEG_BOXES, arrays, make_workspace, read_sharded

from connectome.cli import main

pytest.importorskip("cloudvolume")


def export(ws, *extra):
    return main(["export-precomputed", "--workspace", str(ws), "-q", *map(str, extra)])


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path / "ws")


def read_level(out: Path, layer: str, mip: int) -> np.ndarray:
    from cloudvolume import CloudVolume

    vol = CloudVolume(f"file://{out / layer}", mip=mip, progress=False)
    return np.asarray(vol[:, :, :])[..., 0]


# --------------------------------------------------------------------------- volumes
def test_export_equals_workspace_voxel_for_voxel(ws, capsys):
    assert export(ws) == 0
    out = capsys.readouterr().out
    assert "raw written" in out and "segmentation written" in out and "synapses written" in out
    pc = ws / "precomputed"
    raw, seg, mask = arrays()
    for name, ref in (("raw", raw), ("segmentation", seg), ("vessel_mask", mask)):
        info = json.loads((pc / name / "info").read_text())
        s0 = info["scales"][0]
        assert s0["size"] == [96, 64, 8] and s0["resolution"] == [8.0, 8.0, 40.0], name
        back = read_level(pc, name, 0)
        assert back.shape == (96, 64, 8) and back.dtype == ref.dtype
        np.testing.assert_array_equal(back, ref.transpose(2, 1, 0), err_msg=name)
    assert json.loads((pc / "segmentation" / "info").read_text())["scales"][0]["encoding"] == "compressed_segmentation"
    # volume chunks are gzip'd on disk (served with Content-Encoding)
    assert list((pc / "raw" / "8_8_40").glob("*.gz"))


def test_pyramid_levels_pool_correctly(ws):
    assert export(ws) == 0
    pc = ws / "precomputed"
    info = json.loads((pc / "segmentation" / "info").read_text())
    assert [s["resolution"] for s in info["scales"]] == [[8, 8, 40], [16, 16, 40]]
    assert info["scales"][1]["size"] == [48, 32, 8]
    raw, seg, mask = arrays()
    seg1 = read_level(pc, "segmentation", 1)
    # mode pooling 2x2x1: boxes have even corners, so level 1 is exactly the halved boxes
    expected = seg[:, ::2, ::2].transpose(2, 1, 0)
    np.testing.assert_array_equal(seg1, expected)
    raw1 = read_level(pc, "raw", 1)
    mean = raw.reshape(8, 32, 2, 48, 2).astype(np.uint32).sum((2, 4))
    np.testing.assert_array_equal(raw1, ((mean + 2) // 4).astype(np.uint8).transpose(2, 1, 0))


def test_downsample_odd_edges_and_mode_ties():
    from connectome.viewer.volumes import downsample, plan_passes

    a = np.array([[[0], [5]], [[5], [0]], [[9], [9]]], np.uint64)  # x=3, y=2, z=1
    out = downsample(a, (2, 2, 1), "mode")
    assert out.shape == (2, 1, 1) and out[0, 0, 0] == 5 and out[1, 0, 0] == 9  # non-zero wins a tie
    m = downsample(np.array([[[0]], [[1]]], np.uint8), (2, 1, 1), "max")
    assert m[0, 0, 0] == 1
    passes = plan_passes([(1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 8, 1), (16, 16, 1), (32, 32, 1)], (64, 64, 16))
    assert passes[0].levels == (0, 1, 2, 3) and passes[1].source_level == 3 and passes[1].levels == (4, 5)


# --------------------------------------------------------------------------- meshes, properties
def test_meshes_cover_each_segment_in_nm(ws):
    from connectome.viewer.mesh import decode_fragment

    assert export(ws) == 0
    mesh = ws / "precomputed" / "segmentation" / "mesh"
    assert json.loads((mesh / "info").read_text())["@type"] == "neuroglancer_legacy_mesh"
    for sid, (z0, z1, y0, y1, x0, x1) in SEG_BOXES.items():
        frags = json.loads((mesh / f"{sid}:0").read_text())["fragments"]
        verts = np.concatenate([decode_fragment((mesh / f).read_bytes())[0] for f in frags])
        lo, hi = verts.min(0), verts.max(0)
        # marching cubes at level 0.5 between voxel centres -> the faces lie on voxel edges
        np.testing.assert_allclose(lo, [x0 * 8, y0 * 8, z0 * 40], atol=1e-3)
        np.testing.assert_allclose(hi, [x1 * 8, y1 * 8, z1 * 40], atol=1e-3)


def test_mesh_blocks_join_without_gaps():
    """Meshing in small blocks gives the same surface area as one block (no seams, no overlap)."""
    from connectome.viewer.mesh import decode_fragment, mesh_block

    seg = np.zeros((6, 20, 24), np.uint64)
    seg[1:5, 3:17, 2:21] = 4

    def area(frags):
        total = 0.0
        for blob in frags:
            v, f = decode_fragment(blob)
            t = v[f]
            total += 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum()
        return total

    whole = area(mesh_block(seg, (0, 0, 0), seg.shape, (1, 1, 1)).values())
    parts = []
    for z0 in (0, 3):
        for y0 in (0, 10):
            for x0 in (0, 12):
                blk = seg[z0 : z0 + 4, y0 : y0 + 11, x0 : x0 + 13]
                parts += mesh_block(blk, (z0, y0, x0), seg.shape, (1, 1, 1)).values()
    assert len(parts) > 1
    assert abs(area(parts) - whole) < 1e-6 * whole


def test_segment_properties(ws):
    assert export(ws) == 0
    props = json.loads((ws / "precomputed" / "segmentation" / "segment_properties" / "info").read_text())
    assert props["@type"] == "neuroglancer_segment_properties"
    inline = props["inline"]
    by = {p["id"]: p for p in inline["properties"]}
    rows = {int(i): k for k, i in enumerate(inline["ids"])}
    _, seg, _ = arrays()
    for sid in SEG_BOXES:
        k = rows[sid]
        assert by["size_voxels"]["values"][k] == int((seg == sid).sum())
    assert [by["synapses_in"]["values"][rows[s]] for s in (7, BIG, 3)] == [1, 1, 1]
    assert [by["synapses_out"]["values"][rows[s]] for s in (7, BIG, 3)] == [1, 0, 1]
    manifest = json.loads((ws / "precomputed" / "connectome.json").read_text())
    assert manifest["largest_segments"] == ["7", str(BIG), "3"]  # 7176, 6240, 2400 voxels


def test_synapse_annotations_decode(ws):
    assert export(ws) == 0
    d = ws / "precomputed" / "synapses"
    info = json.loads((d / "info").read_text())
    assert info["annotation_type"] == "POINT" and [r["id"] for r in info["relationships"]] == [
        "pre_segment",
        "post_segment",
    ]
    assert info["dimensions"]["x"] == [8e-9, "m"] and info["dimensions"]["z"] == [40e-9, "m"]
    rec = np.dtype([("xyz", "<f4", (3,)), ("score", "<f4")])
    # spatial: every synapse once, at its voxel centre in x, y, z order
    seen = {}
    for f in (d / "spatial0").iterdir():
        data = f.read_bytes()
        n = struct.unpack_from("<Q", data)[0]
        r = np.frombuffer(data, rec, n, 8)
        ids = np.frombuffer(data, "<u8", n, 8 + n * rec.itemsize)
        seen.update({int(i): (tuple(p["xyz"]), float(p["score"])) for i, p in zip(ids, r)})
    assert seen[1] == ((45.5, 20.5, 3.5), pytest.approx(0.9))
    assert sorted(seen) == [1, 2, 5]
    # by_id: annotation + related segments
    blob = read_sharded(d / "by_id", info["by_id"]["sharding"], 1)
    a = np.frombuffer(blob, rec, 1)[0]
    assert tuple(a["xyz"]) == (45.5, 20.5, 3.5)
    rest = blob[rec.itemsize :]
    assert struct.unpack_from("<IQ", rest) == (1, 7) and struct.unpack_from("<IQ", rest, 12) == (1, BIG)
    # relationships: the synapses of one segment
    rel = {r["id"]: r for r in info["relationships"]}

    def related(name, sid):
        blob = read_sharded(d / rel[name]["key"], rel[name]["sharding"], sid)
        if blob is None:
            return []
        n = struct.unpack_from("<Q", blob)[0]
        return sorted(np.frombuffer(blob, "<u8", n, 8 + n * rec.itemsize).tolist())

    assert related("post_segment", 3) == [5] and related("pre_segment", 3) == [2]
    assert related("post_segment", BIG) == [1] and related("pre_segment", BIG) == []
    assert related("pre_segment", 7) == [1] and related("post_segment", 7) == [2]


# --------------------------------------------------------------------------- incremental
def test_second_run_changes_nothing_and_changed_source_redoes_its_layer(ws, capsys):
    assert export(ws) == 0
    capsys.readouterr()
    pc = ws / "precomputed"
    before = tree_digest(pc)
    assert export(ws) == 0
    out = capsys.readouterr().out
    assert "raw up to date, segmentation up to date, vessel_mask up to date, synapses up to date" in out
    assert tree_digest(pc) == before
    # change raw only
    from connectome.workspace import Workspace

    w = Workspace.open(ws)
    w.array("raw")[0, 0, :5] = 255
    assert export(ws) == 0
    out = capsys.readouterr().out
    assert "raw written" in out and "segmentation up to date" in out
    assert read_level(pc, "raw", 0)[:5, 0, 0].tolist() == [255] * 5
    # the synapse table changed -> annotations and segment properties redone
    (ws / "synapses.csv").write_text((ws / "synapses.csv").read_text() + "9,1,10,10,7,3,0.3\n")
    assert export(ws) == 0
    assert "synapses written" in capsys.readouterr().out
    props = json.loads((pc / "segmentation" / "segment_properties" / "info").read_text())["inline"]
    by = {p["id"]: p for p in props["properties"]}
    assert by["synapses_out"]["values"][props["ids"].index("7")] == 2


def test_interrupted_export_resumes(ws, capsys):
    assert export(ws) == 0
    pc = ws / "precomputed"
    state = pc / ".connectome-export" / "segmentation"
    # simulate a kill: not complete, one block's marker and its chunk gone
    (state / "complete.json").unlink()
    marker = sorted((state / "done").glob("segmentation_p0_*.npz"))[-1]
    marker.unlink()
    for f in (pc / "segmentation" / "8_8_40").iterdir():
        f.unlink()
        break
    capsys.readouterr()
    assert export(ws) == 0
    assert "segmentation resumed" in capsys.readouterr().out
    np.testing.assert_array_equal(read_level(pc, "segmentation", 0), arrays()[1].transpose(2, 1, 0))


# --------------------------------------------------------------------------- missing inputs
def test_workspace_without_segmentation_exports_what_exists(tmp_path, capsys):
    ws = make_workspace(tmp_path / "ws", segmentation=False, synapses=False)
    assert export(ws) == 0
    out = capsys.readouterr().out
    assert "raw written" in out and "vessel_mask written" in out
    assert "missing: segmentation" in out and "connectome segment" in out and "synapses.csv not found" in out
    pc = ws / "precomputed"
    assert not (pc / "segmentation").exists()
    assert json.loads((pc / "connectome.json").read_text())["layers"] == {"raw": "image", "vessel_mask": "image"}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["export-precomputed", "--workspace", "{tmp}/nope"], "not found"),
        (["view", "--workspace", "{tmp}/nope", "--port", "0", "--no-export", "--out", "{tmp}/nope/pc"], "not found"),
        (["view", "--print-url"], "--base-url"),
        (["view", "--workspace", "{ws}", "--size", "10x10", "--screenshot", "{tmp}/a.png"], "--size"),
        (["view", "--workspace", "{ws}", "--port", "70000"], "--port"),
        (["view", "--base-url", "http://x/y", "--workspace", "{ws}"], "--print-url"),
        (["view", "--print-url", "--base-url", "http://127.0.0.1:9/nothing"], "--base-url"),
        (["export-precomputed", "--workspace", "{ws}", "--out", "{ws}/synapses.csv"], "not a directory"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path, ws, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path, ws=ws) for a in argv]
    assert main(argv) == 2
    assert needle in one_line_error(capsys)


def test_bad_synapse_table_exit_2(ws, capsys):
    (ws / "synapses.csv").write_text("synapse_id,z,y,x,pre_segment_id,post_segment_id,score\n1,1,1,1,7,3,1.5\n")
    assert export(ws) == 2
    assert "score" in one_line_error(capsys)


def test_port_in_use_exit_2(ws, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["view", "--workspace", str(ws), "--port", str(port)]) == 2
    err = one_line_error(capsys)
    assert f"--port {port}" in err and "already in use" in err
    assert not (ws / "precomputed").exists()  # failed before any work


# --------------------------------------------------------------------------- server and state
def test_server_cors_encoding_ranges_and_client(ws):
    from connectome.viewer.serve import ViewServer

    assert export(ws) == 0
    pc = ws / "precomputed"
    chunk = sorted((pc / "raw" / "8_8_40").glob("*.gz"))[0]
    with ViewServer(pc, port=0) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        url = f"{srv.data_url}/raw/8_8_40/{chunk.name[:-3]}"
        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip", "Origin": srv.url})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["Access-Control-Allow-Origin"] == srv.url  # the viewer's own pages
            assert r.read() == chunk.read_bytes()
        # another site's page gets no CORS grant (its script cannot read the data)
        with urllib.request.urlopen(
            urllib.request.Request(url, headers={"Origin": "http://evil.example"}), timeout=10
        ) as r:
            assert r.headers["Access-Control-Allow-Origin"] is None
        shard = next((pc / "synapses" / "by_id").iterdir())
        req = urllib.request.Request(f"{srv.data_url}/synapses/by_id/{shard.name}", headers={"Range": "bytes=2-9"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 206 and r.read() == shard.read_bytes()[2:10]
        with urllib.request.urlopen(f"{srv.data_url}/segmentation/info", timeout=10) as r:
            assert json.loads(r.read())["segment_properties"] == "segment_properties"
        with urllib.request.urlopen(srv.url + "/", timeout=10) as r:  # redirect to the bundled client
            assert b"<title>neuroglancer</title>" in r.read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{srv.data_url}/../../volume.zarr/zarr.json", timeout=10)
        assert e.value.code == 404
    with ViewServer(pc, port=0, cors=("http://lab.example:8080",)) as srv:  # connectome view --cors ORIGIN
        req = urllib.request.Request(f"{srv.data_url}/segmentation/info", headers={"Origin": "http://lab.example:8080"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "http://lab.example:8080"
    with ViewServer(pc, port=0, cors=("*",)) as srv:
        req = urllib.request.Request(f"{srv.data_url}/segmentation/info", headers={"Origin": "http://any.example"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_state_lists_layers_and_links_synapses(ws):
    from connectome.viewer.state import build_state

    assert export(ws) == 0
    manifest = json.loads((ws / "precomputed" / "connectome.json").read_text())
    st = build_state(manifest, "https://host/pc")
    layers = {layer["name"]: layer for layer in st["layers"]}
    assert list(layers) == ["raw", "segmentation", "vessel_mask", "synapses"]
    assert layers["segmentation"]["segments"] == ["7", str(BIG), "3"]
    assert layers["synapses"]["linkedSegmentationLayer"] == {
        "pre_segment": "segmentation",
        "post_segment": "segmentation",
    }
    assert layers["raw"]["source"] == "precomputed://https://host/pc/raw"
    assert st["position"] == [48, 32, 4] and st["dimensions"]["z"] == [40e-9, "m"]


def test_print_url_for_published_export(ws, capsys):
    from urllib.parse import unquote

    assert export(ws) == 0
    capsys.readouterr()
    assert main(["view", "--print-url", "--base-url", "gs://bucket/ws", "--workspace", str(ws)]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
    st = json.loads(unquote(url.split("#!", 1)[1]))
    assert [layer["source"] for layer in st["layers"]][0] == "precomputed://gs://bucket/ws/raw"
