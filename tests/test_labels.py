"""Block-wise labelling + merge equals scipy.ndimage.label of the whole volume, IDs included."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geometry import BlockGrid
from pipeline.label_edges import edge_lines, line_length, slab_from_edges
from pipeline.labels import (
    Connectivity,
    components,
    contact_slabs,
    distinct,
    label_block,
    merge_labels,
    relabel,
    touching_keys,
)
from tests.blockwise import block_reports


def blockwise_labels(
    foreground: np.ndarray, grid: BlockGrid, connectivity: Connectivity, min_size: int = 0
) -> tuple[np.ndarray, int]:
    """The pipeline's algorithm, in one process: label blocks, find contacts, merge, relabel."""
    local, summaries, contacts = block_reports(foreground, grid, connectivity)
    mapping = merge_labels(summaries, contacts, min_size)
    out = np.zeros(foreground.shape, np.uint64)
    for block in grid.blocks():
        roi = block.write_roi(foreground.shape, grid.tile)
        out[roi.slices()] = relabel(local[roi.slices()], mapping.block_mapping(block.block_id), "uint64")
    return out, mapping.objects


def whole_volume_labels(foreground: np.ndarray, connectivity: Connectivity) -> tuple[np.ndarray, int]:
    labels, count = scipy.ndimage.label(foreground, structure=connectivity.structure())
    return labels, count


@settings(max_examples=60)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 30), st.integers(1, 30)),
    tile=st.integers(2, 9),
    block_tiles=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    block_planes=st.integers(1, 3),
    density=st.floats(0.1, 0.7),
    neighbours=st.sampled_from(["faces", "full"]),
    planar=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_blockwise_equals_whole_volume(
    shape: tuple[int, int, int],
    tile: int,
    block_tiles: tuple[int, int],
    block_planes: int,
    density: float,
    neighbours: str,
    planar: bool,
    seed: int,
) -> None:
    foreground = np.random.default_rng(seed).random(shape) < density
    connectivity = Connectivity(neighbours, planar)
    grid = BlockGrid(shape, tile, block_tiles, block_planes)
    got, count = blockwise_labels(foreground, grid, connectivity)
    expected, expected_count = whole_volume_labels(foreground, connectivity)
    assert count == expected_count
    assert np.array_equal(got, expected)  # same partition and the same (canonical) IDs


@settings(max_examples=120)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 40), st.integers(1, 40)),
    density=st.floats(0.0, 1.0),
    neighbours=st.sampled_from(["faces", "full"]),
    planar=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_block_components_are_scipys_labels_and_numbering(
    shape: tuple[int, int, int], density: float, neighbours: str, planar: bool, seed: int
) -> None:
    """The labeller a block uses is scipy.ndimage.label, numbers included (raster order of first voxels)."""
    foreground = np.random.default_rng(seed).random(shape) < density
    connectivity = Connectivity(neighbours, planar)
    local, count = components(foreground, connectivity)
    expected, expected_count = scipy.ndimage.label(foreground, structure=connectivity.structure())
    assert local.dtype == np.uint32 and local.shape == shape
    assert count == expected_count
    assert np.array_equal(local, expected)


def test_object_connected_only_across_block_corners() -> None:
    foreground = np.zeros((1, 8, 8), bool)
    foreground[0, 3, 3] = foreground[0, 4, 4] = True  # diagonal neighbours in four different blocks
    grid = BlockGrid((1, 8, 8), 4, (1, 1))
    faces, _ = blockwise_labels(foreground, grid, Connectivity("faces"))
    full, count = blockwise_labels(foreground, grid, Connectivity("full"))
    assert faces[0, 3, 3] != faces[0, 4, 4]
    assert count == 1 and full[0, 3, 3] == full[0, 4, 4] == 1


def test_min_size_drops_small_objects_and_renumbers() -> None:
    foreground = np.zeros((1, 10, 10), bool)
    foreground[0, 0, 0] = True  # 1 voxel: dropped
    foreground[0, 2:5, 2:5] = True  # 9 voxels
    foreground[0, 7:9, 7:10] = True  # 6 voxels
    grid = BlockGrid((1, 10, 10), 3, (1, 1))
    labels, count = blockwise_labels(foreground, grid, Connectivity(), min_size=5)
    assert count == 2
    assert labels[0, 0, 0] == 0 and labels[0, 3, 3] == 1 and labels[0, 8, 8] == 2


def test_planar_mode_keeps_ids_unique_over_the_volume() -> None:
    foreground = np.ones((3, 5, 5), bool)
    grid = BlockGrid((3, 5, 5), 2, (1, 1), 2)
    labels, count = blockwise_labels(foreground, grid, Connectivity("faces", planar=True))
    assert count == 3
    assert [int(labels[z, 0, 0]) for z in range(3)] == [1, 2, 3]


def test_empty_volume() -> None:
    grid = BlockGrid((2, 9, 9), 3, (1, 1))
    labels, count = blockwise_labels(np.zeros((2, 9, 9), bool), grid, Connectivity())
    assert count == 0 and not labels.any()


def test_bad_connectivity() -> None:
    with pytest.raises(ValueError, match="'faces' or 'full'"):
        Connectivity("edges")


def test_ids_promote_to_uint64_when_the_count_needs_it() -> None:
    from pipeline.labels import LabelMapping

    offsets = np.zeros(2, np.int64)
    assert LabelMapping(offsets, np.zeros(0, np.uint64), 2**32 - 1).dtype == "uint32"
    assert LabelMapping(offsets, np.zeros(0, np.uint64), 2**32).dtype == "uint64"
    assert LabelMapping(offsets, np.zeros(0, np.uint64), 5, uint32_max_objects=5).dtype == "uint32"
    assert LabelMapping(offsets, np.zeros(0, np.uint64), 6, uint32_max_objects=5).dtype == "uint64"
    assert LabelMapping(offsets, np.zeros(0, np.uint64), 0, uint32_max_objects=0).dtype == "uint64"  # always
    with pytest.raises(ValueError, match=r"uint32_max_objects must be 0\.\.4294967295 .* got 4294967296"):
        LabelMapping(offsets, np.zeros(0, np.uint64), 0, uint32_max_objects=2**32)


def test_relabel_refuses_an_id_its_dtype_cannot_hold() -> None:
    local = np.array([[0, 1, 2]], np.uint32)
    mapping = np.array([0, 7, 2**32 - 1], np.uint64)
    assert relabel(local, mapping, "uint32").tolist() == [[0, 7, 2**32 - 1]]
    mapping[2] = 2**32  # would wrap to 0: background
    with pytest.raises(OverflowError, match="label ID 4294967296 does not fit the labels' uint32"):
        relabel(local, mapping, "uint32")
    assert relabel(local, mapping, "uint64").tolist() == [[0, 7, 2**32]]


def test_min_size_in_physical_units() -> None:
    from pipeline.config import LabelsConfig
    from pipeline.errors import InputError
    from pipeline.plan import min_size_voxels
    from pipeline.store import PixelSize

    sizes = {
        "z": PixelSize(2.0, "micrometer"),
        "y": PixelSize(0.5, "micrometer"),
        "x": PixelSize(0.5, "micrometer"),
    }
    # a voxel is 0.5 um^3: 10 um^3 is 20 voxels; the larger of the two limits wins
    assert min_size_voxels(LabelsConfig(min_size_physical=10.0), sizes, "zyx", "in.zarr") == 20
    assert (
        min_size_voxels(LabelsConfig(min_size_physical=10.0, min_size_voxels=50), sizes, "zyx", "in.zarr")
        == 50
    )
    # per plane (2d mode) the area counts: a pixel is 0.25 um^2
    assert min_size_voxels(LabelsConfig(min_size_physical=1.0, mode="2d"), sizes, "zyx", "in.zarr") == 4
    with pytest.raises(InputError, match="needs physical pixel sizes, and in.zarr does not give them"):
        min_size_voxels(LabelsConfig(min_size_physical=1.0), {}, "zyx", "in.zarr")


@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 30), st.integers(1, 30)),
    density=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**16),
    full=st.booleans(),
)
def test_block_summary_is_each_labels_first_voxel_and_size(
    shape: tuple[int, int, int], density: float, seed: int, full: bool
) -> None:
    foreground = np.random.default_rng(seed).random(shape) < density
    local, summary = label_block(foreground, (0, 0, 0), shape, Connectivity("full" if full else "faces"))
    labels, first, sizes = np.unique(local.ravel(), return_index=True, return_counts=True)
    keep = labels > 0
    assert np.array_equal(summary.first_voxel, first[keep])
    assert np.array_equal(summary.sizes, sizes[keep])


@settings(max_examples=60)
@given(
    shape=st.sampled_from([(1, 9, 11), (4, 1, 13), (5, 7, 1), (3, 4, 5), (1, 1, 1), (0, 3, 4)]),
    objects=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_touching_keys_are_every_pair_of_objects_on_the_same_voxels(
    shape: tuple[int, int, int], objects: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    u, w = (rng.integers(0, objects, shape).astype(np.uint32) for _ in range(2))
    both = (u != 0) & (w != 0)
    pairs = {(int(a), int(b)) for a, b in zip(u[both], w[both])}
    keys = touching_keys(u, w)
    assert keys.dtype == np.uint64
    assert [(int(k) >> 32, int(k) & 0xFFFFFFFF) for k in keys] == sorted(pairs)


@pytest.mark.parametrize("dtype", [np.uint64, np.int64, np.uint32])
@pytest.mark.parametrize("size", [0, 1, 2, 1000])
def test_distinct_is_numpys_unique(dtype: type, size: int) -> None:
    values = np.random.default_rng(size).integers(0, 40, size).astype(dtype)
    found = distinct(values)
    assert found.dtype == values.dtype
    assert np.array_equal(found, np.unique(values))


def test_contacts_read_only_the_faces_the_connectivity_crosses() -> None:
    grid = BlockGrid((3, 12, 12), 4, (1, 1))  # 3 x 3 blocks per plane
    middle = grid.blocks()[13]  # plane 1, centre
    roi = middle.write_roi(grid.volume_shape, grid.tile)
    faces = {
        (axis, side) for axis, side, _ in contact_slabs(grid, roi.start, roi.stop, Connectivity("faces"))
    }
    assert faces == {(0, -1), (1, -1), (2, -1)}  # lower faces only; the neighbours above find these pairs
    full = contact_slabs(grid, roi.start, roi.stop, Connectivity("full"))
    assert {(axis, side) for axis, side, _ in full} == {
        (0, -1),
        (1, -1),
        (1, 1),
        (2, -1),
        (2, 1),
    }  # diagonals
    assert all(box[1][axis] - box[0][axis] == 2 for axis, _, box in full)  # two voxels across each face
    first = grid.blocks()[0].write_roi(grid.volume_shape, grid.tile)
    assert contact_slabs(grid, first.start, first.stop, Connectivity("faces")) == []


@settings(max_examples=80)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 30), st.integers(1, 30)),
    tile=st.integers(1, 7),
    block_tiles=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    block_planes=st.integers(1, 3),
    neighbours=st.sampled_from(["faces", "full"]),
    seed=st.integers(0, 2**16),
)
def test_face_slabs_from_edge_lines_equal_the_labels(
    shape: tuple[int, int, int],
    tile: int,
    block_tiles: tuple[int, int],
    block_planes: int,
    neighbours: str,
    seed: int,
) -> None:
    """Every face slab of every block, assembled from the blocks' edge lines and whole reads, is the
    labels' own box; whole reads only where a slab crosses Z."""
    local = np.random.default_rng(seed).integers(1, 1000, size=shape, dtype=np.uint32)
    grid = BlockGrid(shape, tile, block_tiles, block_planes)
    length = line_length(grid)
    lines = {
        block.block_id: edge_lines(local[block.write_roi(shape, tile).slices()], length)
        for block in grid.blocks()
    }
    planes_of = {block.block_id: block.planes for block in grid.blocks()}
    whole: list[tuple[int, int]] = []

    def lines_of(block_id: int, planes: range) -> np.ndarray:
        first = planes_of[block_id].start
        return lines[block_id][planes.start - first : planes.stop - first]

    def voxels_of(box: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
        whole.append((box[0][0], box[1][0]))
        return local[tuple(slice(a, b) for a, b in zip(*box))]

    for block in grid.blocks():
        roi = block.write_roi(shape, tile)
        for axis, _, box in contact_slabs(grid, roi.start, roi.stop, Connectivity(neighbours)):
            got = slab_from_edges(box, grid, lines_of, voxels_of)
            assert np.array_equal(got, local[tuple(slice(a, b) for a, b in zip(*box))]), (axis, box)
            if axis > 0:
                assert not whole, "a Y or X face slab decoded whole planes"
            whole.clear()
