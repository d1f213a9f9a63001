from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geometry import (
    BlockGrid,
    Roi,
    TileGrid,
    UNetGeometry,
    plan_blocks,
    reflect_index,
    reflect_indices,
)


def test_paper_geometry() -> None:
    paper = UNetGeometry(5)
    assert paper.output_size(572) == 388
    assert paper.input_size(388) == 572
    assert paper.halo == 92
    assert paper.pool_factor == 16
    assert paper.min_input_size % 16 == 124 % 16


@pytest.mark.parametrize(
    ("depth", "halo"),
    [(1, 2), (2, 8), (3, 20), (4, 44), (5, 92)],  # two 3x3 convs alone lose 2 px a side
)
def test_halo_matches_simulated_shrink(depth: int, halo: int) -> None:
    geometry = UNetGeometry(depth)
    assert geometry.halo == halo
    size = geometry.min_input_size
    for _ in range(5):
        assert size - geometry.output_size(size) == 2 * halo
        size += geometry.pool_factor


@given(depth=st.integers(1, 6), size=st.integers(1, 3000))
def test_valid_sizes_are_an_arithmetic_progression(depth: int, size: int) -> None:
    geometry = UNetGeometry(depth)
    expected = (
        size >= geometry.min_input_size and (size - geometry.min_input_size) % geometry.pool_factor == 0
    )
    assert geometry.is_valid_input(size) == expected


def test_paper_valid_sizes_are_16k_plus_124() -> None:
    geometry = UNetGeometry(5)
    valid = [s for s in range(1, 1000) if geometry.is_valid_input(s)]
    assert all((s - 124) % 16 == 0 for s in valid)
    assert 572 in valid and 556 in valid and 570 not in valid


def test_invalid_size_names_nearest_valid_sizes() -> None:
    with pytest.raises(ValueError, match=r"570 is not valid.*nearest are 556 or 572"):
        UNetGeometry(5).output_size(570)
    with pytest.raises(ValueError, match=r"smallest"):
        UNetGeometry(5).output_size(3)
    with pytest.raises(ValueError, match=r"output size 389"):
        UNetGeometry(5).input_size(389)


@given(index=st.integers(-5000, 5000), length=st.integers(1, 40))
def test_reflect_index_stays_inside(index: int, length: int) -> None:
    assert 0 <= reflect_index(index, length) < length


@given(
    length=st.integers(1, 30),
    before=st.integers(0, 100),
    after=st.integers(0, 100),
)
def test_reflect_indices_match_numpy_pad(length: int, before: int, after: int) -> None:
    source = np.arange(length)
    padded = np.pad(source, (before, after), mode="reflect")
    assert list(padded) == list(reflect_indices(-before, length + after, length))


@settings(max_examples=60)
@given(
    height=st.integers(1, 1200),
    width=st.integers(1, 1200),
    tile=st.sampled_from([36, 100, 388]),
    depth=st.integers(1, 5),
)
def test_tiles_cover_plane_exactly_once(height: int, width: int, tile: int, depth: int) -> None:
    geometry = UNetGeometry(depth)
    grid = TileGrid((height, width), tile, geometry.halo)
    coverage = np.zeros((height, width), np.int32)
    for i, j in grid.tiles():
        coverage[grid.output(i, j).slices()] += 1
        assert grid.window(i, j).shape == (grid.window_size, grid.window_size)
    assert (coverage == 1).all()
    assert len(list(grid.tiles())) == -(-height // tile) * -(-width // tile)


@given(tile=st.integers(1, 2000), depth=st.integers(1, 6))
def test_window_is_valid_input_exactly_when_tile_is_producible(tile: int, depth: int) -> None:
    geometry = UNetGeometry(depth)
    window = TileGrid((1, 1), tile, geometry.halo).window_size
    producible = geometry.is_valid_input(window) and geometry.output_size(window) == tile
    assert geometry.is_valid_input(window) == producible


@settings(max_examples=60)
@given(
    height=st.integers(1, 60),
    width=st.integers(1, 60),
    tile=st.integers(1, 25),
    halo=st.integers(0, 30),
    data=st.data(),
)
def test_pad_widths_and_windows_match_numpy_pad(
    height: int, width: int, tile: int, halo: int, data: st.DataObject
) -> None:
    plane = np.arange(height * width).reshape(height, width)
    grid = TileGrid((height, width), tile, halo)
    padded = np.pad(plane, grid.pad_widths, mode="reflect")
    rows, cols = grid.grid_shape
    assert padded.shape == (rows * tile + 2 * halo, cols * tile + 2 * halo)
    i = data.draw(st.integers(0, rows - 1))
    j = data.draw(st.integers(0, cols - 1))
    window = grid.window(i, j)
    from_pad = padded[window.shift((-halo, -halo)).slices()]
    ys = reflect_indices(window.start[0], window.stop[0], height)
    xs = reflect_indices(window.start[1], window.stop[1], width)
    assert (plane[np.ix_(ys, xs)] == from_pad).all()


@settings(max_examples=60)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 300), st.integers(1, 300)),
    tile=st.integers(8, 64),
    block_tiles=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    block_planes=st.integers(1, 3),
)
def test_block_write_rois_tile_the_volume(
    shape: tuple[int, int, int], tile: int, block_tiles: tuple[int, int], block_planes: int
) -> None:
    blocks = plan_blocks(shape, tile, block_tiles, block_planes)
    coverage = np.zeros(shape, np.int32)
    for index, block in enumerate(blocks):
        assert block.block_id == index
        coverage[block.write_roi(shape, tile).slices()] += 1
    assert (coverage == 1).all()


@pytest.mark.parametrize(
    ("shape", "block_tiles", "expected"),
    [
        ((1, 388, 388), (1, 1), 1),  # one tile
        ((3, 900, 1000), (1, 1), 3 * 3 * 3),  # ragged: 3 x 3 tiles per plane
        ((3, 900, 1000), (2, 3), 3 * 2 * 1),  # rows [0,2) [2,3); cols [0,3)
        ((2, 900, 1000), (4, 4), 2),  # a whole plane per block
    ],
)
def test_block_count_by_hand(
    shape: tuple[int, int, int], block_tiles: tuple[int, int], expected: int
) -> None:
    assert len(plan_blocks(shape, 388, block_tiles)) == expected


def test_block_read_roi_is_write_tiles_grown_by_halo() -> None:
    block = plan_blocks((1, 900, 1000), 388, (2, 2))[1]
    assert block.write_roi((1, 900, 1000), 388) == Roi((0, 0, 776), (1, 776, 1000))
    assert block.read_roi(388, 92) == Roi((0, -92, 684), (1, 868, 1256))


def test_roi_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError, match="below start"):
        Roi((0, 5), (1, 4))


def test_geometry_imports_no_heavy_framework() -> None:
    code = (
        "import sys, pipeline.geometry; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'zarr', 'dask', 'prefect', 'numpy'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@settings(max_examples=40)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 200), st.integers(1, 200)),
    tile=st.integers(8, 50),
    block_tiles=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    block_planes=st.integers(1, 3),
)
def test_block_id_at_finds_the_owner(
    shape: tuple[int, int, int], tile: int, block_tiles: tuple[int, int], block_planes: int
) -> None:
    grid = BlockGrid(shape, tile, block_tiles, block_planes)
    owner = np.full(shape, -1)
    for block in grid.blocks():
        owner[block.write_roi(shape, tile).slices()] = block.block_id
    z, y, x = np.indices(shape)
    assert (grid.block_id_at(z, y, x) == owner).all()
    assert len(grid.blocks()) == int(np.prod(grid.shape))


@settings(max_examples=40)
@given(
    shape=st.tuples(st.integers(1, 7), st.integers(1, 90), st.integers(1, 90)),
    tile=st.integers(3, 20),
    block_tiles=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    block_planes=st.integers(1, 3),
)
def test_block_position_inverts_the_numbering(
    shape: tuple[int, int, int], tile: int, block_tiles: tuple[int, int], block_planes: int
) -> None:
    grid = BlockGrid(shape, tile, block_tiles, block_planes)
    for block in grid.blocks():
        start = block.write_roi(shape, tile).start
        assert grid.block_id_at(*start) == block.block_id
        assert tuple(n * e for n, e in zip(grid.block_position(block.block_id), grid.block_edges)) == start
