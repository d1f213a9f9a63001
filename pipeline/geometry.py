"""Integer arithmetic of the overlap-tile strategy.

Pure standard library: no torch, zarr, dask or prefect (a test checks this).
Everything the rest of the pipeline knows about sizes comes from here: the
valid input sizes of an unpadded U-Net, its halo, the global tile grid that
defines the output (DESIGN.md, "Overlap-tile strategy"), mirror padding as
source indices, and blocks of whole tiles.

Geometry of one tile, in plane coordinates (``t`` output tile, ``h`` halo)::

      i*t-h                       (i+1)*t+h
        +-----------------------------+   read window: t + 2h, the
        |   halo                      |   network's valid input size;
        |    +-------------------+    |   where it leaves the plane it is
        |    |  write: t x t     |    |   mirror-padded (numpy "reflect")
        |    |  (output tile)    |    |
        |    +-------------------+    |
        |                             |
        +-----------------------------+
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CONV_SHRINK = 4  # two unpadded 3x3 convolutions per level remove 2 px each side


@dataclass(frozen=True, slots=True)
class Roi:
    """A half-open box ``[start, stop)`` per axis, in voxels."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop):
            raise ValueError(f"Roi start {self.start} and stop {self.stop} differ in rank")
        if any(b < a for a, b in zip(self.start, self.stop)):
            raise ValueError(f"Roi stop {self.stop} is below start {self.start}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def intersect(self, other: Roi) -> Roi:
        start = tuple(max(a, c) for a, c in zip(self.start, other.start))
        stop = tuple(max(lo, min(b, d)) for lo, b, d in zip(start, self.stop, other.stop))
        return Roi(start, stop)

    def shift(self, offset: tuple[int, ...]) -> Roi:
        return Roi(
            tuple(a - o for a, o in zip(self.start, offset)),
            tuple(b - o for b, o in zip(self.stop, offset)),
        )


@dataclass(frozen=True, slots=True)
class UNetGeometry:
    """Sizes of the paper's U-Net (unpadded convs) for a given depth.

    ``depth`` counts resolution levels including the bottleneck: the paper's
    network has depth 5, four 2x2 poolings, valid inputs ``16k + 124`` and a
    halo of 92 px (572 -> 388).
    """

    depth: int

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"U-Net depth must be >= 1, got {self.depth}")

    @property
    def pool_factor(self) -> int:
        """Total down-sampling at the bottleneck: valid sizes step by this."""
        return 1 << (self.depth - 1)

    @property
    def halo(self) -> int:
        """Pixels lost on each side between input and output (92 for depth 5)."""
        return (12 * self.pool_factor - 8) // 2

    @property
    def min_input_size(self) -> int:
        size = 1
        while self._simulate(size) is None:
            size += 1
        return size

    def _simulate(self, input_size: int) -> int | None:
        """Output size, or None when some layer would get an odd or empty map."""
        size = input_size
        for _ in range(self.depth - 1):
            size -= CONV_SHRINK
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= CONV_SHRINK
        if size <= 0:
            return None
        for _ in range(self.depth - 1):
            size = 2 * size - CONV_SHRINK
            if size <= 0:
                return None
        return size

    def is_valid_input(self, size: int) -> bool:
        return self._simulate(size) is not None

    def nearest_valid_inputs(self, size: int) -> tuple[int | None, int]:
        """The valid input sizes just below (None if none) and at or above ``size``."""
        smallest = self.min_input_size
        if size <= smallest:
            return None, smallest
        steps = (size - smallest) // self.pool_factor
        below = smallest + steps * self.pool_factor
        if below == size:
            return size, size
        return below, below + self.pool_factor

    def output_size(self, input_size: int) -> int:
        """Output edge for an input edge; ValueError naming the nearest valid sizes."""
        out = self._simulate(input_size)
        if out is None:
            below, above = self.nearest_valid_inputs(input_size)
            near = f"{below} or {above}" if below is not None else f"{above} (the smallest)"
            raise ValueError(
                f"input size {input_size} is not valid for a depth-{self.depth} U-Net: "
                f"valid sizes are {self.pool_factor}k + {self.min_input_size % self.pool_factor}"
                f" from {self.min_input_size}; nearest are {near}"
            )
        return out

    def input_size(self, output_size: int) -> int:
        """Input edge that yields ``output_size``; ValueError if none does."""
        candidate = output_size + 2 * self.halo
        if self._simulate(candidate) != output_size:
            below, above = self.nearest_valid_inputs(candidate)
            outs = [self._simulate(s) for s in (below, above) if s is not None]
            raise ValueError(
                f"output size {output_size} cannot be produced by a depth-{self.depth} U-Net; "
                f"nearest producible sizes are {', '.join(str(o) for o in outs)}"
            )
        return candidate


def reflect_index(index: int, length: int) -> int:
    """Source index of ``index`` under repeated mirror padding (numpy "reflect").

    Matches ``numpy.pad(..., mode="reflect")`` for any pad width, including
    pads wider than the axis (the reflection repeats with period 2(n-1)).
    """
    if length < 1:
        raise ValueError(f"cannot reflect into an empty axis (length {length})")
    if length == 1:
        return 0
    period = 2 * (length - 1)
    folded = index % period
    return folded if folded < length else period - folded


def reflect_indices(start: int, stop: int, length: int) -> tuple[int, ...]:
    """Source indices for plane coordinates ``[start, stop)`` (may leave the axis)."""
    if 0 <= start and stop <= length:
        return tuple(range(start, stop))
    return tuple(reflect_index(i, length) for i in range(start, stop))


@dataclass(frozen=True, slots=True)
class TileGrid:
    """The global tile grid over a plane: the definition of the output.

    Tiles of ``tile`` x ``tile`` output pixels with stride ``tile``, anchored
    at the plane origin; tile ``(i, j)`` is predicted from plane coordinates
    ``[i*t - h, (i+1)*t + h)`` x ``[j*t - h, (j+1)*t + h)``, mirror-padded.
    """

    plane_shape: tuple[int, int]
    tile: int
    halo: int

    def __post_init__(self) -> None:
        if len(self.plane_shape) != 2 or min(self.plane_shape) < 1:
            raise ValueError(f"plane shape must be two sizes >= 1, got {self.plane_shape}")
        if self.tile < 1 or self.halo < 0:
            raise ValueError(f"tile must be >= 1 and halo >= 0, got tile {self.tile}, halo {self.halo}")

    @property
    def window_size(self) -> int:
        return self.tile + 2 * self.halo

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (ceil_div(self.plane_shape[0], self.tile), ceil_div(self.plane_shape[1], self.tile))

    @property
    def pad_widths(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``numpy.pad`` widths of the canonical padded plane ``P``."""
        rows, cols = self.grid_shape
        height, width = self.plane_shape
        h, t = self.halo, self.tile
        return ((h, h + rows * t - height), (h, h + cols * t - width))

    def tiles(self) -> Iterator[tuple[int, int]]:
        """Tile indices in raster order."""
        rows, cols = self.grid_shape
        for i in range(rows):
            for j in range(cols):
                yield i, j

    def window(self, i: int, j: int) -> Roi:
        """Read window of tile (i, j) in plane coordinates (may leave the plane)."""
        self._check_tile(i, j)
        t, h = self.tile, self.halo
        return Roi((i * t - h, j * t - h), ((i + 1) * t + h, (j + 1) * t + h))

    def output(self, i: int, j: int) -> Roi:
        """Output pixels of tile (i, j), cropped to the plane."""
        self._check_tile(i, j)
        t = self.tile
        height, width = self.plane_shape
        return Roi((i * t, j * t), (min((i + 1) * t, height), min((j + 1) * t, width)))

    def _check_tile(self, i: int, j: int) -> None:
        rows, cols = self.grid_shape
        if not (0 <= i < rows and 0 <= j < cols):
            raise IndexError(f"tile ({i}, {j}) is outside the {rows}x{cols} tile grid")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class Block:
    """The unit of distributed work: a run of planes times a box of whole tiles.

    ``tile_rows`` and ``tile_cols`` are tile indices; ``write_roi`` gives the
    voxels the block owns (ZYX), cropped to the volume.
    """

    block_id: int
    planes: range
    tile_rows: range
    tile_cols: range

    def write_roi(self, volume_shape: tuple[int, int, int], tile: int) -> Roi:
        _, height, width = volume_shape
        return Roi(
            (self.planes.start, self.tile_rows.start * tile, self.tile_cols.start * tile),
            (
                self.planes.stop,
                min(self.tile_rows.stop * tile, height),
                min(self.tile_cols.stop * tile, width),
            ),
        )

    def read_roi(self, tile: int, halo: int) -> Roi:
        """Plane coordinates read (before mirroring): tiles grown by the halo."""
        return Roi(
            (self.planes.start, self.tile_rows.start * tile - halo, self.tile_cols.start * tile - halo),
            (self.planes.stop, self.tile_rows.stop * tile + halo, self.tile_cols.stop * tile + halo),
        )


@dataclass(frozen=True, slots=True)
class BlockGrid:
    """A ZYX volume cut into blocks of ``block_planes`` x ``block_tiles`` tiles.

    Blocks at the far edges hold fewer tiles. Raster order (z, then rows,
    then columns); ``block_id`` is the position in that order.
    """

    volume_shape: tuple[int, int, int]
    tile: int
    block_tiles: tuple[int, int]
    block_planes: int = 1
    plane_period: int = 0  # > 0: planes come in runs of this many (the Z of one timepoint), never joined

    def __post_init__(self) -> None:
        if min(self.volume_shape) < 1:
            raise ValueError(f"volume shape must be sizes >= 1, got {self.volume_shape}")
        if min(self.block_tiles) < 1 or self.block_planes < 1 or self.tile < 1:
            raise ValueError(
                f"block must hold >= 1 plane and tile, got {self.block_planes} x {self.block_tiles} of {self.tile}"
            )
        if self.plane_period and self.plane_period % self.block_planes:
            raise ValueError(
                f"block_planes {self.block_planes} must divide the plane period {self.plane_period}"
            )

    def plane_run(self, plane: int) -> tuple[int, int]:
        """[start, stop) of the run of planes holding ``plane`` (the whole volume without a period)."""
        if not self.plane_period:
            return 0, self.volume_shape[0]
        start = plane - plane % self.plane_period
        return start, start + self.plane_period

    @property
    def block_edges(self) -> tuple[int, int, int]:
        """Block size in voxels (ZYX) before clipping at the far edges."""
        return (self.block_planes, self.block_tiles[0] * self.tile, self.block_tiles[1] * self.tile)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Blocks along Z, Y and X."""
        depth, height, width = self.volume_shape
        rows, cols = ceil_div(height, self.tile), ceil_div(width, self.tile)
        return (
            ceil_div(depth, self.block_planes),
            ceil_div(rows, self.block_tiles[0]),
            ceil_div(cols, self.block_tiles[1]),
        )

    def blocks(self) -> list[Block]:
        depth, height, width = self.volume_shape
        rows, cols = ceil_div(height, self.tile), ceil_div(width, self.tile)
        planes, (tiles_y, tiles_x) = self.block_planes, self.block_tiles
        blocks: list[Block] = []
        for z in range(0, depth, planes):
            for i in range(0, rows, tiles_y):
                for j in range(0, cols, tiles_x):
                    blocks.append(
                        Block(
                            block_id=len(blocks),
                            planes=range(z, min(z + planes, depth)),
                            tile_rows=range(i, min(i + tiles_y, rows)),
                            tile_cols=range(j, min(j + tiles_x, cols)),
                        )
                    )
        return blocks

    def block_id_at(self, z: Any, y: Any, x: Any) -> Any:
        """The block owning voxel (z, y, x): ints, or integer arrays elementwise."""
        edge_z, edge_y, edge_x = self.block_edges
        _, blocks_y, blocks_x = self.shape
        return ((z // edge_z) * blocks_y + y // edge_y) * blocks_x + x // edge_x

    def block_position(self, block_id: int) -> tuple[int, int, int]:
        """(z, y, x) index of a block in the grid: the inverse of the raster numbering."""
        _, blocks_y, blocks_x = self.shape
        rest, x = divmod(block_id, blocks_x)
        z, y = divmod(rest, blocks_y)
        return z, y, x

    def block_ids_in(self, start: tuple[int, ...], stop: tuple[int, ...]) -> list[int]:
        """The blocks holding any voxel of the box [start, stop) (ZYX), in raster order."""
        edges = self.block_edges
        _, blocks_y, blocks_x = self.shape
        spans = [range(a // e, (b - 1) // e + 1) for a, b, e in zip(start, stop, edges)]
        return [(z * blocks_y + y) * blocks_x + x for z in spans[0] for y in spans[1] for x in spans[2]]


def plan_blocks(
    volume_shape: tuple[int, int, int],
    tile: int,
    block_tiles: tuple[int, int],
    block_planes: int = 1,
) -> list[Block]:
    """Blocks of a ZYX volume in raster order (see :class:`BlockGrid`)."""
    return BlockGrid(volume_shape, tile, block_tiles, block_planes).blocks()


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them if fewer).

    Deterministic: the sample of a volume depends only on its chunk grid.
    """
    if total <= count:
        return list(range(total))
    return sorted({(2 * k + 1) * total // (2 * count) for k in range(count)})


def read_amplification(
    shape_zyx: tuple[int, int, int], chunks_zyx: tuple[int, int, int], window_zyx: tuple[int, int, int]
) -> float:
    """Voxels decoded per voxel used when a window of ``window_zyx`` is read from ``chunks_zyx`` chunks.

    Along each axis a window of w at an unaligned offset touches about
    ``(w - 1) / c + 1`` chunks of c, i.e. ``w - 1 + c`` voxels (at most the
    axis length). A plane stored as one strip gives (plane / window) area.
    """
    ratio = 1.0
    for length, chunk, window in zip(shape_zyx, chunks_zyx, window_zyx):
        used = min(window, length)
        ratio *= min(length, used - 1 + chunk) / used
    return ratio
