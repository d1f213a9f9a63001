"""One segmentation run: plan -> predict blocks on Dask -> pyramid -> run record.

Everything that can be wrong with the request (input, checkpoint, config,
output path) is checked before anything is written. The output is marked
complete only after every stage and the run record are written; a failed
run leaves its record saying so.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from distributed import Client

from pipeline.blocks import BlockReport, CheckpointRef, PredictTask, PyramidTask, predict_block, pyramid_block
from pipeline.checkpoint import Checkpoint, load_checkpoint
from pipeline.cluster import cluster_shape, open_client, run_bounded, worker_peak_rss
from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.geometry import Block, plan_blocks
from pipeline.normalization import NormalizationStats
from pipeline.omezarr import (
    OutputLayout,
    auto_levels,
    create_output,
    is_pipeline_output,
    output_exists,
    read_state,
    remove_output,
    write_state,
)
from pipeline.progress import stage_progress
from pipeline.provenance import new_run_record, now
from pipeline.store import InputVolume, fingerprint, normalization_sample, open_input

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SegmentRequest:
    input_url: str
    output_url: str
    checkpoint_path: Path
    config: RunConfig
    overwrite: bool = False
    run_id: str | None = None  # the Prefect flow-run id when there is one
    show_progress: bool = True


@dataclass(frozen=True)
class RunPlan:
    """Everything validated, nothing written yet."""

    request: SegmentRequest
    volume: InputVolume
    checkpoint: Checkpoint
    layout: OutputLayout
    blocks: list[Block]


def segment(request: SegmentRequest, client: Client | None = None) -> dict[str, Any]:
    """Segment one volume; return the run record. ``client``: reuse a running cluster."""
    plan = plan_run(request)
    stats = plan.checkpoint.normalization.statistics(
        normalization_sample(
            plan.volume,
            request.config.normalization_sample.chunks,
            request.config.normalization_sample.max_values,
        )
    )
    if request.overwrite and output_exists(request.output_url):
        log.info("removing the previous output %s (--overwrite)", request.output_url)
        remove_output(request.output_url)
    group = create_output(request.output_url, plan.layout)
    run_id = request.run_id or str(uuid.uuid4())
    record = new_run_record(
        run_id=run_id,
        input_fingerprint=fingerprint(plan.volume),
        checkpoint={
            "path": str(plan.checkpoint.path),
            "sha256": plan.checkpoint.sha256,
            "architecture": plan.checkpoint.config.to_dict(),
            "normalization": plan.checkpoint.normalization.to_dict(),
            "training": plan.checkpoint.training,
        },
        config=request.config.resolved(),
        output_config_hash=request.config.output_hash(),
        normalization=stats.to_dict(),
        blocks=len(plan.blocks),
    )
    state = read_state(group)
    state["runs"].append(record)
    write_state(group, state)

    def save_record() -> None:
        write_state(group, state)

    with _log_file(request.output_url, run_id):
        log.info(
            "run %s: %s %s -> %s, %d blocks", run_id, plan.volume.description, plan.volume.shape_zyx,
            request.output_url, len(plan.blocks),
        )
        try:
            with _client(request.config, client) as active:
                record["cluster"] = cluster_shape(active)
                save_record()
                _predict_stage(active, plan, stats, run_id, record)
                save_record()
                _pyramid_stages(active, plan, run_id, record)
                record["worker_peak_rss_bytes"] = worker_peak_rss(active)
        except BaseException as error:
            record.update(status="failed", ended=now(), error=f"{type(error).__name__}: {error}")
            save_record()
            log.error("run %s failed: %s", run_id, error)
            raise
        record.update(status="complete", ended=now())
        state["complete"] = True
        save_record()
    log.info("run %s complete: %s", run_id, request.output_url)
    return record


def plan_run(request: SegmentRequest) -> RunPlan:
    """Validate the request (raises InputError); writes nothing."""
    config = request.config
    volume = open_input(request.input_url)
    checkpoint = load_checkpoint(request.checkpoint_path)
    if checkpoint.config.in_channels != 1:
        raise InputError(
            f"checkpoint {request.checkpoint_path} expects {checkpoint.config.in_channels} input channels; "
            f"the input {request.input_url} has axes '{volume.ref.axes}' (one channel)"
        )
    try:
        checkpoint.model.geometry.input_size(config.tiling.tile)
    except ValueError as error:
        raise InputError(f"tiling.tile {config.tiling.tile} does not fit checkpoint {request.checkpoint_path}: {error}") from None
    _check_output_path(request)
    depth, height, width = volume.shape_zyx
    levels = config.output.pyramid_levels
    layout = OutputLayout(
        shape=tuple(int(n) for n in volume.array.shape),
        axes=volume.ref.axes,
        tile=config.tiling.tile,
        shard_tiles=config.tiling.shard_tiles,
        dtype=config.output.dtype,
        zstd_level=config.output.zstd_level,
        levels=auto_levels(height, width, config.tiling.tile) if levels == "auto" else levels,
        pixel_sizes=volume.pixel_sizes,
    )
    blocks = plan_blocks(volume.shape_zyx, config.tiling.tile, config.tiling.block_tiles, config.tiling.block_planes)
    return RunPlan(request, volume, checkpoint, layout, blocks)


def _check_output_path(request: SegmentRequest) -> None:
    source, target = _comparable(request.input_url), _comparable(request.output_url)
    if target == source or target.startswith(source + "/") or source.startswith(target + "/"):
        raise InputError(
            f"output {request.output_url} overlaps input {request.input_url}: write the output elsewhere "
            "(inputs are never modified)"
        )
    if output_exists(request.output_url):
        if not request.overwrite:
            raise InputError(f"output {request.output_url} already exists; pass --overwrite to replace it")
        if not is_pipeline_output(request.output_url):
            raise InputError(
                f"output {request.output_url} exists and is not a unet-pipeline output; --overwrite replaces "
                "only outputs of this pipeline: move it away or choose another output path"
            )


def _comparable(url: str) -> str:
    if "://" in url:
        return url.rstrip("/")
    return str(Path(url).resolve())


def _predict_stage(
    client: Client, plan: RunPlan, stats: NormalizationStats, run_id: str, record: dict[str, Any]
) -> None:
    request = plan.request
    config = request.config
    tasks = [
        PredictTask(
            block=block,
            volume_shape=plan.volume.shape_zyx,
            input=plan.volume.ref,
            output_url=_comparable(request.output_url),
            checkpoint=CheckpointRef(str(plan.checkpoint.path.resolve()), plan.checkpoint.sha256),
            stats=stats,
            profile=config.profile,
            tile=config.tiling.tile,
            output_dtype=config.output.dtype,
        )
        for block in plan.blocks
    ]

    def describe(task: PredictTask) -> str:
        roi = task.block.write_roi(plan.volume.shape_zyx, config.tiling.tile)
        return f"block {task.block.block_id} (z, y, x from {roi.start} to {roi.stop})"

    def count(report: BlockReport) -> None:
        record["blocks"]["done"] += 1

    _run_stage(client, "predict", predict_block, tasks, describe, run_id, record, plan, count,
               lambda task: task.block.block_id)


def _pyramid_stages(client: Client, plan: RunPlan, run_id: str, record: dict[str, Any]) -> None:
    layout, config = plan.layout, plan.request.config
    shard_edge = layout.tile * layout.shard_tiles
    planes = plan.volume.shape_zyx[0]
    for level in range(1, layout.levels + 1):
        height, width = layout.level_shape(level)[-2:]
        source = layout.level_shape(level - 1)
        source_zyx = (planes, source[-2], source[-1])
        shape_zyx = (planes, height, width)
        tasks = [
            PyramidTask(
                block_id=block.block_id,
                level=level,
                roi=block.write_roi(shape_zyx, shard_edge),
                source_shape=source_zyx,
                output_url=_comparable(plan.request.output_url),
            )
            for block in plan_blocks(shape_zyx, shard_edge, (1, 1), config.tiling.block_planes)
        ]
        _run_stage(
            client, f"pyramid s{level}", pyramid_block, tasks,
            lambda task: f"pyramid level s{task.level} block {task.block_id} ({task.roi})",
            run_id, record, plan, None, lambda task: task.block_id,
        )


def _run_stage(
    client: Client,
    stage: str,
    function: Callable[[T], BlockReport],
    tasks: Sequence[T],
    describe: Callable[[T], str],
    run_id: str,
    record: dict[str, Any],
    plan: RunPlan,
    on_report: Callable[[BlockReport], None] | None,
    block_id: Callable[[T], int],
) -> None:
    config = plan.request.config
    workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    pixels = 0
    with stage_progress(stage, len(tasks), enabled=plan.request.show_progress) as advance:

        def collect(report: BlockReport) -> None:
            nonlocal pixels
            pixels += report.pixels
            for name, value in report.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + value
            if on_report is not None:
                on_report(report)
            advance(report.pixels)

        run_bounded(
            client,
            function,
            tasks,
            in_flight=workers * config.cluster.in_flight_per_worker,
            retries=config.retries,
            key=lambda task: f"{stage.replace(' ', '-')}-{block_id(task)}-{run_id[:8]}",
            describe=describe,
            on_result=collect,
        )
    wall = time.perf_counter() - started
    record["stages"][stage] = {
        "blocks": len(tasks),
        "wall_seconds": round(wall, 3),
        "pixels": pixels,
        "mpix_per_second": round(pixels / 1e6 / wall, 3) if wall > 0 else None,
        "worker_seconds": {name: round(value, 3) for name, value in seconds.items()},
    }


@contextmanager
def _client(config: RunConfig, client: Client | None) -> Iterator[Client]:
    if client is not None:
        yield client
        return
    with open_client(config.cluster) as opened:
        yield opened


@contextmanager
def _log_file(output_url: str, run_id: str) -> Iterator[None]:
    """Driver and forwarded worker logs of the run, in OUTPUT/logs/ (local outputs)."""
    if "://" in output_url:
        yield
        return
    folder = Path(output_url) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"run-{run_id}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    package = logging.getLogger("pipeline")
    previous = package.level
    package.addHandler(handler)
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)
        handler.close()
