"""Instance labels equal to connected components of the whole thresholded volume.

The outline (each step a function here, the Dask wiring in the run):

1. every block labels its own foreground (the components and numbering of
   scipy.ndimage.label; cc3d for faces connectivity, 3x faster) and reports,
   per local label, its first voxel (global raster index) and its size;
2. every block finds the pairs of local labels that touch across its lower
   faces (and, for full connectivity, edges and corners), reading thin slabs
   of the local labels of itself and its neighbours;
3. the driver merges the pairs into global objects (a graph's connected
   components, scipy.sparse.csgraph), drops objects below the minimum size
   and numbers the rest 1..N in raster order of their first voxel: the IDs
   ``scipy.ndimage.label`` gives the whole volume (all blocks at once here, or
   slab by slab as they come in: :mod:`pipeline.label_stream`);
4. every block maps its local labels through its own slice of the mapping.

Driver memory grows with the number of local labels, never with voxels:
about 90 MiB per million local labels at the merge's peak, summaries
included (benchmarks/labels_merge_memory.py); slab by slab, with the labels
still open or waiting (a few MiB).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import cc3d
import numpy as np
import numpy.typing as npt
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph

from pipeline.geometry import BlockGrid

Int64Array = npt.NDArray[np.int64]
UINT32_MAX_OBJECTS = 2**32 - 1  # IDs run 1..N, so uint32 holds N up to its largest value


@dataclass(frozen=True, slots=True)
class Connectivity:
    """Which neighbours touch: ``faces`` (6 in 3D, 4 in 2D) or ``full`` (26 / 8); ``planar``: per plane."""

    neighbours: str = "faces"
    planar: bool = False

    def __post_init__(self) -> None:
        if self.neighbours not in ("faces", "full"):
            raise ValueError(f"connectivity must be 'faces' or 'full', got {self.neighbours!r}")

    def structure(self) -> npt.NDArray[np.bool_]:
        rank = 1 if self.neighbours == "faces" else 3
        element: npt.NDArray[np.bool_] = scipy.ndimage.generate_binary_structure(3, rank)
        if self.planar:
            element[0] = element[2] = False
        return element

    def lower_offsets(self) -> tuple[tuple[int, ...], ...]:
        """Half of the neighbourhood (lexicographically negative): each touching pair once."""
        return _lower_offsets(self)


@functools.cache  # asked for per block and face when a run's jobs are made: 242,000 blocks for 0.5 T voxels
def _lower_offsets(connectivity: Connectivity) -> tuple[tuple[int, ...], ...]:
    element = connectivity.structure()
    return tuple(
        (dz, dy, dx)
        for dz in (-1, 0, 1)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if element[dz + 1, dy + 1, dx + 1] and (dz, dy, dx) < (0, 0, 0)
    )


@dataclass(frozen=True, slots=True)
class BlockLabels:
    """What a block reports of its local labels 1..count (small: objects, not voxels)."""

    count: int
    first_voxel: Int64Array  # global raster index (z*H*W + y*W + x) of each label's first voxel
    sizes: Int64Array  # voxels per label

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"count": np.array([self.count]), "first_voxel": self.first_voxel, "sizes": self.sizes}

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> BlockLabels:
        return cls(
            int(arrays["count"][0]), arrays["first_voxel"].astype(np.int64), arrays["sizes"].astype(np.int64)
        )


def label_block(
    foreground: npt.NDArray[np.bool_],
    origin: tuple[int, ...],
    volume_shape: tuple[int, ...],
    connectivity: Connectivity,
) -> tuple[npt.NDArray[np.uint32], BlockLabels]:
    """Local labels 1..n of a block's foreground (ZYX) and their summary."""
    local, count = components(foreground, connectivity)
    first_local, sizes = _first_voxels_and_sizes(local, count)
    # lexicographic (z, y, x) order is kept under translation, so the first voxel of a
    # label in the block's own raster order is its first in the volume's order too
    coordinates = np.unravel_index(first_local, local.shape)
    global_coordinates = tuple(c + o for c, o in zip(coordinates, origin))
    first_voxel = np.ravel_multi_index(global_coordinates, volume_shape).astype(np.int64)
    return local, BlockLabels(int(count), first_voxel, sizes.astype(np.int64))


def components(
    foreground: npt.NDArray[np.bool_], connectivity: Connectivity
) -> tuple[npt.NDArray[np.uint32], int]:
    """Connected components of a (Z, Y, X) foreground numbered 1..n in raster order of their first
    voxel: ``scipy.ndimage.label`` with ``connectivity.structure()``.

    Faces connectivity (the default) is labelled by cc3d, 27 against 83 ms a 4 x 1552² block of
    nuclei, and holds the GIL the device batcher needs for that much less; per plane, each plane's
    components are numbered after the previous planes'. Full connectivity stays with scipy: cc3d
    numbers 8-connected components in another order and fails on some volumes a few voxels wide
    with 26 (cc3d 4.1).
    """
    if connectivity.neighbours == "full":
        local, count = scipy.ndimage.label(foreground, structure=connectivity.structure(), output=np.uint32)
        return local, int(count)
    foreground = np.ascontiguousarray(foreground, dtype=bool)
    if not connectivity.planar:
        labels, count = cc3d.connected_components(
            foreground, connectivity=6, out_dtype=np.uint32, return_N=True
        )
        return labels.astype(np.uint32, copy=False), int(count)
    local = np.zeros(foreground.shape, np.uint32)
    total = 0
    for z, plane in enumerate(foreground):
        labels, count = cc3d.connected_components(plane, connectivity=4, out_dtype=np.uint32, return_N=True)
        np.add(labels, np.uint32(total), out=local[z], where=plane)
        total += int(count)
    return local, total


def _first_voxels_and_sizes(local: npt.NDArray[np.uint32], count: int) -> tuple[Int64Array, Int64Array]:
    """Flat index of each label's first voxel, and its size, for labels 1..count.

    Works on the runs of foreground along the last axis, one label each and
    far fewer than voxels: a label's size is the sum of its runs' lengths, and
    its first voxel the start of its first run. components are numbered in
    the order a raster scan meets them, so the running maximum of the runs'
    labels steps up by one exactly at each label's first run (2.2x faster than
    the same over every voxel, measured on 4 x 1552^2 blocks). Checked, with a
    sort as the fallback should a labeller ever number otherwise.
    """
    foreground = local != 0
    starts = foreground.copy()
    starts[..., 1:] &= ~foreground[..., :-1]
    ends = foreground  # becomes the run ends, in place (the negation is a copy)
    ends[..., :-1] &= ~foreground[..., 1:]
    start_index = np.flatnonzero(starts)
    run_labels = local.reshape(-1)[start_index]
    lengths = np.flatnonzero(ends) - start_index + 1
    sizes = np.bincount(run_labels, weights=lengths, minlength=count + 1)[1:].astype(np.int64)
    running = np.maximum.accumulate(run_labels)
    first_run = np.flatnonzero(running[1:] != running[:-1]) + 1
    if run_labels.size:
        first_run = np.concatenate([np.zeros(1, np.intp), first_run])
    if first_run.size == count and np.array_equal(
        running[first_run], np.arange(1, count + 1, dtype=np.uint32)
    ):
        return start_index[first_run].astype(np.int64), sizes
    labels, first, counted = np.unique(local.reshape(-1), return_index=True, return_counts=True)
    keep = labels > 0
    return first[keep].astype(np.int64), counted[keep].astype(np.int64)


def face_slab(
    grid: BlockGrid,
    write_start: tuple[int, ...],
    write_stop: tuple[int, ...],
    axis: int,
    side: int,
    connectivity: Connectivity,
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The 2-voxel-thick box across one face of a block, grown by 1 voxel along the other axes that
    ``connectivity`` reaches diagonally (none for ``faces``).

    ``side`` -1 is the lower face, +1 the upper; None where the face is the volume's edge or the
    edge of a run of planes (a timepoint).
    """
    first, last = grid.plane_run(write_start[0])  # objects never join across runs (timepoints)
    low, high = (first, 0, 0), (last, *grid.volume_shape[1:])
    own = write_start[axis] if side < 0 else write_stop[axis] - 1
    other = own + side
    if not low[axis] <= other < high[axis]:
        return None
    crossing = [offset for offset in connectivity.lower_offsets() if offset[axis] == side]
    grow = [int(any(offset[a] for offset in crossing)) for a in range(3)]
    start = [max(b, s - g) for b, s, g in zip(low, write_start, grow)]
    stop = [min(n, e + g) for n, e, g in zip(high, write_stop, grow)]
    start[axis], stop[axis] = min(own, other), max(own, other) + 1
    return tuple(start), tuple(stop)


def contact_slabs(
    grid: BlockGrid, write_start: tuple[int, ...], write_stop: tuple[int, ...], connectivity: Connectivity
) -> list[tuple[int, int, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """(axis, side, box) of the faces a block reads for its contacts: those some lower offset
    crosses, where the volume goes on."""
    offsets = connectivity.lower_offsets()
    found = []
    for axis in range(3):
        for side in (-1, 1):
            if not any(offset[axis] == side for offset in offsets):
                continue
            box = face_slab(grid, write_start, write_stop, axis, side, connectivity)
            if box is not None:
                found.append((axis, side, box))
    return found


def slab_contacts(
    slab: npt.NDArray[Any],
    slab_start: tuple[int, ...],
    write_start: tuple[int, ...],
    write_stop: tuple[int, ...],
    axis: int,
    side: int,
    grid: BlockGrid,
    connectivity: Connectivity,
) -> Int64Array:
    """Pairs (block_u, label_u, block_w, label_w) that touch across one face of the block, sorted.

    ``slab`` holds local labels read from ``face_slab``; u is in the block
    (on the face), w = u + d outside it, for every lower offset d that crosses
    this face.
    """
    own_block = grid.block_id_at(*write_start)
    face = write_start[axis] if side < 0 else write_stop[axis] - 1
    keys_by_block: dict[int, list[npt.NDArray[np.uint64]]] = {}
    for offset in connectivity.lower_offsets():
        if offset[axis] != side:
            continue
        # u ranges over the block's face voxels whose neighbour u + d lies in the slab
        lo = [max(s, ss - d) for s, ss, d in zip(write_start, slab_start, offset)]
        hi = [min(e, ss + n - d) for e, ss, n, d in zip(write_stop, slab_start, slab.shape, offset)]
        lo[axis], hi[axis] = face, face + 1
        for u_lo, u_hi in _boxes_with_one_neighbour_block(lo, hi, offset, grid):
            w_block = int(grid.block_id_at(*(low + d for low, d in zip(u_lo, offset))))
            if w_block == own_block:
                continue
            u_box = tuple(slice(low - ss, h - ss) for low, h, ss in zip(u_lo, u_hi, slab_start))
            w_box = tuple(
                slice(low + d - ss, h + d - ss) for low, h, d, ss in zip(u_lo, u_hi, offset, slab_start)
            )
            keys_by_block.setdefault(w_block, []).append(touching_keys(slab[u_box], slab[w_box]))
    rows = [np.empty((0, 4), np.int64)]
    for w_block in sorted(keys_by_block):
        pieces = keys_by_block[w_block]
        keys = pieces[0] if len(pieces) == 1 else distinct(np.concatenate(pieces))  # each sorted, distinct
        rows.append(
            np.stack(
                [
                    np.full(keys.size, own_block, np.int64),
                    (keys >> np.uint64(32)).astype(np.int64),
                    np.full(keys.size, w_block, np.int64),
                    (keys & np.uint64(0xFFFFFFFF)).astype(np.int64),
                ],
                axis=1,
            )
        )
    # distinct already (a pair's w_block and its key tell it apart); sorted if one block was touched
    return np.concatenate(rows) if len(rows) <= 2 else unique_rows(np.concatenate(rows))


def _boxes_with_one_neighbour_block(
    lo: list[int], hi: list[int], offset: tuple[int, ...], grid: BlockGrid
) -> list[tuple[list[int], list[int]]]:
    """[lo, hi) cut where u + offset crosses a block edge: each piece's neighbours lie in one block."""
    pieces: list[list[tuple[int, int]]] = []
    for low, high, d, edge in zip(lo, hi, offset, grid.block_edges):
        cuts = [low] + [c - d for c in range((low + d) // edge * edge + edge, high + d, edge)] + [high]
        pieces.append([(a, b) for a, b in pairwise(cuts) if a < b])
    return [([z[0], y[0], x[0]], [z[1], y[1], x[1]]) for z in pieces[0] for y in pieces[1] for x in pieces[2]]


def touching_keys(u_labels: npt.NDArray[Any], w_labels: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """Distinct ``u << 32 | w`` of the voxels where both labels are objects.

    A face can hold millions of touching voxels; neighbours in a row mostly
    repeat a pair, so only the voxels starting a run of one pair are kept
    before the sort (found with whole-array compares, before any gather).
    """
    u, w = np.ravel(u_labels), np.ravel(w_labels)
    starts = (u != 0) & (w != 0)
    starts[1:] &= (u[1:] != u[:-1]) | (w[1:] != w[:-1])
    at = np.flatnonzero(starts)
    return distinct((u.take(at).astype(np.uint64) << np.uint64(32)) | w.take(at).astype(np.uint64))


def distinct(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The distinct values, sorted: ``np.unique`` by a sort. numpy 2.3+ hashes instead, 15x slower on
    the touching pairs of two speckled planes and 50x on 400,000 random integers
    (benchmarks/label_kernels.py)."""
    ordered = np.sort(values, axis=None)
    keep = np.empty(ordered.size, bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def unique_rows(rows: Int64Array) -> Int64Array:
    """Distinct rows of an (N, k) integer array in lexicographic order (np.unique(axis=0), faster)."""
    if rows.shape[0] < 2:
        return rows
    ordered: Int64Array = rows[np.lexsort(rows.T[::-1])]
    keep = np.concatenate([[True], (ordered[1:] != ordered[:-1]).any(axis=1)])
    distinct: Int64Array = ordered[keep]
    return distinct


@dataclass(frozen=True, slots=True)
class LabelMapping:
    """Global IDs of every block's local labels, and the number of objects."""

    offsets: Int64Array  # block b's local label l is node offsets[b] + l - 1
    node_ids: npt.NDArray[np.uint64]  # final ID of every node; 0 for dropped objects
    objects: int
    uint32_max_objects: int = UINT32_MAX_OBJECTS  # more objects than this: uint64 labels

    def block_mapping(self, block_id: int) -> npt.NDArray[np.uint64]:
        """Lookup table for one block: index = local label, value = global ID (0 -> 0)."""
        own = self.node_ids[self.offsets[block_id] : self.offsets[block_id + 1]]
        return np.concatenate([np.zeros(1, np.uint64), own])

    def __post_init__(self) -> None:
        if not 0 <= self.uint32_max_objects <= UINT32_MAX_OBJECTS:
            raise ValueError(
                f"uint32_max_objects must be 0..{UINT32_MAX_OBJECTS} (what uint32 holds), "
                f"got {self.uint32_max_objects}"
            )

    @property
    def dtype(self) -> str:
        """uint32 up to ``uint32_max_objects`` objects, uint64 beyond it, and always for a limit of 0."""
        return (
            "uint32" if 0 < self.uint32_max_objects and self.objects <= self.uint32_max_objects else "uint64"
        )


def merge_labels(
    blocks: list[BlockLabels],
    contacts: list[Int64Array],
    min_size: int = 0,
    uint32_max_objects: int = UINT32_MAX_OBJECTS,
) -> LabelMapping:
    """Join local labels that touch, drop objects under ``min_size`` voxels, number canonically.

    The labels' dtype is uint32 up to ``uint32_max_objects`` objects, uint64 beyond.
    """
    counts = np.array([b.count for b in blocks], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])
    nodes = int(offsets[-1])
    pairs = (
        np.concatenate([np.empty((0, 4), np.int64), *contacts]) if contacts else np.empty((0, 4), np.int64)
    )
    a = offsets[pairs[:, 0]] + pairs[:, 1] - 1
    b = offsets[pairs[:, 2]] + pairs[:, 3] - 1
    graph = scipy.sparse.coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(nodes, nodes)).tocsr()
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    first_voxel = np.concatenate([np.empty(0, np.int64), *(b.first_voxel for b in blocks)])
    sizes = np.concatenate([np.empty(0, np.int64), *(b.sizes for b in blocks)])
    components = int(component.max()) + 1 if nodes else 0
    component_first = np.full(components, np.iinfo(np.int64).max)
    np.minimum.at(component_first, component, first_voxel)
    component_size = np.bincount(component, weights=sizes, minlength=components).astype(np.int64)
    kept = np.nonzero(component_size >= max(min_size, 1))[0]
    ranked = kept[np.argsort(component_first[kept], kind="stable")]
    final = np.zeros(components, np.uint64)
    final[ranked] = np.arange(1, ranked.size + 1, dtype=np.uint64)
    return LabelMapping(offsets, final[component], int(ranked.size), uint32_max_objects)


def relabel(local: npt.NDArray[np.uint32], mapping: npt.NDArray[np.uint64], dtype: str) -> npt.NDArray[Any]:
    """Global IDs of a block: ``mapping[local]`` in the output dtype (an ID it cannot hold is an error,
    never a wrapped one)."""
    if mapping.size and int(mapping.max()) > np.iinfo(dtype).max:
        raise OverflowError(f"label ID {int(mapping.max())} does not fit the labels' {dtype}")
    table = mapping.astype(dtype)
    result: npt.NDArray[Any] = table[local]
    return result


def downsample_nearest(labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Every second voxel in Y and X: labels are never averaged."""
    return labels[..., ::2, ::2]
