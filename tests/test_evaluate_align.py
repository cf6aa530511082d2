"""Alignment criteria of ``connectome evaluate`` against the truth transforms
(:mod:`connectome.evaluate.align_truth`) and the downstream criterion
(:mod:`connectome.evaluate.downstream`), on hand-written transforms with known errors.

The workspace transforms are constant (or linear) displacement grids, the truth transforms plain
translations, so the misplacement D_z(p) = T_z(p) - d_z - F_z(p) of every grid point is known by
hand: 64 x 64 frame, grid step 16 -> 16 points per section."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_evaluate import make_truth, make_workspace, texture, write_csv

from connectome.evaluate import EvaluateConfig, evaluate_workspace, format_table
from connectome.evaluate.align_truth import evaluate_transforms, over_registration
from connectome.evaluate.tables import TILES, read_table
from connectome.montage.warp import DisplacementGrid

H = W = 64
TRUE_TILES = [(0, 0, 0, 0), (0, 1, 40, 0), (1, 0, 0, 40), (1, 1, 40, 40)]  # row, col, x, y


def write_case(ws, truth, nz, misplace=None, status=None, truth_t=None, tile_shift=None, linear=None, no_file=()):
    """Workspace + truth folders whose misplacement is D_z(p) = misplace[z] (+ linear(p)).

    truth_t[z]: the true transform's translation (y, x); tile_shift[z]: the stitched montage frame's
    offset d_z (y, x) from the stage frame; T_z(p) = p + truth_t + tile_shift + misplace (+ linear)."""
    misplace, status, truth_t, tile_shift = misplace or {}, status or {}, truth_t or {}, tile_shift or {}
    tdir = ws / "align" / "transforms"
    tdir.mkdir(parents=True, exist_ok=True)
    est_rows, true_rows, records = [], [], []
    for z in range(nz):
        off = (
            np.asarray(truth_t.get(z, (0.0, 0.0)))
            + np.asarray(tile_shift.get(z, (0.0, 0.0)))
            + np.asarray(misplace.get(z, (0.0, 0.0)))
        )
        nodes = np.stack(np.meshgrid([0.0, 64.0], [0.0, 64.0], indexing="ij"), axis=-1)  # (2, 2, (y, x))
        disp = np.broadcast_to(off, (2, 2, 2)).copy()
        if linear is not None:
            disp += linear(nodes)
        if z not in no_file:
            DisplacementGrid((0.0, 0.0), 64.0, disp).to_npz(tdir / f"z{z:05d}.npz")
        records.append({"z": z, "status": status.get(z, "aligned" if z else "reference"), "ref": None})
        dy, dx = tile_shift.get(z, (0.0, 0.0))
        for r, c, x, y in TRUE_TILES:
            true_rows.append((z, r, c, x, y))
            est_rows.append((z, r, c, x + dx, y + dy))
    (ws / "align" / "sections.json").write_text(json.dumps(records))
    write_csv(ws / "stitch" / "tiles.csv", TILES, est_rows)
    (truth / "truth").mkdir(parents=True, exist_ok=True)
    write_csv(truth / "truth" / "tiles.csv", TILES, true_rows)
    sections = [
        {
            "section": z,
            "missing": False,
            "damaged": False,
            "transform": {
                "affine": [[1.0, 0.0, float(truth_t.get(z, (0, 0))[0])], [0.0, 1.0, float(truth_t.get(z, (0, 0))[1])]],
                "elastic": None,
            },
        }
        for z in range(nz)
    ]
    (truth / "truth" / "sections.json").write_text(json.dumps({"shape_zyx": [nz, H, W], "sections": sections}))


def criteria(ws, truth, nz, grid=16):
    return evaluate_transforms(
        ws,
        truth,
        read_table(ws / "stitch" / "tiles.csv", TILES),
        read_table(truth / "truth" / "tiles.csv", TILES),
        (nz, H, W),
        grid,
    )


def test_identity_scores_zero_with_offsets_that_cancel(tmp_path):
    ws, truth = tmp_path / "ws", tmp_path / "truth"
    # a true translation and a montage-frame offset d_z, both reproduced exactly by T_z: D = 0
    write_case(ws, truth, 4, truth_t={2: (2.0, -3.0)}, tile_shift={1: (5.0, 7.0), 2: (-1.0, 4.0)})
    r = criteria(ws, truth, 4)
    assert r["scoring"]["n_sections_scored"] == 4 and r["scoring"]["n_points_per_section"] == 16
    a, b, c = r["adjacent_pair_error"], r["accumulated_error"], r["drift"]
    assert a["median_px"] == pytest.approx(0, abs=1e-9) and a["p95_px"] == pytest.approx(0, abs=1e-9)
    assert (a["n_pairs_scored"], a["n_pairs_excluded"]) == (3, 0)
    assert b["worst_rms_px"] == pytest.approx(0, abs=1e-9)
    assert c["slope_px_per_section"] == pytest.approx(0, abs=1e-9)
    assert a["pass"] and b["pass"] and c["pass"]


def test_tile_offset_not_removed_shows_as_misplacement(tmp_path):
    """d_z is taken from the tiles: a montage offset missing from T_z is a misplacement."""
    ws, truth = tmp_path / "ws", tmp_path / "truth"
    write_case(ws, truth, 2, misplace={1: (-6.0, -8.0)}, tile_shift={1: (6.0, 8.0)})  # T_1 = identity
    r = criteria(ws, truth, 2)
    assert r["adjacent_pair_error"]["median_px"] == pytest.approx(10.0)


def test_drift_of_half_a_pixel_per_section(tmp_path):
    ws, truth = tmp_path / "ws", tmp_path / "truth"
    # D_z = (0.3 z, 0.4 z): |step| = 0.5 px per section
    write_case(ws, truth, 5, misplace={z: (0.3 * z, 0.4 * z) for z in range(5)})
    r = criteria(ws, truth, 5)
    a, b, c = r["adjacent_pair_error"], r["accumulated_error"], r["drift"]
    assert a["median_px"] == pytest.approx(0.5) and a["p95_px"] == pytest.approx(0.5) and a["pass"]
    # the global affine takes out the mean translation (0.6, 0.8): RMS_z = 0.5 |z - 2|
    assert np.ravel(b["global_affine_yx"]) == pytest.approx([0, 0, 0.6, 0, 0, 0.8], abs=1e-9)
    assert [b["per_section_rms_px"][str(z)] for z in range(5)] == pytest.approx([1.0, 0.5, 0.0, 0.5, 1.0], abs=1e-4)
    assert b["worst_rms_px"] == pytest.approx(1.0) and b["worst_z"] == 0  # tie with z = 4: the lowest z
    assert c["slope_px_per_section"] == pytest.approx(0.5) and c["slope_yx"] == pytest.approx([0.3, 0.4])
    assert not c["pass"] and c["target_px_per_section"] == 0.1


def test_one_section_off_by_three_pixels(tmp_path):
    ws, truth = tmp_path / "ws", tmp_path / "truth"
    write_case(ws, truth, 6, misplace={2: (0.0, 3.0)})
    r = criteria(ws, truth, 6)
    a, b, c = r["adjacent_pair_error"], r["accumulated_error"], r["drift"]
    # 5 pairs x 16 points; pairs (1, 2) and (2, 3) are off by 3: 32 of 80 values
    assert a["median_px"] == pytest.approx(0, abs=1e-9) and a["p95_px"] == pytest.approx(3.0)
    assert a["pass_median"] and not a["pass_p95"] and not a["pass"]
    assert a["worst_pair"] == [1, 2] and a["worst_pair_max_px"] == pytest.approx(3.0)
    # global translation (0, 0.5): section 2 keeps 2.5, the others 0.5
    assert b["worst_z"] == 2 and b["worst_rms_px"] == pytest.approx(2.5) and b["pass"]
    assert b["per_section_rms_px"]["0"] == pytest.approx(0.5)
    # line through m_z = (0, -0.5 | 2.5 at z=2): slope = -1.5 / 17.5
    assert c["slope_px_per_section"] == pytest.approx(1.5 / 17.5) and c["pass"]


def test_global_affine_is_removed_but_not_from_adjacent_pairs(tmp_path):
    ws, truth = tmp_path / "ws", tmp_path / "truth"
    # every section misplaced by the same affine field: (a) sees no difference, (b) removes it
    write_case(
        ws,
        truth,
        3,
        misplace={z: (2.0, 0.0) for z in range(3)},
        linear=lambda p: np.stack([0.01 * p[..., 0], -0.02 * p[..., 1]], axis=-1),
    )
    r = criteria(ws, truth, 3)
    assert r["adjacent_pair_error"]["p95_px"] == pytest.approx(0, abs=1e-9)
    assert r["accumulated_error"]["worst_rms_px"] == pytest.approx(0, abs=1e-9)
    assert np.ravel(r["accumulated_error"]["global_affine_yx"]) == pytest.approx([0.01, 0, 2.0, 0, -0.02, 0], abs=1e-9)


def test_flagged_and_missing_sections_are_excluded_and_counted(tmp_path):
    ws, truth = tmp_path / "ws", tmp_path / "truth"
    # z = 3 is bad and 40 px off; z = 5 is missing (no transform file): neither may count
    write_case(ws, truth, 6, misplace={3: (40.0, 0.0), 4: (0.0, 1.0)}, status={3: "bad", 5: "missing"}, no_file=(5,))
    r = criteria(ws, truth, 6)
    sc, a, b = r["scoring"], r["adjacent_pair_error"], r["accumulated_error"]
    assert sc["n_sections_scored"] == 4
    assert sc["excluded_sections"] == [
        {"z": 3, "reason": "QC-flagged (bad)"},
        {"z": 5, "reason": "QC-flagged (missing)"},
    ]
    assert (a["n_pairs_scored"], a["n_pairs_excluded"]) == (2, 3)
    assert a["excluded_pairs"] == [[2, 3], [3, 4], [4, 5]]
    assert a["max_px"] == pytest.approx(0, abs=1e-9)  # pairs (0, 1), (1, 2) only
    assert b["worst_z"] == 4 and b["worst_rms_px"] == pytest.approx(0.75)  # mean x offset 0.25 removed
    assert str(3) not in b["per_section_rms_px"]


def test_no_truth_transforms_is_a_status_not_a_crash(tmp_path):
    ws, truth = tmp_path / "ws", tmp_path / "truth"
    write_case(ws, truth, 3)
    doc = json.loads((truth / "truth" / "sections.json").read_text())
    for sec in doc["sections"]:
        del sec["transform"]
    (truth / "truth" / "sections.json").write_text(json.dumps(doc))
    r = criteria(ws, truth, 3)
    for key in ("adjacent_pair_error", "accumulated_error", "drift"):
        assert r[key]["status"] == "no truth" and "transforms" in r[key]["reason"]
    assert r["adjacent_pair_error"]["target_p95_px"] == 2.0
    (truth / "truth" / "sections.json").unlink()
    assert criteria(ws, truth, 3)["drift"] == {
        "status": "no truth",
        "reason": "no truth/sections.json",
        "target_px_per_section": 0.1,
    }


def test_over_registration_known_answer():
    ws = [0.9, 0.8, 0.5, np.nan]
    tr = [0.8, 0.8, 0.1, 0.3]
    r = over_registration(ws, tr, left_out_sections={3}, target=0.02)
    assert (r["n_pairs"], r["n_pairs_left_out"]) == (2, 2)  # pairs (2, 3) and (3, 4) touch section 3
    assert r["delta_ncc"] == pytest.approx(0.05) and not r["pass"]
    r = over_registration(ws, tr, left_out_sections=())  # the flat pair (NaN) is left out of both
    assert r["n_pairs"] == 3 and r["delta_ncc"] == pytest.approx((2.2 - 1.7) / 3)
    assert over_registration([np.nan], [0.5], ())["status"] == "no data"


# --------------------------------------------------------------------------------- end to end


@pytest.fixture
def aligned_scene(tmp_path):
    """Workspace (raw = truth raw, a segmentation) + truth; section 2 QC-flagged bad and 3 px off."""
    nz = 5
    raw = texture((nz, H, W), seed=3)
    neurons = np.zeros((nz, H, W), np.uint64)
    neurons[:, :, :32], neurons[:, :, 32:] = 1, 2
    ws, truth = tmp_path / "ws", tmp_path / "truth"
    make_truth(truth, {"raw": raw, "neurons": neurons})
    ws_raw = raw.copy()
    ws_raw[2] = raw[1]  # an over-registered flagged section: must not count in (d)
    make_workspace(ws, {"raw": ws_raw, "segmentation": neurons + np.uint64(10)})
    write_case(ws, truth, nz, misplace={2: (3.0, 0.0), 4: (0.0, 0.5)}, status={2: "bad"})
    return ws, truth


def test_evaluate_workspace_reports_criteria_with_targets(aligned_scene):
    ws, truth = aligned_scene
    res = evaluate_workspace(ws, truth, EvaluateConfig(patch_px=32))
    al = res["alignment"]
    assert al["transform_scoring"]["n_sections_scored"] == 4
    a = al["adjacent_pair_error"]
    assert (a["n_pairs_scored"], a["n_pairs_excluded"]) == (2, 2)
    assert a["median_px"] == pytest.approx(0.25) and a["p95_px"] == pytest.approx(0.5) and a["pass"]
    assert al["accumulated_error"]["worst_z"] == 4 and al["accumulated_error"]["pass"]
    d = al["over_registration"]
    assert d["n_pairs"] == 2 and d["delta_ncc"] == pytest.approx(0, abs=1e-12) and d["pass"]
    assert d["target"] == 0.02
    assert al["downstream"]["status"] == "not requested"
    assert al["ncc_neighbour_pairs"] == 4  # the existing entries stay
    table = format_table(res)
    for text in (
        "(a) adjacent-pair error median (px)",
        "(a) section pairs scored / excluded",
        "(b) worst section (after one global affine)",
        "(c) drift (px/section)",
        "(d) over-registration: NCC aligned - truth",
        "<= 2: pass",
        "<= +0.02: pass",
        "not requested (opt-in: connectome evaluate --downstream)",
        "residual median (px)",
    ):
        assert text in table, text
    assert "2 / 2" in table


def test_cli_downstream_without_segmentation_is_not_run(aligned_scene, capsys):
    from connectome.cli import main
    from connectome.workspace import Workspace

    ws, truth = aligned_scene
    Workspace.open(ws).remove_array("segmentation")
    assert main(["evaluate", "--workspace", str(ws), "--truth", str(truth), "--downstream", "-q"]) == 0
    out = capsys.readouterr().out
    assert "(e) downstream" in out and "not run (no segmentation in WS/volume.zarr" in out
    ev = json.loads((ws / "evaluation.json").read_text())
    assert ev["alignment"]["downstream"]["status"] == "not run" and ev["config"]["downstream"] is True
    assert not (ws / "evaluate").exists()


def test_downstream_delta_and_scratch_reuse(aligned_scene, monkeypatch):
    """(e) with the segmenter replaced by a stub that labels the imported raw's halves (1 | 2 split
    at x = 32, the truth): ARAND of the truth raw = 0, so delta = the workspace's own ARAND."""
    from connectome.evaluate import downstream
    from connectome.workspace import Workspace

    ws, truth = aligned_scene
    seg = np.zeros((5, H, W), np.uint64)
    seg[:, :, :16], seg[:, :, 16:] = 1, 2  # the workspace: object 1 split wrongly
    Workspace.open(ws).array("segmentation")[...] = seg
    calls = []

    def fake_plan_stages(ws_path, ws_obj, scratch, truth_path, voxel):
        def segment():
            w = Workspace.open(scratch)
            truth_seg = np.zeros((5, H, W), np.uint64)
            truth_seg[:, :, :32], truth_seg[:, :, 32:] = 7, 8
            w.require_array("segmentation", np.uint64, truth_seg.shape)[...] = truth_seg
            return "segment"

        def imported():
            if not (scratch / "volume.zarr").exists():
                Workspace.create(scratch, (5, H, W), voxel)
            return "import"

        return [("import", [imported]), ("segment", [segment])], {"segment": {"config": "defaults"}}

    monkeypatch.setattr(downstream, "plan_stages", fake_plan_stages)
    cfg = EvaluateConfig(downstream=True, patch_px=32)

    def run(*_):
        return evaluate_workspace(ws, truth, cfg)

    monkeypatch.setattr(downstream, "_default_runner", lambda *a: calls.append)
    e = run()["alignment"]["downstream"]
    assert e["status"] == "ok" and e["arand_truth_raw"] == pytest.approx(0, abs=1e-12)
    assert e["delta_arand"] == pytest.approx(e["arand_aligned"]) and e["delta_arand"] > 0.02 and not e["pass"]
    assert e["delta_voi"] == pytest.approx(e["voi_aligned"]) and e["target"] == 0.02
    assert not e["reused_scratch"] and calls == ["import", "segment"]
    scratch = ws / "evaluate" / "truth_raw"
    (scratch / "marker").write_text("kept while the truth is unchanged")
    assert run()["alignment"]["downstream"]["reused_scratch"] and (scratch / "marker").exists()
    (truth / "synth.json").write_text("{}")  # another truth: the scratch workspace is rebuilt
    assert not run()["alignment"]["downstream"]["reused_scratch"] and not (scratch / "marker").exists()
    table = format_table(json.loads((ws / "evaluation.json").read_text()))
    assert "(e) downstream: ARAND aligned - truth raw" in table and "<= +0.02: FAIL" in table


def test_demo_summary_shows_the_criteria(aligned_scene):
    from connectome.demo import summary_table

    ws, truth = aligned_scene
    evaluate_workspace(ws, truth, EvaluateConfig(patch_px=32))
    text = summary_table(ws)
    assert "alignment (a): adjacent-pair error median / p95 (px)     0.25 / 0.50  (targets 1 / 2: pass)" in text
    assert "alignment (b)" in text and "(z 4)  (<= 5: pass)" in text
    assert "alignment (c): drift (px/section)" in text and "alignment (d)" in text and "+0.000" in text
    assert "alignment (e)" in text and "opt-in: connectome evaluate --downstream" in text
    drift = json.loads((ws / "evaluation.json").read_text())["alignment"]["drift"]
    assert not math.isnan(drift["slope_px_per_section"]) and drift["pass"] is True
