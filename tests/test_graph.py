"""``connectome graph``: the edge table and GraphML against hand-computed answers and a naive
networkx reference, the filters, the blockwise segment sizes, determinism, and every bad-input
path (exit 2, one line on stderr, nothing written or changed)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli, tree_digest

from connectome.cli import main
from connectome.graph import read_graph, segment_sizes
from connectome.synapses.table import read_synapse_table
from connectome.workspace import Workspace

BIG = 2**63 + 5  # ids above 2**63 must survive
HEADER = "synapse_id,z,y,x,pre_segment_id,post_segment_id,score,notes"
ROWS = [
    (1, 1, 2, 3, 1, 2, 0.9),
    (2, 1, 2, 3, 1, 2, 0.7),
    (3, 1, 2, 3, 2, 1, 0.5),  # 2 -> 1: with 1 -> 2 a reciprocal pair
    (4, 1, 2, 3, 1, 1, 0.9),  # autapse
    (5, 1, 2, 3, 0, 2, 0.9),  # id 0
    (6, 1, 2, 3, 3, BIG, 0.2),
    (7, 1, 2, 3, 1, 3, 0.8),
]


def segmentation():
    seg = np.zeros((4, 16, 16), np.uint64)
    seg[:, :8, :8] = 1  # 256 voxels
    seg[:, :8, 8:] = 2  # 256
    seg[:, 8:, :8] = 3  # 256
    seg[:2, 8:, 8:] = BIG  # 128; the rest stays 0
    return seg


def write_table(ws, rows=ROWS, header=HEADER):
    lines = [header] + [",".join(str(v) for v in r) + ",note" for r in rows]
    (ws / "synapses.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def ws(tmp_path):
    path = tmp_path / "ws"
    w = Workspace.create(path, (4, 16, 16), (40, 8, 8))
    w.require_array("segmentation", "uint64", (2, 8, 8))[:] = segmentation()
    write_table(path)
    return path


def graph(ws, *extra):
    return main(["graph", "--workspace", str(ws), "-q", *map(str, extra)])


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- outputs


def test_edges_nodes_and_summary(ws, capsys):
    assert graph(ws) == 0
    out = capsys.readouterr().out
    assert "4 neurons, 4 edges, 1 reciprocal pairs" in out
    assert "7 read, 5 used; dropped 1 with id 0, 1 autapses, 0 below --min-score 0" in out
    assert (ws / "connectivity.csv").read_text() == (
        "pre_segment_id,post_segment_id,synapse_count,mean_score\n"
        "1,2,2,0.800000\n1,3,1,0.800000\n2,1,1,0.500000\n"
        f"3,{BIG},1,0.200000\n"
    )
    g = read_graph(ws / "connectivity.graphml")
    assert g.is_directed() and sorted(g.nodes) == [1, 2, 3, BIG]
    assert g.nodes[1] == {"size_voxels": 256, "in_degree": 1, "out_degree": 2, "synapses_in": 1, "synapses_out": 3}
    assert g.nodes[BIG] == {"size_voxels": 128, "in_degree": 1, "out_degree": 0, "synapses_in": 1, "synapses_out": 0}
    assert g.edges[1, 2] == {"synapse_count": 2, "mean_score": 0.8}
    assert g.graph["min_score"] == 0.0 and g.graph["min_synapses"] == 1


def test_filters(ws, capsys):
    assert graph(ws, "--min-score", "0.3", "--min-synapses", "2") == 0
    out = capsys.readouterr().out
    assert "2 neurons, 1 edges, 0 reciprocal pairs" in out
    assert (
        "2 used; dropped 1 with id 0, 1 autapses, 1 below --min-score 0.3, 2 on 2 edges below --min-synapses 2"
    ) in out
    assert (ws / "connectivity.csv").read_text().splitlines()[1:] == ["1,2,2,0.800000"]
    g = read_graph(ws / "connectivity.graphml")
    assert list(g.edges) == [(1, 2)] and g.graph == {**g.graph, "min_score": 0.3, "min_synapses": 2}
    # a score equal to the threshold is kept
    assert graph(ws, "--min-score", "0.9") == 0
    assert (ws / "connectivity.csv").read_text().splitlines()[1:] == ["1,2,1,0.900000"]


def test_same_input_same_bytes(ws):
    assert graph(ws) == 0
    first = tree_digest(ws)
    assert graph(ws) == 0
    assert tree_digest(ws) == first
    assert not [p for p in ws.iterdir() if p.name.endswith(".partial")]


def test_matches_a_naive_networkx_reference(tmp_path):
    """2000 random synapses: the vectorised aggregation equals loops building a networkx DiGraph."""
    import networkx as nx

    rng = np.random.default_rng(5)
    n = 2000
    pre, post = rng.integers(0, 30, n), rng.integers(0, 30, n)
    score = np.round(rng.random(n), 3)
    path = tmp_path / "ws"
    w = Workspace.create(path, (2, 8, 40), (40, 8, 8))
    seg = np.broadcast_to(np.arange(40, dtype=np.uint64)[None, None, :], (2, 8, 40)).copy()
    w.require_array("segmentation", "uint64", (1, 4, 16))[:] = seg
    write_table(path, [(i + 1, 0, 0, 0, a, b, s) for i, (a, b, s) in enumerate(zip(pre, post, score))])
    assert graph(path, "--min-score", "0.2", "--min-synapses", "2") == 0

    ref = nx.DiGraph()
    for a, b, s in zip(pre.tolist(), post.tolist(), score.tolist()):
        if a and b and a != b and s >= 0.2:
            d = ref.get_edge_data(a, b) or {"synapse_count": 0, "sum": 0.0}
            ref.add_edge(a, b, synapse_count=d["synapse_count"] + 1, sum=d["sum"] + s)
    ref.remove_edges_from([(a, b) for a, b, d in ref.edges(data=True) if d["synapse_count"] < 2])
    ref.remove_nodes_from([v for v in list(ref) if ref.degree(v) == 0])
    got = read_graph(path / "connectivity.graphml")
    assert sorted(got.edges) == sorted(ref.edges)
    for a, b, d in ref.edges(data=True):
        assert got.edges[a, b]["synapse_count"] == d["synapse_count"]
        assert got.edges[a, b]["mean_score"] == pytest.approx(d["sum"] / d["synapse_count"], abs=1e-6)
    for v in ref:
        assert got.nodes[v]["size_voxels"] == 16
        assert got.nodes[v]["in_degree"] == ref.in_degree(v) and got.nodes[v]["out_degree"] == ref.out_degree(v)
        assert got.nodes[v]["synapses_in"] == ref.in_degree(v, weight="synapse_count")
        assert got.nodes[v]["synapses_out"] == ref.out_degree(v, weight="synapse_count")


def test_segment_sizes_blockwise():
    rng = np.random.default_rng(2)
    seg = rng.integers(0, 6, size=(5, 9, 11)).astype(np.uint64) * np.uint64(2**61)
    seg[:, 3:6] = 7  # long runs
    ids, counts = segment_sizes(seg, block_shape_zyx=(2, 4, 3))
    want_ids, want_counts = np.unique(seg, return_counts=True)
    assert ids.tolist() == want_ids[want_ids != 0].tolist()
    assert counts.tolist() == want_counts[want_ids != 0].tolist()


def test_reader_accepts_float_typed_ids_and_quotes(tmp_path):
    p = tmp_path / "synapses.csv"
    p.write_text(
        'synapse_id,z,y,x,pre_segment_id,post_segment_id,score,notes\n'
        '1,1.5,2,3,12.0,7,0.5,"a, quoted"\n\n2,1,2,3,7,12,1,x\n'
    )
    t = read_synapse_table(p)
    assert t.pre_segment_id.tolist() == [12, 7] and t.z.tolist() == [1.5, 1.0] and len(t) == 2


def test_fast_and_checked_readers_agree(tmp_path):
    from connectome.synapses import table as tbl

    rng = np.random.default_rng(8)
    p = tmp_path / "synapses.csv"
    rows = [
        (i + 1, *np.round(rng.random(3) * 100, 2), *rng.integers(0, 2**62, 2), round(rng.random(), 4))
        for i in range(300)
    ]
    p.write_text(
        "notes,synapse_id,z,y,x,pre_segment_id,post_segment_id,score\n"
        + "".join("n," + ",".join(str(v) for v in r) + "\n" for r in rows)
    )
    header = tbl._read_header(p)
    fast, checked = tbl._read_fast(p, header), tbl._read_checked(p, header)
    for name in tbl.COLUMNS:
        assert np.array_equal(getattr(fast, name), getattr(checked, name)), name
    assert fast.synapse_id.dtype == np.uint64 and fast.pre_segment_id[0] == rows[0][4]


def test_header_only_table_gives_an_empty_graph(ws, capsys):
    write_table(ws, [])
    assert graph(ws) == 0
    assert "0 neurons, 0 edges" in capsys.readouterr().out
    assert (ws / "connectivity.csv").read_text() == "pre_segment_id,post_segment_id,synapse_count,mean_score\n"
    assert read_graph(ws / "connectivity.graphml").number_of_nodes() == 0


def test_end_to_end_subprocess(ws):
    r = run_cli("graph", "--workspace", ws, "--min-synapses", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("graph: 4 neurons, 4 edges, 1 reciprocal pairs")


def test_failed_write_leaves_old_outputs(ws, monkeypatch):
    import connectome.graph as graph_mod

    assert graph(ws) == 0

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(graph_mod, "write_graphml", boom)
    write_table(ws, ROWS[:2])
    before = tree_digest(ws)
    assert graph(ws) == 1  # an internal failure, not bad input
    # neither file was replaced: the CSV (written first) waits in a temporary file until both are done
    assert tree_digest(ws) == before
    assert not [p for p in ws.iterdir() if p.name.endswith(".partial")]


# ----------------------------------------------------------------------------- bad input

BAD_TABLES = [
    ("synapse_id,z,y,x,pre_segment_id,score", [], "missing column(s) post_segment_id"),
    ("synapse_id,z,x,pre_segment_id,score", [], "missing column(s) y, post_segment_id"),
    (HEADER, [(1, 1, 2, 3, 1, "abc", 0.5)], "line 2, column 'post_segment_id': expected an integer id"),
    (HEADER, [(1, 1, 2, 3, 1, 2, 0.5), (2, 1, "nan", 3, 1, 2, 0.5)], "line 3, column 'y': expected a finite number"),
    (HEADER, [(1, 1, 2, 3, 1, 2, 1.5)], "line 2, column 'score': expected a number in [0, 1]"),
    (HEADER, [(1, 1, 2, 3, -1, 2, 0.5)], "line 2, column 'pre_segment_id'"),
    (HEADER, [(1, 1, 2, 3, 1, 2, 0.5), (1, 1, 2, 3, 2, 1, 0.5)], "line 3, column 'synapse_id': duplicate id 1"),
    (HEADER, [(1, 1, 2)], "line 2: expected at least 7 fields, got 4"),
    (
        HEADER,
        [(1, 1, 2, 3, 1, 99, 0.5), (2, 1, 2, 3, 98, 2, 0.5), (3, 1, 2, 3, 97, 1, 0.5)],
        "3 segment id(s) in pre_segment_id/post_segment_id are not in",
    ),
]


@pytest.mark.parametrize("header, rows, fragment", BAD_TABLES)
def test_bad_table_exits_2_and_writes_nothing(ws, capsys, header, rows, fragment):
    write_table(ws, rows, header)
    before = tree_digest(ws)
    assert graph(ws) == 2
    line = one_line_error(capsys)
    assert fragment in line and "synapses.csv" in line, line
    assert tree_digest(ws) == before


def test_absent_ids_are_named(ws, capsys):
    write_table(ws, [(1, 1, 2, 3, 1, 99, 0.5), (2, 1, 2, 3, 98, 2, 0.5)])
    assert graph(ws) == 2
    line = one_line_error(capsys)
    assert "(e.g. 98, 99)" in line and "segmentation" in line


def test_existing_outputs_untouched_by_bad_input(ws, capsys):
    assert graph(ws) == 0
    capsys.readouterr()
    before = tree_digest(ws)
    write_table(ws, [(1, 1, 2, 3, 1, 2, "high")])
    after_table = tree_digest(ws)
    assert graph(ws) == 2
    assert tree_digest(ws) == after_table
    assert {k: v for k, v in before.items() if k.startswith("connectivity")} == {
        k: v for k, v in after_table.items() if k.startswith("connectivity")
    }


def test_no_table(ws, capsys):
    (ws / "synapses.csv").unlink()
    assert graph(ws) == 2
    line = one_line_error(capsys)
    assert "synapses.csv: not found" in line
    assert not (ws / "connectivity.csv").exists()


def test_no_segmentation(tmp_path, capsys):
    path = tmp_path / "ws"
    Workspace.create(path, (2, 8, 8), (40, 8, 8)).require_array("raw", "uint8", (2, 8, 8))
    write_table(path)
    assert graph(path) == 2
    line = one_line_error(capsys)
    assert "has no array 'segmentation'" in line and "connectome segment" in line


def test_no_workspace(tmp_path, capsys):
    assert graph(tmp_path / "nope") == 2
    assert "not found" in one_line_error(capsys)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--min-score", "1.5"], "--min-score: expected a number in [0, 1]"),
        (["--min-score", "nan"], "--min-score"),
        (["--min-score", "high"], "--min-score"),
        (["--min-synapses", "0"], "--min-synapses: expected a positive integer"),
        (["--min-synapses", "2.5"], "--min-synapses"),
    ],
)
def test_bad_options(ws, capsys, args, fragment):
    assert graph(ws, *args) == 2
    assert fragment in one_line_error(capsys)
    assert not (ws / "connectivity.csv").exists()
