"""The label merge slab by slab gives every block the mapping of the merge of all blocks at once."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geometry import BlockGrid
from pipeline.label_stream import NO_VOXEL, StreamingMerge, Waiting, components
from pipeline.labels import BlockLabels, Connectivity, merge_labels
from tests.blockwise import block_reports


def streamed(
    grid: BlockGrid, summaries: list[BlockLabels], contacts: list[np.ndarray], planar: bool, min_size: int
) -> tuple[StreamingMerge, list[list[int]]]:
    slabs, rows, cols = grid.shape
    per_slab = rows * cols

    def joins_next(slab: int) -> bool:
        last_plane = min((slab + 1) * grid.block_planes, grid.volume_shape[0]) - 1
        return not planar and grid.plane_run(last_plane)[1] > last_plane + 1

    merge = StreamingMerge(slabs, per_slab, joins_next, min_size)
    released = []
    for slab in range(slabs):
        part = slice(slab * per_slab, (slab + 1) * per_slab)
        released.append(merge.add_slab(summaries[part], contacts[part]))
    return merge, released


@settings(max_examples=150, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 7), st.integers(1, 24), st.integers(1, 24)),
    tile=st.integers(2, 8),
    block_tiles=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    block_planes=st.integers(1, 3),
    density=st.floats(0.0, 0.8),
    neighbours=st.sampled_from(["faces", "full"]),
    planar=st.booleans(),
    period=st.booleans(),
    min_size=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_streamed_mappings_equal_the_whole_merge(
    shape: tuple[int, int, int],
    tile: int,
    block_tiles: tuple[int, int],
    block_planes: int,
    density: float,
    neighbours: str,
    planar: bool,
    period: bool,
    min_size: int,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    foreground = rng.random(shape) < density
    plane_period = block_planes * 2 if period and shape[0] > block_planes * 2 else 0
    grid = BlockGrid(shape, tile, block_tiles, block_planes, plane_period)
    connectivity = Connectivity(neighbours, planar)
    _, summaries, contacts = block_reports(foreground, grid, connectivity)
    whole = merge_labels(summaries, contacts, min_size)
    merge, released = streamed(grid, summaries, contacts, planar, min_size)
    assert merge.finished and merge.objects == whole.objects
    assert merge.local_labels == int(whole.offsets[-1])
    assert sorted(b for slab in released for b in slab) == list(range(len(summaries)))  # each block once
    for block_id in range(len(summaries)):
        assert np.array_equal(merge.block_mapping(block_id), whole.block_mapping(block_id))


def test_a_block_is_released_once_nothing_can_change_its_ids() -> None:
    """Slabs of one plane. The earliest open object takes its ID at once (only a second open one
    could join it and change the count before later objects); the second waits until it closes."""
    foreground = np.zeros((3, 4, 4), bool)
    foreground[0, 0, 0] = True  # A: plane 0, the only object so far
    foreground[1:3, 1, 1] = True  # B: planes 1 and 2, the earliest open one after A
    foreground[1, 3, 3] = True  # C: plane 1, after B's first voxel
    grid = BlockGrid(foreground.shape, 4, (1, 1), 1)
    _, summaries, contacts = block_reports(foreground, grid, Connectivity())
    merge, released = streamed(grid, summaries, contacts, planar=False, min_size=0)
    assert released == [[0], [], [1, 2]]  # C's number waits for B to close
    assert [merge.block_mapping(b).tolist() for b in range(3)] == [[0, 1], [0, 2, 3], [0, 2]]


def test_an_object_through_every_slab_holds_back_only_what_follows_a_second_one() -> None:
    """A column through all planes, and objects of one plane in every other plane: the column takes
    its ID with the first plane, so each of the others is numbered once the plane after it is in."""
    foreground = np.zeros((6, 5, 5), bool)
    foreground[:, 0, 0] = True  # through every plane
    foreground[::2, 3, 3] = True  # one-plane objects in every other plane
    grid = BlockGrid(foreground.shape, 5, (1, 1), 1)
    _, summaries, contacts = block_reports(foreground, grid, Connectivity())
    merge, released = streamed(grid, summaries, contacts, planar=False, min_size=0)
    assert released == [[], [0, 1], [], [2, 3], [], [4, 5]]
    assert merge.objects == 4


def test_slabs_come_in_order() -> None:
    merge = StreamingMerge(1, 1, lambda slab: True)
    empty = BlockLabels(0, np.empty(0, np.int64), np.empty(0, np.int64))
    merge.add_slab([empty], [np.empty((0, 4), np.int64)])
    with pytest.raises(ValueError, match="all 1 slabs were added"):
        merge.add_slab([empty], [np.empty((0, 4), np.int64)])


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.integers(1, 60),
    edges=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=40),
)
def test_components_number_nodes_as_scipy_does(nodes: int, edges: list[tuple[int, int]]) -> None:
    """Only the nodes of some edge go through the graph search; the numbering is scipy's all the same."""
    pairs = np.array([(u % nodes, w % nodes) for u, w in edges], np.int64).reshape(-1, 2)
    graph = scipy.sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(nodes, nodes))
    expected_count, expected = scipy.sparse.csgraph.connected_components(graph, directed=False)
    count, component = components(nodes, pairs[:, 0], pairs[:, 1])
    assert count == expected_count and np.array_equal(component, expected)


def test_waiting_objects_are_taken_earliest_first_batch_by_batch() -> None:
    waiting = Waiting()
    waiting.add(np.array([50, 10, 30], np.int64), np.array([3, 4, 5, 6], np.int64), np.array([1, 0, 2, 1]))
    waiting.add(np.array([20, 60], np.int64), np.array([8, 9], np.int64), np.array([0, 1]))
    assert waiting.objects == 5

    def taken(before: int) -> list[tuple[int, int]]:
        firsts, pieces = waiting.take_before(before)
        for labels, _ in pieces:
            assert np.all(labels[1:] > labels[:-1])  # ascending, as added
        return sorted(
            (int(label), int(firsts[of]))
            for labels, of_label in pieces
            for label, of in zip(labels, of_label)
        )

    assert taken(5) == [] and waiting.objects == 5
    assert taken(35) == [(3, 10), (5, 30), (6, 10), (8, 20)]  # 10 and 30 of the first batch, 20 of the second
    assert waiting.objects == 2
    assert taken(NO_VOXEL) == [(4, 50), (9, 60)]
    assert waiting.objects == 0
