"""The unit of distributed work: one block of whole output shards.

A predict task reads its window (tiles grown by the halo, mirror-padded at
the volume edge) straight from the input store, normalises it with the
run's statistics, predicts every tile, writes its own shards and returns a
small report, never arrays. A pyramid task does the same for one shard of a
lower resolution level from the level above it. Plain functions: the Dask
wrappers live in the run.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.config import ProfileConfig
from pipeline.errors import PipelineError
from pipeline.geometry import Block, Roi
from pipeline.model import UNet
from pipeline.normalization import NormalizationStats
from pipeline.omezarr import downsample_mean, encode_probability, level_array
from pipeline.predict import predict_padded, prepare_model
from pipeline.store import InputRef, read_mirrored, reopen_input


@dataclass(frozen=True, slots=True)
class CheckpointRef:
    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class PredictTask:
    block: Block
    volume_shape: tuple[int, int, int]  # ZYX (Z = 1 for a YX input)
    input: InputRef
    output_url: str
    checkpoint: CheckpointRef
    stats: NormalizationStats
    profile: ProfileConfig
    tile: int
    output_dtype: str


@dataclass(frozen=True, slots=True)
class PyramidTask:
    block_id: int
    level: int  # written level (>= 1); reads level - 1
    roi: Roi  # ZYX at this level
    source_shape: tuple[int, int, int]  # ZYX of level - 1
    output_url: str


@dataclass(frozen=True, slots=True)
class BlockReport:
    stage: str
    block_id: int
    pixels: int  # output pixels written
    seconds: dict[str, float] = field(default_factory=dict)
    worker: str = ""


def predict_block(task: PredictTask) -> BlockReport:
    """Predict one block and write its shards of level s0."""
    started = time.perf_counter()
    model = worker_model(task.checkpoint, task.profile)
    geometry = model.geometry
    block, tile, halo = task.block, task.tile, geometry.halo
    read = block.read_roi(tile, halo)
    raw = read_mirrored(
        reopen_input(task.input),
        block.planes,
        (read.start[1], read.stop[1]),
        (read.start[2], read.stop[2]),
    )
    normalised = task.stats.apply(raw)[:, np.newaxis]  # (P, 1, H + 2h, W + 2h)
    loaded = time.perf_counter()
    probabilities = predict_padded(
        model,
        normalised,
        tile,
        batch_size=task.profile.batch_size,
        channels_last=task.profile.channels_last,
    )
    write = block.write_roi(task.volume_shape, tile)
    height, width = write.shape[1:]
    foreground = probabilities[:, 1:].sum(axis=1)[:, :height, :width]  # p(not background)
    predicted = time.perf_counter()
    write_level(task.output_url, 0, write, encode_probability(foreground, task.output_dtype))
    return BlockReport(
        stage="predict",
        block_id=block.block_id,
        pixels=write.size,
        seconds={
            "read": loaded - started,
            "predict": predicted - loaded,
            "write": time.perf_counter() - predicted,
        },
        worker=worker_name(),
    )


def pyramid_block(task: PyramidTask) -> BlockReport:
    """Write one shard of pyramid level ``task.level`` from the level above it."""
    started = time.perf_counter()
    source = level_array(task.output_url, task.level - 1)
    roi = task.roi
    _, source_height, source_width = task.source_shape
    rows = slice(2 * roi.start[1], min(2 * roi.stop[1], source_height))
    cols = slice(2 * roi.start[2], min(2 * roi.stop[2], source_width))
    planes = slice(roi.start[0], roi.stop[0])
    if source.ndim == 3:
        fine = np.asarray(source[planes, rows, cols])
    else:
        fine = np.asarray(source[rows, cols])[np.newaxis]
    write_level(task.output_url, task.level, roi, downsample_mean(fine))
    return BlockReport(
        stage=f"pyramid s{task.level}",
        block_id=task.block_id,
        pixels=roi.size,
        seconds={"downsample": time.perf_counter() - started},
        worker=worker_name(),
    )


def write_level(url: str, level: int, roi: Roi, values: npt.NDArray[Any]) -> None:
    """Write a ZYX ``roi`` (whole shards) of a level; YX outputs drop the plane axis."""
    array = level_array(url, level)
    if values.shape != roi.shape:
        raise PipelineError(f"internal: block data {values.shape} does not fit its region {roi}")
    if array.ndim == 2:
        array[roi.start[1] : roi.stop[1], roi.start[2] : roi.stop[2]] = values[0]
    else:
        array[roi.slices()] = values


def configure_torch(profile: ProfileConfig) -> None:
    """Threads and kernel choices of the execution profile, set in every process that predicts."""
    if torch.get_num_threads() != profile.threads:
        torch.set_num_threads(profile.threads)
    if profile.device == "cuda":
        torch.backends.cudnn.benchmark = not profile.deterministic
        torch.backends.cudnn.deterministic = profile.deterministic
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


@functools.lru_cache(maxsize=2)
def _cached_model(path: str, sha256: str, device: str, dtype: str, channels_last: bool) -> UNet:
    checkpoint = load_checkpoint(path)
    if checkpoint.sha256 != sha256:
        raise PipelineError(
            f"checkpoint {path} changed during the run: sha256 {checkpoint.sha256}, the run started "
            f"with {sha256}"
        )
    return prepare_model(checkpoint.model, device=device, dtype=dtype, channels_last=channels_last)


def worker_model(checkpoint: CheckpointRef, profile: ProfileConfig) -> UNet:
    """This process's copy of the model, loaded once per checkpoint sha256 and profile."""
    configure_torch(profile)
    return _cached_model(checkpoint.path, checkpoint.sha256, profile.device, profile.dtype, profile.channels_last)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
