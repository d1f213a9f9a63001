"""Validate a segmentation request and plan its blocks; writes nothing.

Everything that can be wrong with a request (input, checkpoint, config,
output path, resume compatibility) is found here, before any byte is
written, so a refused request leaves no trace.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.blocks import LabelRule
from pipeline.checkpoint import CheckpointInfo, read_checkpoint_info
from pipeline.config import LabelsConfig, RunConfig
from pipeline.errors import InputError
from pipeline.geometry import Block, BlockGrid
from pipeline.labels import Connectivity
from pipeline.omezarr import OutputLayout, auto_levels, is_pipeline_output, output_exists
from pipeline.pixels import PLANE_AXES, ScaleCheck, check_scale
from pipeline.store import InputVolume, PixelSize, open_input, resampled_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentRequest:
    input_url: str
    output_url: str
    checkpoint_path: Path
    config: RunConfig
    overwrite: bool = False
    resume: bool = False
    run_id: str | None = None  # the Prefect flow-run id when there is one
    show_progress: bool = True
    prefect: Mapping[str, str | int | None] | None = None  # flow run, deployment, flow version


@dataclass(frozen=True)
class RunPlan:
    request: SegmentRequest
    volume: InputVolume
    checkpoint: CheckpointInfo
    layout: OutputLayout
    grid: BlockGrid
    blocks: list[Block]
    label_rule: LabelRule | None
    min_size_voxels: int
    scale: ScaleCheck
    model_grid: BlockGrid | None = None  # --rescale: predict runs on the model's grid, blocks of its own
    model_blocks: list[Block] = field(default_factory=list)

    @cached_property  # in every block task: resolving the path each time took most of making the jobs
    def output_url(self) -> str:
        return comparable(self.request.output_url)

    @property
    def predict_grid(self) -> BlockGrid:
        """The grid the network runs on: the model's grid under --rescale, else the output's."""
        return self.model_grid or self.grid

    @property
    def predict_blocks(self) -> list[Block]:
        return self.model_blocks if self.model_grid else self.blocks


def plan_run(request: SegmentRequest) -> RunPlan:
    """Validate the request (raises InputError); writes nothing."""
    config = request.config
    if request.resume and request.overwrite:
        raise InputError("--resume continues an output and --overwrite replaces it: pass one of them")
    checkpoint = read_checkpoint_info(request.checkpoint_path)
    volume = open_input(
        request.input_url,
        channel=config.input.channel,
        timepoint=config.input.timepoint,
        channels=checkpoint.config.in_channels,
    )
    scale = check_scale(
        request.input_url,
        volume.pixel_sizes,
        checkpoint.training.get("pixel_size_um"),
        tolerance=config.input.pixel_size_tolerance,
        rescale=config.input.rescale,
    )
    source = volume  # the output keeps the input's grid
    if scale.verdict == "rescaled" and scale.model_um is not None:
        model_sizes = {axis: PixelSize(scale.model_um[axis], "micrometer") for axis in PLANE_AXES}
        volume = resampled_input(volume, (scale.factors["y"], scale.factors["x"]), model_sizes)
    try:
        checkpoint.config.geometry.input_size(config.tiling.tile)
    except ValueError as error:
        raise InputError(
            f"tiling.tile {config.tiling.tile} does not fit checkpoint {request.checkpoint_path}: {error}"
        ) from None
    _check_output_path(request)
    _, height, width = source.shape_zyx
    levels = config.output.pyramid_levels
    shape = tuple(int(n) for n in source.array.shape)
    if volume.timepoints > 1:  # the run's T * Z planes are stored as T x Z
        per_timepoint = (volume.planes_per_timepoint,) if volume.output_axes == "tzyx" else ()
        shape = (volume.timepoints, *per_timepoint, height, width)
    layout = OutputLayout(
        shape=shape,
        axes=volume.output_axes or volume.ref.axes,
        tile=config.tiling.tile,
        shard_tiles=config.tiling.shard_tiles,
        dtype=config.output.dtype,
        zstd_level=config.output.zstd_level,
        levels=auto_levels(height, width, config.tiling.tile) if levels == "auto" else levels,
        pixel_sizes=source.pixel_sizes,
        ngff=config.output.ngff,
    )
    if "://" not in request.output_url and not request.resume:
        _check_free_space(
            Path(comparable(request.output_url)), estimated_bytes(layout, config.labels.enabled)
        )
    grid, model_grid = (
        BlockGrid(
            seen.shape_zyx,
            config.tiling.tile,
            config.tiling.block_tiles,
            block_planes(config.tiling.block_planes, volume),
            volume.planes_per_timepoint if volume.timepoints > 1 else 0,
        )
        for seen in (source, volume)
    )
    labels = config.labels
    rule = None
    if labels.enabled:
        planar = labels.mode == "2d" or volume.ref.axes == "yx"
        rule = LabelRule(labels.threshold, Connectivity(labels.connectivity, planar))
    return RunPlan(
        request=request,
        volume=volume,
        checkpoint=checkpoint,
        layout=layout,
        grid=grid,
        blocks=grid.blocks(),
        label_rule=rule,
        min_size_voxels=min_size_voxels(labels, source.pixel_sizes, volume.ref.axes, request.input_url),
        scale=scale,
        model_grid=model_grid if volume is not source else None,
        model_blocks=model_grid.blocks() if volume is not source else [],
    )


def block_planes(configured: int, volume: InputVolume) -> int:
    """Planes per block: the configured number, or the largest divisor of a timepoint's planes below it."""
    if volume.timepoints == 1:
        return configured
    return math.gcd(configured, volume.planes_per_timepoint)


def min_size_voxels(
    labels: LabelsConfig, pixel_sizes: dict[str, PixelSize], axes: str, input_url: str
) -> int:
    """The larger of the voxel and the physical minimum object size, in voxels."""
    voxels = labels.min_size_voxels
    if labels.min_size_physical is None:
        return voxels
    measured = "yx" if labels.mode == "2d" or axes == "yx" else "zyx"
    sizes = [pixel_sizes.get(axis) for axis in measured]
    if any(size is None or size.unit is None for size in sizes):
        raise InputError(
            f"labels.min_size_physical needs physical pixel sizes, and {input_url} does not give them for "
            f"axes '{measured}': use labels.min_size_voxels instead"
        )
    voxel_volume = math.prod(size.value for size in sizes if size is not None)
    return max(voxels, math.ceil(labels.min_size_physical / voxel_volume))


def resume_differences(
    plan: RunPlan, previous: dict[str, Any], input_fingerprint: dict[str, Any]
) -> list[str]:
    """What changed since the run being resumed (empty: it may be resumed)."""
    changes = []
    if previous["checkpoint"]["sha256"] != plan.checkpoint.sha256:
        changes.append(
            f"the model: checkpoint sha256 {plan.checkpoint.sha256[:12]}, the run used "
            f"{previous['checkpoint']['sha256'][:12]} ({previous['checkpoint']['path']})"
        )
    now_config = plan.request.config.resume_defining()
    then_config = {
        key: value for key, value in previous["config"].items() if key not in ("cluster", "retries")
    }
    for section in sorted(set(now_config) | set(then_config)):
        if now_config.get(section) != then_config.get(section):
            changes.append(
                f"config section '{section}': {then_config.get(section)} -> {now_config.get(section)}"
            )
    if previous["input"] != input_fingerprint:
        keys = [key for key in input_fingerprint if previous["input"].get(key) != input_fingerprint[key]]
        changes.append(f"the input ({', '.join(keys)} differ)")
    return changes


def _check_output_path(request: SegmentRequest) -> None:
    source, target = comparable(request.input_url), comparable(request.output_url)
    if target == source or target.startswith(source + "/") or source.startswith(target + "/"):
        raise InputError(
            f"output {request.output_url} overlaps input {request.input_url}: write the output elsewhere "
            "(inputs are never modified)"
        )
    if "://" not in target:
        _check_writable(Path(target))
    exists = output_exists(request.output_url)
    if request.resume:
        if not exists or not is_pipeline_output(request.output_url):
            raise InputError(f"--resume: no unet-pipeline output at {request.output_url} to continue")
        return
    if exists and not request.overwrite:
        raise InputError(
            f"output {request.output_url} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    if exists and not is_pipeline_output(request.output_url):
        raise InputError(
            f"output {request.output_url} exists and is not a unet-pipeline output; --overwrite replaces "
            "only outputs of this pipeline: move it away or choose another output path"
        )


ASSUMED_COMPRESSION = 4  # zstd on probabilities and labels of cells: 5-20x measured; refuse below 1/4 of raw


def estimated_bytes(layout: OutputLayout, labels: bool) -> int:
    """Uncompressed size of the output: every level of the probability and, with labels, uint32 labels."""
    voxels = sum(math.prod(layout.level_shape(level)) for level in range(layout.levels + 1))
    probability = 1 if layout.dtype == "uint8" else 4
    return voxels * (probability + (4 if labels else 0))


def _check_free_space(output: Path, raw: int) -> None:
    """Refuse when the output's disk has less free space than the output compressed at least 4x."""
    folder = _nearest_existing(output.parent)
    free = shutil.disk_usage(folder).free
    if free < raw / ASSUMED_COMPRESSION:
        raise InputError(
            f"not enough space for output {output}: {free / 1e9:.2f} GB free on {folder}, the output needs "
            f"about {raw / ASSUMED_COMPRESSION / 1e9:.2f} GB ({raw / 1e9:.2f} GB before compression); free some "
            "space or write elsewhere"
        )
    if free < raw:
        log.warning(
            "output %s: %.2f GB free, %.2f GB before compression: it should fit",
            output,
            free / 1e9,
            raw / 1e9,
        )


def _nearest_existing(path: Path) -> Path:
    """``path``, or the closest of its parents that exists (where the output's folders will be made)."""
    while not path.exists():
        path = path.parent
    return path


def _check_writable(output: Path) -> None:
    """The output's nearest existing folder must be a folder this process can write in (a probe file)."""
    folder = _nearest_existing(output.parent)
    if not folder.is_dir():
        raise InputError(f"cannot write output {output}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(
            f"cannot write output {output}: {folder} is not writable ({error.strerror})"
        ) from None


def comparable(url: str) -> str:
    """Absolute local paths, URLs as given (without a trailing slash)."""
    if "://" in url:
        return url.rstrip("/")
    return str(Path(url).resolve())
