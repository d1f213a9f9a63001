"""The units of distributed work: one block of whole output shards per task.

A predict task reads its window (tiles grown by the halo, mirror-padded at
the volume edge) straight from the input store, normalises it with the
run's statistics, predicts every tile, writes its own probability shards,
labels its own foreground into the scratch labels, marks itself done and
returns a small report (timings, its label summary), never arrays of
voxels. Contact, relabel and pyramid tasks follow the same pattern. Plain
functions: the Dask wiring lives in the run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipeline import zarr_direct
from pipeline.axes import VolumeArray
from pipeline.config import ProfileConfig
from pipeline.errors import InputDataError, PipelineError
from pipeline.geometry import Block, BlockGrid, Roi, ceil_div
from pipeline.label_edges import Box, edge_lines, slab_from_edges
from pipeline.labels import (
    Connectivity,
    contact_slabs,
    downsample_nearest,
    label_block,
    relabel,
    slab_contacts,
    unique_rows,
)
from pipeline.markers import write_marker
from pipeline.normalization import NormalizationStats
from pipeline.omezarr import (
    SCRATCH_LABEL_EDGES,
    SCRATCH_LABELS,
    SCRATCH_PROBABILITY,
    downsample_mean,
    encode_probability,
    output_array,
    scratch_labels_path,
)
from pipeline.predict import predict_padded
from pipeline.resample import ResampledArray, SpatialArray
from pipeline.store import InputRef, describe_chunks, naming_damage, read_mirrored, reopen_input
from pipeline.worker_device import CheckpointRef, worker_batcher


@dataclass(frozen=True, slots=True)
class LabelRule:
    """How a block turns probabilities into local labels, and how many subsampled levels of them it
    keeps beside them (for the label pyramid: see :func:`pipeline.omezarr.scratch_labels_path`)."""

    threshold: float
    connectivity: Connectivity
    scratch_levels: int = 0
    edges: tuple[int, int] | None = None  # block rows and columns, where the output keeps edge lines


@dataclass(frozen=True, slots=True)
class PredictTask:
    block: Block
    volume_shape: tuple[int, int, int]  # ZYX (Z = 1 for a YX input)
    input: InputRef
    output_url: str
    checkpoint: CheckpointRef
    stats: tuple[NormalizationStats, ...]  # one per channel the model reads
    profile: ProfileConfig
    tile: int
    shard_tiles: int  # a batch holds windows of one output shard
    output_dtype: str
    labels: LabelRule | None
    target: str = "s0"  # SCRATCH_PROBABILITY (float32, no labels) when the output is resampled after


@dataclass(frozen=True, slots=True)
class ResampleTask:
    """--rescale: a block of the output's grid, bilinear from the model-grid foreground, then labelled."""

    block: Block
    volume_shape: tuple[int, int, int]  # ZYX of the output's grid (planes as the run sees them)
    factors: tuple[float, float]  # model-grid pixels per output pixel, Y and X
    output_url: str
    tile: int
    output_dtype: str
    labels: LabelRule | None


@dataclass(frozen=True, slots=True)
class ContactTask:
    block: Block
    grid: BlockGrid
    output_url: str
    connectivity: Connectivity
    edges: bool = False  # read Y and X faces from the blocks' edge lines


@dataclass(frozen=True, slots=True)
class RelabelTask:
    block: Block
    grid: BlockGrid
    output_url: str
    target: str  # e.g. "labels/cells/s0"
    mapping: npt.NDArray[np.uint64]  # local label -> global ID, this block's slice only
    dtype: str


@dataclass(frozen=True, slots=True)
class PyramidTask:
    block_id: int
    stage: str  # marker stage, e.g. "pyramid s1"
    source: str  # array read, e.g. "s0"
    target: str  # array written, e.g. "s1"
    method: str  # "mean" or "nearest"
    roi: Roi  # ZYX at the written level
    source_shape: tuple[int, int, int]  # ZYX of the level read
    output_url: str


@dataclass(frozen=True, slots=True)
class LabelLevelTask:
    """A shard of a label pyramid level straight from the local labels (see :func:`label_level_block`)."""

    block_id: int
    stage: str  # marker stage, e.g. "pyramid labels/cells/s1"
    target: str  # array written, e.g. "labels/cells/s1"
    level: int
    roi: Roi  # ZYX at the level
    volume_shape: tuple[int, int, int]  # ZYX at full resolution
    tile: int
    blocks: tuple[tuple[Block, npt.NDArray[np.uint64]], ...]  # each block under the shard, its mapping
    dtype: str
    output_url: str
    subsampled: bool = False  # read the local labels' own copy of this level, not every voxel


@dataclass(frozen=True, slots=True)
class BlockReport:
    stage: str
    block_id: int
    pixels: int  # output voxels written
    seconds: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    payload: dict[str, npt.NDArray[Any]] = field(default_factory=dict)  # small: per object, not per voxel
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # the task thread's own in each of seconds


class Sections:
    """Wall and task-thread CPU seconds of a task's consecutive sections: where a block's time goes,
    and how much of it the thread computed rather than waited (for the GIL, the device, its files)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def end(self, name: str) -> None:
        """The section since the previous end (or the start) is ``name``'s."""
        wall, cpu = time.perf_counter(), time.thread_time()
        self.wall[name], self.cpu[name] = wall - self._wall, cpu - self._cpu
        self._wall, self._cpu = wall, cpu


def predict_block(task: PredictTask) -> BlockReport:
    """Predict one block, write its probability shards and local labels, mark it done."""
    sections = Sections()
    batcher = worker_batcher(task.checkpoint, task.profile)  # the first block of a worker loads the model
    sections.end("model")
    model = batcher.model
    block, tile = task.block, task.tile
    read = block.read_roi(tile, model.geometry.halo)
    rows, cols = (read.start[1], read.stop[1]), (read.start[2], read.stop[2])
    windows = [read_input(task.input, array, block.planes, rows, cols) for array in reopen_input(task.input)]
    sections.end("read")
    channels = [stats.apply(window) for stats, window in zip(task.stats, windows, strict=True)]
    del windows
    normalised = (
        channels[0][:, np.newaxis] if len(channels) == 1 else np.stack(channels, axis=1)
    )  # (P, C, H+2h, W+2h)
    sections.end("normalise")
    probabilities = predict_padded(
        batcher, normalised, tile, shard_tiles=task.shard_tiles
    )  # all but background
    write = block.write_roi(task.volume_shape, tile)
    height, width = write.shape[1:]
    foreground = _foreground(probabilities)[:, :height, :width]
    sections.end("predict")
    write_region(task.output_url, task.target, write, encode_probability(foreground, task.output_dtype))
    payload = _label(task.output_url, task.labels, foreground, write, task.volume_shape, sections)
    write_marker(task.output_url, "predict", block.block_id, payload)
    return BlockReport(
        "predict", block.block_id, write.size, sections.wall, worker_name(), payload, sections.cpu
    )


def _foreground(probabilities: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """p(not background): the one foreground class as it is, or the sum of several."""
    return probabilities[:, 0] if probabilities.shape[1] == 1 else probabilities.sum(axis=1)


def read_input(
    ref: InputRef, array: SpatialArray, planes: range, rows: tuple[int, int], cols: tuple[int, int]
) -> npt.NDArray[Any]:
    """A block's input window; InputDataError names the input and its chunks when they cannot be used."""
    with naming_damage(ref, array, planes, rows, cols):
        values = read_mirrored(array, planes, rows, cols)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputDataError(
            f"{ref.url}: NaN or Inf values in {describe_chunks(array, planes, rows, cols)}; replace them "
            "(e.g. with 0) before segmenting"
        )
    return values


def resample_block(task: ResampleTask) -> BlockReport:
    """Write one block of the output's grid from the model-grid foreground (bilinear), label it, mark it."""
    sections = Sections()
    write = task.block.write_roi(task.volume_shape, task.tile)
    scratch = output_array(task.output_url, SCRATCH_PROBABILITY)
    model_grid = VolumeArray(scratch, merge_time=scratch.ndim == 4)
    height, width = task.volume_shape[1:]
    seen = ResampledArray(model_grid, (1 / task.factors[0], 1 / task.factors[1]), (height, width))
    index = (slice(write.start[1], write.stop[1]), slice(write.start[2], write.stop[2]))
    foreground = (
        seen[(slice(write.start[0], write.stop[0]), *index)] if seen.ndim == 3 else seen[index][np.newaxis]
    )
    sections.end("resample")
    write_region(task.output_url, "s0", write, encode_probability(foreground, task.output_dtype))
    payload = _label(task.output_url, task.labels, foreground, write, task.volume_shape, sections)
    write_marker(task.output_url, "resample", task.block.block_id, payload)
    return BlockReport(
        "resample", task.block.block_id, write.size, sections.wall, worker_name(), payload, sections.cpu
    )


def _label(
    output_url: str,
    rule: LabelRule | None,
    foreground: npt.NDArray[np.float32],
    write: Roi,
    volume_shape: tuple[int, int, int],
    sections: Sections,
) -> dict[str, npt.NDArray[Any]]:
    """Local labels of a block's foreground into the scratch array; their summary for the merge."""
    sections.end("write")
    if rule is None:
        return {}
    local, summary = label_block(foreground >= rule.threshold, write.start, volume_shape, rule.connectivity)
    for level in range(rule.scratch_levels + 1):
        step = 2**level
        write_region(output_url, scratch_labels_path(level), level_roi(write, step), local[:, ::step, ::step])
    if rule.edges is not None:
        _write_edge_lines(output_url, local, write, rule.edges)
    sections.end("label")
    return summary.to_arrays()


def _write_edge_lines(
    output_url: str, local: npt.NDArray[np.uint32], write: Roi, edges: tuple[int, int]
) -> None:
    array = output_array(output_url, SCRATCH_LABEL_EDGES)
    lines = edge_lines(local, array.shape[-1])
    by, bx = write.start[1] // edges[0], write.start[2] // edges[1]
    index = (
        slice(write.start[0], write.stop[0]),
        slice(by, by + 1),
        slice(bx, bx + 1),
        slice(0, 4),
        slice(None),
    )
    zarr_direct.write_region(array, index, lines[:, np.newaxis, np.newaxis])


def contact_block(task: ContactTask) -> BlockReport:
    """Pairs of local labels touching across this block's faces; marks the block done."""
    sections = Sections()
    shape = task.grid.volume_shape
    write = task.block.write_roi(shape, task.grid.tile)
    scratch = output_array(task.output_url, SCRATCH_LABELS)
    read = _slab_reader(task, scratch)
    found = [np.empty((0, 4), np.int64)]
    for axis, side, box in contact_slabs(task.grid, write.start, write.stop, task.connectivity):
        slab = read(box)
        found.append(
            slab_contacts(slab, box[0], write.start, write.stop, axis, side, task.grid, task.connectivity)
        )
    pairs = unique_rows(np.concatenate(found))
    write_marker(task.output_url, "contacts", task.block.block_id, {"pairs": pairs})
    sections.end("contacts")
    return BlockReport(
        "contacts", task.block.block_id, 0, sections.wall, worker_name(), {"pairs": pairs}, sections.cpu
    )


def _slab_reader(task: ContactTask, scratch: Any) -> Callable[[Box], npt.NDArray[np.uint32]]:
    """Face slabs of the local labels: from the blocks' edge lines where the output keeps them."""

    def whole(box: Box) -> npt.NDArray[np.uint32]:
        return read_region(scratch, Roi(*box))

    if not task.edges:
        return whole
    lines = output_array(task.output_url, SCRATCH_LABEL_EDGES)

    def lines_of(block_id: int, planes: range) -> npt.NDArray[np.uint32]:
        _, by, bx = task.grid.block_position(block_id)
        return zarr_direct.read_region(
            lines, (slice(planes.start, planes.stop), by, bx, slice(None), slice(None))
        )

    return lambda box: slab_from_edges(box, task.grid, lines_of, whole)


def relabel_block(task: RelabelTask) -> BlockReport:
    """Write this block's global label IDs from its local labels; marks the block done."""
    sections = Sections()
    write = task.block.write_roi(task.grid.volume_shape, task.grid.tile)
    local = read_region(output_array(task.output_url, SCRATCH_LABELS), write)
    write_region(task.output_url, task.target, write, relabel(local, task.mapping, task.dtype))
    write_marker(task.output_url, "relabel", task.block.block_id)
    sections.end("relabel")
    return BlockReport(
        "relabel", task.block.block_id, write.size, sections.wall, worker_name(), cpu_seconds=sections.cpu
    )


def label_level_block(task: LabelLevelTask) -> BlockReport:
    """Write one shard of a label pyramid level: every ``2**level``-th voxel (in Y and X) of the local
    labels under it, through each block's mapping.

    The same voxels as relabel followed by ``level`` nearest halvings, without waiting for either.
    """
    sections = Sections()
    step = 2**task.level
    roi = task.roi
    scratch = output_array(task.output_url, scratch_labels_path(task.level if task.subsampled else 0))
    level = np.zeros(roi.shape, task.dtype)
    for block, mapping in task.blocks:
        write = block.write_roi(task.volume_shape, task.tile)
        start = (
            max(write.start[0], roi.start[0]),
            *(ceil_div(max(w, step * r), step) * step for w, r in zip(write.start[1:], roi.start[1:])),
        )
        stop = (
            min(write.stop[0], roi.stop[0]),
            *(min(w, step * r) for w, r in zip(write.stop[1:], roi.stop[1:])),
        )
        if any(a >= b for a, b in zip(start, stop)):
            continue
        if task.subsampled:
            local = read_region(scratch, level_roi(Roi(start, stop), step))
        else:
            local = read_region(scratch, Roi(start, stop))[:, ::step, ::step]
        at = (start[0] - roi.start[0], start[1] // step - roi.start[1], start[2] // step - roi.start[2])
        level[tuple(slice(a, a + n) for a, n in zip(at, local.shape))] = relabel(local, mapping, task.dtype)
    write_region(task.output_url, task.target, roi, level)
    write_marker(task.output_url, task.stage, task.block_id)
    sections.end("downsample")
    return BlockReport(
        task.stage, task.block_id, roi.size, sections.wall, worker_name(), cpu_seconds=sections.cpu
    )


def pyramid_block(task: PyramidTask) -> BlockReport:
    """Write one shard of a lower-resolution level from the level above it."""
    sections = Sections()
    roi = task.roi
    _, source_height, source_width = task.source_shape
    fine = read_region(
        output_array(task.output_url, task.source),
        Roi(
            (roi.start[0], 2 * roi.start[1], 2 * roi.start[2]),
            (roi.stop[0], min(2 * roi.stop[1], source_height), min(2 * roi.stop[2], source_width)),
        ),
    )
    coarse = downsample_mean(fine) if task.method == "mean" else downsample_nearest(fine)
    write_region(task.output_url, task.target, roi, coarse)
    write_marker(task.output_url, task.stage, task.block_id)
    sections.end("downsample")
    return BlockReport(
        task.stage, task.block_id, roi.size, sections.wall, worker_name(), cpu_seconds=sections.cpu
    )


def level_roi(roi: Roi, step: int) -> Roi:
    """The voxels of every ``step``-th row and column of a full-resolution region, at that level (YX
    divided, rounding up; Z kept)."""
    return Roi(
        (roi.start[0], ceil_div(roi.start[1], step), ceil_div(roi.start[2], step)),
        (roi.stop[0], ceil_div(roi.stop[1], step), ceil_div(roi.stop[2], step)),
    )


def read_region(array: Any, roi: Roi) -> npt.NDArray[Any]:
    """A region of an output array in plane coordinates (see :func:`plane_index`), as (P, Y, X)."""
    values = zarr_direct.read_region(array, plane_index(array.shape, roi))
    return values[np.newaxis] if array.ndim == 2 else values


def write_region(url: str, path: str, roi: Roi, values: npt.NDArray[Any]) -> None:
    """Write a region (whole shards) of an output array, given in plane coordinates as (P, Y, X)."""
    array = output_array(url, path)
    if values.shape != roi.shape:
        raise PipelineError(f"internal: block data {values.shape} does not fit its region {roi}")
    zarr_direct.write_region(array, plane_index(array.shape, roi), values[0] if array.ndim == 2 else values)


def plane_index(shape: tuple[int, ...], roi: Roi) -> tuple[slice | int, ...]:
    """The index of a plane-coordinate region in an array of ``shape``: YX, ZYX, or TZYX.

    Runs see a TZYX output as T * Z planes, plane ``p`` at (p // Z, p % Z); a
    region never spans two timepoints (blocks and faces stop at their edge).
    """
    rows, cols = slice(roi.start[1], roi.stop[1]), slice(roi.start[2], roi.stop[2])
    if len(shape) == 2:
        return rows, cols
    if len(shape) == 3:
        return slice(roi.start[0], roi.stop[0]), rows, cols
    planes = int(shape[1])
    timepoint, first = divmod(roi.start[0], planes)
    if first + roi.shape[0] > planes:
        raise PipelineError(f"internal: region {roi} spans two timepoints of {planes} planes")
    return timepoint, slice(first, first + roi.shape[0]), rows, cols


def prepare_worker(device: str) -> int:
    """Get this worker ready for blocks as its cluster opens, not in the first run it serves.

    Unpickling the call imports this module and what blocks use (Zarr,
    SciPy, torch); for ``cuda``, CUDA starts too (the driver and the primary
    context: about 6 CPU-s per worker, measured with 8 workers starting at
    once on an H100 host). Returns the CUDA devices this process sees (0 on
    CPU, or with a CPU build of torch).
    """
    if device != "cuda" or not torch.cuda.is_available():
        return 0
    torch.zeros(1, device="cuda")
    return torch.cuda.device_count()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
