"""Block geometry: exact tiling, halos at the border, padding, and halo-dependent ops."""

from __future__ import annotations

import numpy as np
import pytest

from connectome.blockwise import BlockGrid, Box, crop_to_write, read_with_halo


@pytest.mark.parametrize("seed", range(25))
def test_every_voxel_written_exactly_once(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 40, 3))
    block = tuple(int(v) for v in rng.integers(1, 17, 3))
    halo = tuple(int(v) for v in rng.integers(0, 6, 3))
    grid = BlockGrid(shape, block, halo)
    count = np.zeros(shape, dtype=np.int32)
    ids = set()
    for b in grid.blocks():
        ids.add(b.block_id)
        count[b.write_box.slices] += 1
        # write box is block-aligned, so it starts on a chunk boundary
        assert all(bg % bs == 0 for bg, bs in zip(b.write_box.begin_zyx, block))
        assert b.read_box.contains(b.write_box)
        assert grid.volume_box.contains(b.read_box)
        assert b.halo_box == b.write_box.grow(halo)
        assert b.halo_box.contains(b.read_box)
    assert (count == 1).all()
    assert len(ids) == grid.num_blocks == int(np.prod(grid.grid_shape_zyx))


def test_edge_block_is_clipped():
    grid = BlockGrid((10, 10, 10), (4, 4, 4), (2, 2, 2))
    last = grid.block((2, 2, 2))
    assert last.write_box == Box((8, 8, 8), (10, 10, 10))
    assert last.read_box == Box((6, 6, 6), (10, 10, 10))
    assert last.halo_box == Box((6, 6, 6), (12, 12, 12))
    first = grid.block((0, 0, 0))
    assert first.read_box == Box((0, 0, 0), (6, 6, 6))
    assert first.block_id == "z0_y0_x0"


@pytest.mark.parametrize("seed", range(10))
def test_read_with_halo_equals_padding_the_whole_volume(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(3, 20, 3))
    block = tuple(int(v) for v in rng.integers(2, 9, 3))
    halo = tuple(int(v) for v in rng.integers(0, 5, 3))
    vol = rng.random(shape).astype(np.float32)
    padded = np.pad(vol, [(h, h) for h in halo], mode="symmetric")
    for b in BlockGrid(shape, block, halo).blocks():
        got = read_with_halo(vol, b)
        want = padded[tuple(slice(s + h, e + h) for s, e, h in zip(b.halo_box.begin_zyx, b.halo_box.end_zyx, halo))]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(crop_to_write(got, b), vol[b.write_box.slices])


@pytest.mark.parametrize("seed", range(6))
def test_blockwise_gaussian_equals_whole_volume(seed):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(v) for v in rng.integers(5, 30, 3))
    block = tuple(int(v) for v in rng.integers(3, 12, 3))
    sigma = tuple(float(v) for v in rng.uniform(0.3, 2.5, 3))
    radius = tuple(int(4.0 * s + 0.5) for s in sigma)
    vol = rng.random(shape).astype(np.float32)
    whole = gaussian_filter(vol, sigma, truncate=4.0, mode="reflect")
    out = np.full(shape, np.nan, dtype=np.float32)
    for b in BlockGrid(shape, block, radius).blocks():
        sm = gaussian_filter(read_with_halo(vol, b), sigma, truncate=4.0, mode="reflect")
        out[b.write_box.slices] = crop_to_write(sm, b)
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-5)


def test_bad_grid_arguments():
    with pytest.raises(ValueError):
        BlockGrid((0, 4, 4), (2, 2, 2))
    with pytest.raises(ValueError):
        BlockGrid((4, 4, 4), (2, 0, 2))
    with pytest.raises(ValueError):
        BlockGrid((4, 4, 4), (2, 2, 2), (1, -1, 0))
