"""The edge lines of a block's local labels, and face slabs read from them.

A block's contacts compare its faces with its neighbours' (``labels.face_slab``):
two voxels across each face. The local labels are stored one chunk per block
plane, so reading a slab across a Y or X face decoded every plane of every
block it meets to use one row or column of each. Each block now also keeps
its first and last row and column per plane (its edge lines); a slab takes
from them what lies on a block's edge, and reads whole planes only where a
face crosses Z.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from pipeline.geometry import BlockGrid

FIRST_ROW, LAST_ROW, FIRST_COLUMN, LAST_COLUMN = range(4)

Box = tuple[tuple[int, ...], tuple[int, ...]]
EdgeLines = Callable[[int, range], npt.NDArray[np.uint32]]  # (block id, planes) -> (planes, 4, line)
Voxels = Callable[[Box], npt.NDArray[np.uint32]]  # a box of the local labels, read whole


def edge_lines(local: npt.NDArray[np.uint32], length: int) -> npt.NDArray[np.uint32]:
    """(planes, 4, ``length``): first row, last row, first column, last column of each plane, zero-padded."""
    planes, height, width = local.shape
    lines = np.zeros((planes, 4, length), np.uint32)
    lines[:, FIRST_ROW, :width] = local[:, 0, :]
    lines[:, LAST_ROW, :width] = local[:, -1, :]
    lines[:, FIRST_COLUMN, :height] = local[:, :, 0]
    lines[:, LAST_COLUMN, :height] = local[:, :, -1]
    return lines


def line_length(grid: BlockGrid) -> int:
    _, rows, cols = grid.block_edges
    return max(rows, cols)


def slab_from_edges(
    box: Box, grid: BlockGrid, lines_of: EdgeLines, voxels_of: Voxels
) -> npt.NDArray[np.uint32]:
    """The local labels of ``box``: where it meets a block only in its first or last rows (or columns),
    from that block's edge lines; elsewhere read whole."""
    start, stop = box
    slab = np.empty(tuple(b - a for a, b in zip(start, stop)), np.uint32)
    edges = grid.block_edges
    for block_id in grid.block_ids_in(start, stop):
        low = tuple(index * edge for index, edge in zip(grid.block_position(block_id), edges))
        high = tuple(min(lo + e, n) for lo, e, n in zip(low, edges, grid.volume_shape))
        a = tuple(max(s, lo) for s, lo in zip(start, low))
        b = tuple(min(s, hi) for s, hi in zip(stop, high))
        planes, rows, cols = (slice(p - s, q - s) for p, q, s in zip(a, b, start))
        if set(range(a[1], b[1])) <= {low[1], high[1] - 1}:
            lines = lines_of(block_id, range(a[0], b[0]))
            for row in range(a[1], b[1]):
                which = FIRST_ROW if row == low[1] else LAST_ROW
                slab[planes, row - start[1], cols] = lines[:, which, a[2] - low[2] : b[2] - low[2]]
        elif set(range(a[2], b[2])) <= {low[2], high[2] - 1}:
            lines = lines_of(block_id, range(a[0], b[0]))
            for col in range(a[2], b[2]):
                which = FIRST_COLUMN if col == low[2] else LAST_COLUMN
                slab[planes, rows, col - start[2]] = lines[:, which, a[1] - low[1] : b[1] - low[1]]
        else:
            slab[planes, rows, cols] = voxels_of((a, b))
    return slab
