"""One segmentation run: plan -> predict + label blocks -> contacts -> merge -> relabel -> pyramids.

Stages run on Dask with a bounded window of blocks in flight; each block
marks itself done after writing its shards, so a resumed run (``resume``)
recomputes only unmarked blocks and ends with the same bits as an
uninterrupted run. The output is marked complete only after every stage
and the run record are written (one atomic write of the root attributes),
and the markers go only after that; a failed run's record says which
block failed and why.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distributed import Client

from pipeline.blocks import (
    BlockReport,
)
from pipeline.cluster import (
    check_workers_have_gpus,
    check_workers_see,
    cluster_shape,
    open_client,
    run_jobs,
    worker_peak_rss,
)
from pipeline.config import ProfileConfig
from pipeline.errors import InputError, OutputWriteError
from pipeline.labels import BlockLabels, merge_labels
from pipeline.locations import is_url, join, write_whole
from pipeline.lock import hold_lock, read_lock, refuse_if_held
from pipeline.markers import done_blocks, read_marker, remove_markers
from pipeline.normalization import NormalizationStats, stats_from_record, stats_to_record
from pipeline.omezarr import (
    create_labels,
    create_output,
    ensure_scratch_labels,
    open_output,
    output_exists,
    read_state,
    remove_output,
    remove_scratch,
    scratch_label_edges,
    scratch_label_levels,
    write_state,
)
from pipeline.plan import RunPlan, SegmentRequest, plan_run, resume_differences
from pipeline.progress import stages_progress
from pipeline.provenance import new_run_record, now
from pipeline.rechunk import READ_AMPLIFICATION_WARNING, block_read_amplification, ratio_text
from pipeline.schedule import Job, JobGraph
from pipeline.stage_jobs import (
    contact_jobs,
    label_pyramid_jobs,
    predict_jobs,
    pyramid_jobs,
    relabel_jobs,
    resample_jobs,
)
from pipeline.store import fingerprint, normalization_sample
from pipeline.worker_device import CheckpointRef, device_statistics, probe_batch_size

__all__ = ["SegmentRequest", "segment"]

log = logging.getLogger(__name__)


def segment(request: SegmentRequest, client: Client | None = None) -> dict[str, Any]:
    """Segment one volume (or continue an interrupted run); return the run record.

    ``client``: reuse a running Dask cluster instead of opening one. A failed write of the output
    (disk full, file too large, a store error) becomes an OutputWriteError naming the output; what
    was written stays, marked incomplete, for ``--resume``.
    """
    try:
        return _segment(request, client)
    except OSError as error:
        raise OutputWriteError(
            f"writing {request.output_url} failed: {error}; the output is left incomplete: free space "
            "(or mend the store) and run again with --resume"
        ) from error


class Laps:
    """Seconds between named moments of a run's set-up, in order: where the time before the first block goes."""

    def __init__(self, started: float) -> None:
        self._last = started
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


def _segment(request: SegmentRequest, client: Client | None) -> dict[str, Any]:
    started = time.perf_counter()
    laps = Laps(started)
    plan = plan_run(request)
    _refuse_if_running(plan)
    laps("plan")
    with _client(request, client) as active:
        laps("cluster")  # started or connected here, or handed in
        _check_cluster(active, plan)
        laps("cluster checks")
        return _write(plan, active, started, laps)


def _check_cluster(client: Client, plan: RunPlan) -> None:
    """Before anything is written: the workers have what the run asks of them (GPUs, the input, the model)."""
    if plan.request.config.profile.device == "cuda":
        check_workers_have_gpus(client)
    check_workers_see(client, [plan.volume.ref.url, str(plan.checkpoint.path.resolve())])


def _write(plan: RunPlan, client: Client, started: float, laps: Laps) -> dict[str, Any]:
    """Create (or continue) the output and run every stage on ``client``; return the run record."""
    request = plan.request
    run_id = request.run_id or str(uuid.uuid4())
    input_fingerprint = fingerprint(plan.volume)
    read_amplification = _warn_on_read_amplification(plan)
    laps("input fingerprint")
    if request.resume:
        stats, previous_id = _resumable(plan, input_fingerprint)
    else:
        sample = request.config.normalization_sample
        stats = tuple(
            plan.checkpoint.normalization.statistics(
                normalization_sample(channel, sample.regions, sample.max_values)
            )
            for channel in plan.volume.channels
        )
        laps("normalisation sample")
        previous_id = None
        _replace_previous(plan)
        model_grid = plan.model_grid.volume_shape[1:] if plan.model_grid else None
        create_output(
            plan.output_url,
            plan.layout,
            label_blocks=plan.grid.block_edges if plan.label_rule is not None else None,
            model_grid=model_grid,
        )
    laps("output created")
    with hold_lock(plan.output_url, run_id, take_over_stale=request.resume):
        if request.resume and plan.label_rule is not None:  # gone if a run died while finishing
            ensure_scratch_labels(plan.output_url, plan.layout, plan.grid.block_edges)
        group = open_output(plan.output_url, mode="r+")
        state = read_state(group)
        if request.resume and state["complete"]:  # finished by the run that held the lock a moment ago
            raise InputError(f"--resume: {request.output_url} is already complete; nothing to resume")
        record = new_run_record(
            run_id=run_id,
            input_fingerprint=input_fingerprint,
            checkpoint={
                "path": str(plan.checkpoint.path),
                "sha256": plan.checkpoint.sha256,
                "architecture": plan.checkpoint.config.to_dict(),
                "normalization": plan.checkpoint.normalization.to_dict(),
                "training": plan.checkpoint.training,
            },
            config=request.config.resolved(),
            output_config_hash=request.config.output_hash(),
            normalization=stats_to_record(stats),
            blocks=len(plan.blocks),
        )
        record["resumed_from"] = previous_id
        record["pixel_size"] = plan.scale.to_dict()
        record["input_layout"] = {
            "description": plan.volume.description,
            "read_amplification": round(read_amplification, 2),
        }
        if request.prefect is not None:
            record["prefect"] = dict(request.prefect)
        state["runs"].append(record)

        def save() -> None:
            write_state(group, state)

        save()
        with _log_file(plan.output_url, run_id):
            log.info(
                "run %s: %s %s -> %s, %d blocks%s",
                run_id,
                plan.volume.description,
                plan.volume.shape_zyx,
                request.output_url,
                len(plan.blocks),
                f" (resuming run {previous_id})" if previous_id else "",
            )
            try:
                record["cluster"] = cluster_shape(client)
                save()
                check_workers_see(client, [plan.output_url])
                profile = _fixed_profile(client, plan, state["runs"][0] if request.resume else None)
                record["execution_profile"] = profile.model_dump()
                laps("run record, execution profile")
                record["setup_seconds"] = laps.seconds
                save()
                _run_stages(client, plan, profile, stats, Clock(run_id, started), record, save)
                record["worker_peak_rss_bytes"] = worker_peak_rss(client)
                remove_scratch(plan.output_url)
            except BaseException as error:
                # KeyboardInterrupt, or a cancellation signal from the orchestrator: resumable
                interrupted = not isinstance(error, Exception)
                record["blocks"]["done"] = len(done_blocks(plan.output_url, "predict"))
                record.update(
                    status="interrupted" if interrupted else "failed",
                    ended=now(),
                    wall_seconds=round(time.perf_counter() - started, 3),
                    error=f"{type(error).__name__}: {error}" if str(error) else type(error).__name__,
                )
                try:
                    save()
                except OSError as unsaved:  # the disk that failed the run may refuse its record too
                    log.error("run %s: its record could not be saved: %s", run_id, unsaved)
                log.error("run %s %s: %s", run_id, record["status"], str(error) or type(error).__name__)
                raise
            record.update(
                status="complete", ended=now(), wall_seconds=round(time.perf_counter() - started, 3)
            )
            state["complete"] = True
            save()  # one atomic write: the record and the claim of completeness land together
            _drop_markers(plan.output_url, run_id)
        log.info("run %s complete: %s", run_id, request.output_url)
    return record


def _drop_markers(output_url: str, run_id: str) -> None:
    """After the complete record, never before: a run killed earlier resumes from every marker."""
    try:
        remove_markers(output_url)
    except OSError as error:  # the output is complete; only small files are left behind
        log.warning("run %s: complete, but its block markers could not be removed: %s", run_id, error)


def _warn_on_read_amplification(plan: RunPlan) -> float:
    """How many voxels a block decodes per voxel it uses; a warning naming the fix when it is high."""
    halo = plan.checkpoint.config.geometry.halo
    planes, rows, cols = plan.grid.block_edges
    ratio = block_read_amplification(plan.volume, (planes, rows + 2 * halo, cols + 2 * halo))
    if ratio > READ_AMPLIFICATION_WARNING:
        log.warning(
            "%s (%s) is stored in chunks of %s: each block decodes %s the voxels it uses, so reading, not "
            "the model, will set the pace; `unet-pipeline rechunk %s COPY.ome.zarr` copies it into "
            "512 x 512 chunks once, then segment the copy",
            plan.request.input_url,
            plan.volume.description,
            " x ".join(str(n) for n in plan.volume.chunks_zyx),
            ratio_text(ratio),
            plan.request.input_url,
        )
    return ratio


def _resumable(
    plan: RunPlan, input_fingerprint: dict[str, Any]
) -> tuple[tuple[NormalizationStats, ...], str]:
    """The recorded normalisation of the run to continue; InputError if anything changed."""
    state = read_state(open_output(plan.output_url))
    if state["complete"]:
        raise InputError(f"--resume: {plan.request.output_url} is already complete; nothing to resume")
    if not state["runs"]:
        raise InputError(
            f"--resume: {plan.request.output_url} holds no run record to continue (its run failed before "
            "writing one): start over with --overwrite"
        )
    first = state["runs"][0]
    changes = resume_differences(plan, first, input_fingerprint)
    if changes:
        raise InputError(
            f"--resume refused for {plan.request.output_url}: since run {first['run_id']} changed "
            + "; ".join(changes)
            + ". Resume with the original model, config and input, or start over with --overwrite"
        )
    return stats_from_record(first["normalization"]), str(state["runs"][-1]["run_id"])


def _refuse_if_running(plan: RunPlan) -> None:
    """A live run holding the output refuses this one, before a cluster is started for it."""
    if not plan.request.overwrite:
        refuse_if_held(plan.output_url)  # hold_lock decides for good
        return
    owner = read_lock(plan.output_url)
    if owner is not None and owner.is_alive() is not False:
        raise InputError(
            f"--overwrite refused: {plan.request.output_url} is being written by run {owner.run_id} "
            f"(pid {owner.pid} on {owner.host})"
        )


def _replace_previous(plan: RunPlan) -> None:
    """--overwrite: remove the previous output (ours, checked by the plan) unless a live run holds it."""
    if not plan.request.overwrite or not output_exists(plan.output_url):
        return
    _refuse_if_running(plan)
    remove_output(plan.output_url)
    log.info("removed the previous output %s (--overwrite)", plan.request.output_url)


def _fixed_profile(client: Client, plan: RunPlan, first_run: dict[str, Any] | None) -> ProfileConfig:
    """The run's execution profile with ``batch_size: auto`` settled: as recorded by the run a resumption
    continues, else probed on a worker's device. Every block of the run then uses that size."""
    profile = plan.request.config.profile
    if profile.batch_size != "auto":
        return profile
    recorded = (first_run or {}).get("execution_profile", {}).get("batch_size")
    if isinstance(recorded, int):
        size = recorded
    else:
        checkpoint = CheckpointRef(str(plan.checkpoint.path.resolve()), plan.checkpoint.sha256)
        tiling = plan.request.config.tiling
        size = client.submit(
            probe_batch_size, checkpoint, profile, tiling.tile, tiling.shard_tiles, pure=False
        ).result()
        log.info("batch_size auto: %d windows per forward pass on %s", size, profile.device)
    return profile.model_copy(update={"batch_size": size})


def _device_work(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """What the workers' device batchers did between two readings, summed over workers."""
    totals: dict[str, float] = {}
    for worker, counts in after.items():
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + value - before.get(worker, {}).get(name, 0)
    return {name: round(value, 3) for name, value in sorted(totals.items())}


Reports = dict[str, dict[int, BlockReport]]  # stage -> block id -> this run's report


@dataclass(frozen=True, slots=True)
class Clock:
    run_id: str
    started: float  # time.perf_counter() when the run began


def _run_stages(
    client: Client,
    plan: RunPlan,
    profile: ProfileConfig,
    stats: tuple[NormalizationStats, ...],
    run: Clock,
    record: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Predict (or resample) with contacts and the probability pyramid behind it; once the blocks'
    labels and contacts are in (not the pyramid), the label merge, then relabel with the label
    pyramid behind it, beside the probability pyramid's last levels."""
    if plan.label_rule is not None:  # an output of an older run keeps no subsampled labels or edge lines
        kept = replace(
            plan.label_rule,
            scratch_levels=scratch_label_levels(plan.output_url),
            edges=plan.grid.block_edges[1:] if scratch_label_edges(plan.output_url) else None,
        )
        plan = replace(plan, label_rule=kept)
    resampled = plan.model_grid is not None
    labelled = "resample" if resampled else "predict"  # the stage that writes s0 and the local labels
    before = client.run(device_statistics)
    if resampled:
        _run_phase(client, plan, predict_jobs(plan, profile, stats), run, record)
        record["stages"]["predict"]["device"] = _device_work(before, client.run(device_statistics))
        save()
        first = resample_jobs(plan)
    else:
        first = predict_jobs(plan, profile, stats)
    contacts = contact_jobs(plan, labelled) if plan.label_rule is not None else []
    merge = (
        None
        if plan.label_rule is None
        else Later((labelled, "contacts"), lambda reports: _merge_labels(plan, labelled, reports, record))
    )
    _run_phase(
        client, plan, [*first, *contacts, *pyramid_jobs(plan, "", "mean", labelled)], run, record, merge
    )
    if not resampled:
        record["stages"]["predict"]["device"] = _device_work(before, client.run(device_statistics))
    save()


@dataclass(frozen=True, slots=True)
class Later:
    """Jobs that join a phase once ``after``'s stages are finished, made from their reports."""

    after: tuple[str, ...]
    jobs: Callable[[Reports], list[Job]]


def _merge_labels(plan: RunPlan, labelled: str, reports: Reports, record: dict[str, Any]) -> list[Job]:
    """The global label merge (here, on the driver), then the relabel and label pyramid jobs."""
    assert plan.label_rule is not None
    config = plan.request.config
    summaries = _payloads(plan, labelled, reports[labelled])
    pairs = _payloads(plan, "contacts", reports["contacts"])
    started = time.perf_counter()
    mapping = merge_labels(
        [BlockLabels.from_arrays(summaries[b.block_id]) for b in plan.blocks],
        [pairs[b.block_id]["pairs"] for b in plan.blocks],
        plan.min_size_voxels,
        config.labels.uint32_max_objects,
    )
    record["labels"] = {
        "objects": mapping.objects,
        "dtype": mapping.dtype,
        "local_labels": int(mapping.offsets[-1]),
        "local_label_levels_kept": plan.label_rule.scratch_levels,  # label pyramid levels read from them
        "local_label_edges_kept": plan.label_rule.edges is not None,  # contacts read Y and X faces from them
        "min_size_voxels": plan.min_size_voxels,
        "merge_seconds": round(time.perf_counter() - started, 3),
    }
    create_labels(plan.output_url, plan.layout, config.labels.name, mapping.dtype)
    return [*relabel_jobs(plan, mapping), *label_pyramid_jobs(plan, mapping)]


def _payloads(plan: RunPlan, stage: str, reports: dict[int, BlockReport]) -> dict[int, dict[str, Any]]:
    """Every block's payload: from this run's reports, or from the markers of blocks done before."""
    return {
        block.block_id: reports[block.block_id].payload
        if block.block_id in reports
        else read_marker(plan.output_url, stage, block.block_id)
        for block in plan.blocks
    }


def _run_phase(
    client: Client,
    plan: RunPlan,
    jobs: list[Job],
    run: Clock,
    record: dict[str, Any],
    later: Later | None = None,
) -> Reports:
    """Run the unmarked jobs of some stages as their needs are met, and ``later``'s once its stages are
    finished; record counts and timings per stage."""
    config = plan.request.config
    stages = list(dict.fromkeys(job.stage for job in jobs))
    graph = JobGraph(jobs, _marked(plan, stages))
    workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    reports: Reports = {stage: {} for stage in stages}
    seconds: dict[str, dict[str, float]] = {stage: {} for stage in stages}
    totals = {stage: graph.stages[stage].computed for stage in stages}
    try:
        with stages_progress(totals, enabled=plan.request.show_progress) as bars:

            def join_later() -> None:
                nonlocal later
                if later is None or not all(graph.finished(stage) for stage in later.after):
                    return
                added = later.jobs(reports)
                later = None
                new = [stage for stage in dict.fromkeys(job.stage for job in added) if stage not in stages]
                graph.add(added, _marked(plan, new))
                stages.extend(new)
                reports.update({stage: {} for stage in new})
                seconds.update({stage: {} for stage in new})
                bars.add({stage: graph.stages[stage].computed for stage in new})

            def collect(job: Job, report: BlockReport) -> None:
                reports[job.stage][report.block_id] = report
                for name, value in report.seconds.items():
                    seconds[job.stage][name] = seconds[job.stage].get(name, 0.0) + value
                bars.advance(job.stage, report.pixels)
                join_later()

            join_later()  # a resumed run may have finished those stages before
            run_jobs(
                client,
                graph,
                in_flight=workers * config.cluster.in_flight_per_worker,
                follow_ups_in_flight=workers,
                retries=config.retries,
                key=lambda job: (
                    f"{job.stage.replace(' ', '-').replace('/', '-')}-{job.block_id}-{run.run_id}"
                ),
                describe=lambda job: _describe(plan, job.stage, job.block_id),
                on_result=collect,
            )
    finally:  # a failed run's record shows how far each stage got
        for stage in stages:
            times = graph.stages[stage]
            wall = times.last_done - times.first_sent if times.first_sent and times.last_done else 0.0
            pixels = sum(report.pixels for report in reports[stage].values())
            record["stages"][stage] = {
                "blocks": times.blocks,
                "computed": times.computed,
                # stages of one phase run together: when this one's first block was sent, from the run's start
                "started_after_seconds": round(times.first_sent - run.started, 3)
                if times.first_sent
                else None,
                "skipped_done": times.blocks - times.computed,
                "wall_seconds": round(wall, 3),
                "pixels": pixels,
                "mpix_per_second": round(pixels / 1e6 / wall, 3) if wall > 0 and pixels else None,
                "worker_seconds": {name: round(value, 3) for name, value in seconds[stage].items()},
            }
        if "predict" in stages:
            record["blocks"]["done"] = graph.stages["predict"].blocks
    assert later is None, f"stages {later.after} never finished"
    return reports


def _marked(plan: RunPlan, stages: list[str]) -> set[tuple[str, int]]:
    """The jobs of these stages an earlier attempt finished (their markers)."""
    return {(stage, block_id) for stage in stages for block_id in done_blocks(plan.output_url, stage)}


def _describe(plan: RunPlan, stage: str, block_id: int) -> str:
    if stage.startswith("pyramid"):
        return f"{stage} shard block {block_id}"
    grid, blocks = (
        (plan.predict_grid, plan.predict_blocks) if stage == "predict" else (plan.grid, plan.blocks)
    )
    roi = blocks[block_id].write_roi(grid.volume_shape, grid.tile)
    return f"{stage} of block {block_id} (z, y, x from {roi.start} to {roi.stop})"


@contextmanager
def _client(request: SegmentRequest, client: Client | None) -> Iterator[Client]:
    if client is not None:
        yield client
        return
    with open_client(request.config.cluster, device=request.config.profile.device) as opened:
        yield opened


@contextmanager
def _log_file(output_url: str, run_id: str) -> Iterator[None]:
    """Driver and forwarded worker logs of the run, in OUTPUT/logs/run-ID.log.

    For an object store the log is kept in a local file and uploaded when the run ends, however it ends.
    """
    name = f"run-{run_id}.log"
    if not is_url(output_url):
        folder = Path(output_url) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        with _logging_to(folder / name):
            yield
        return
    with tempfile.TemporaryDirectory(prefix="unet-pipeline-log-") as scratch:
        local = Path(scratch) / name
        try:
            with _logging_to(local):
                yield
        finally:
            try:
                write_whole(join(output_url, "logs", name), local.read_bytes())
            except OSError as error:
                log.error("run %s: its log could not be uploaded to %s: %s", run_id, output_url, error)


@contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """The ``pipeline`` logs, INFO and up, also written to ``path`` while the context lasts."""
    handler = logging.FileHandler(path)
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
