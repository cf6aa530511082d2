"""A toy neuropil for the segmentation fine-tuning tests (boundary, FFN): Voronoi cells with dark
membranes in a tiny workspace whose segmentation merged two cells, and a review of 3 queued boxes
corrected to the true cells (one held back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from connectome.cli import main
from connectome.workspace import Workspace

SHAPE = (16, 96, 96)


def err_line(capsys) -> str:
    """stderr, asserted to be one line without a traceback."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def workspace(path, raw, seg) -> Workspace:
    ws = Workspace.create(path, SHAPE, (40.0, 8.0, 8.0))
    ws.require_array("raw", "uint8", SHAPE)[...] = raw
    ws.require_array("segmentation", "uint64", SHAPE)[...] = seg
    return ws


def plan(ws, target, count, box="8,32,32") -> None:
    args = ["review", "plan", "--workspace", str(ws.path), "--target", target, "--count", str(count), "--box", box]
    assert main(args) == 0


def import_labels(ws, target, labels) -> int:
    return main(["review", "import", "--workspace", str(ws.path), "--target", target, "--labels", str(labels)])


def cells(seed: int = 0, n: int = 40) -> np.ndarray:
    """(z, y, x) uint64 Voronoi cells 1..n (drifting slowly along z): a toy neuropil."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, SHAPE[1], size=(n, 2))
    drift = rng.normal(0, 0.6, size=(n, 2))
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    out = np.empty(SHAPE, np.uint64)
    for z in range(SHAPE[0]):
        p = pts + z * drift
        d = (yy[None] - p[:, 0, None, None]) ** 2 + (xx[None] - p[:, 1, None, None]) ** 2
        out[z] = np.argmin(d, axis=0) + 1
    return out


def toy_raw(labels) -> np.ndarray:
    """Membranes (the boundary of ``labels``) dark, cells light, Gaussian noise."""
    from unet.boundary_data import boundary_full_res

    noise = np.random.default_rng(1).normal(0, 15, SHAPE)
    return (np.where(boundary_full_res(labels), 70, 170) + noise).clip(0, 255).astype(np.uint8)


def corrected_review(root: Path, tiny_config: str) -> Path:
    """``root/ws`` with a merge error and 3 corrected boxes (``root/truth.zarr`` = the cells),
    ``root/tiny.yaml`` = ``tiny_config``; returns ``root``."""
    c = cells()
    ws = workspace(root / "ws", toy_raw(c), np.where(c == 2, 1, c))  # a merge error
    plan(ws, "segmentation", 3)
    a = zarr.create_array(str(root / "truth.zarr"), shape=SHAPE, chunks=SHAPE, dtype="uint64", zarr_format=3)
    a[:] = c
    assert import_labels(ws, "segmentation", root / "truth.zarr") == 0
    (root / "tiny.yaml").write_text(tiny_config)
    return root


def finetune(kind: str, root: Path, out, *extra, init, corrections=None) -> int:
    """``connectome train KIND --init INIT --corrections root/ws/review/segmentation --out OUT
    --config root/tiny.yaml EXTRA...``."""
    corrections = corrections or root / "ws" / "review" / "segmentation"
    args = ["train", kind, "--init", init, "--corrections", corrections, "--out", out, "--config", root / "tiny.yaml"]
    return main([str(a) for a in (*args, *extra)])


def check_wrong_reviews_refused(root: Path, tmp_path: Path, capsys, train) -> tuple[np.ndarray, np.ndarray]:
    """``train(corrections=...)`` on a segmentation review with nothing imported and on a vessel
    review exits 2 with one line naming the problem; returns the toy workspace's raw and
    segmentation (for more refusals)."""
    g = zarr.open_group(str(root / "ws" / "volume.zarr"), mode="r")
    raw, seg = np.asarray(g["raw"][:]), np.asarray(g["segmentation"][:])
    ws2 = workspace(tmp_path / "ws2", raw, seg)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    disk = ((yy - 48) ** 2 + (xx - 48) ** 2 < 20**2)[None].repeat(SHAPE[0], 0)
    ws2.require_array("vessel_prob", "uint8", SHAPE)[...] = np.where(disk, 128, 20).astype(np.uint8)
    ws2.require_array("vessel_mask", "uint8", SHAPE)[...] = disk.astype(np.uint8)
    plan(ws2, "segmentation", 2)
    assert train(corrections=ws2.path / "review" / "segmentation") == 2
    assert "no corrections" in err_line(capsys)
    plan(ws2, "vessels", 2)
    a = zarr.create_array(str(tmp_path / "v.zarr"), shape=SHAPE, chunks=SHAPE, dtype="uint8", zarr_format=3)
    a[:] = disk.astype(np.uint8)
    assert import_labels(ws2, "vessels", tmp_path / "v.zarr") == 0
    capsys.readouterr()
    assert train(corrections=ws2.path / "review" / "vessels") == 2
    assert "segmentation corrections" in err_line(capsys)
    return raw, seg
