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
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from distributed import Client

from pipeline.cluster import (
    SCHEDULER_LOST,
    SchedulerLostError,
    check_workers_have_gpus,
    check_workers_see,
    cluster_shape,
    open_client,
    worker_peak_rss,
)
from pipeline.config import ProfileConfig
from pipeline.device_turn import DeviceTurn
from pipeline.errors import InputError, OutputWriteError
from pipeline.lock import hold_lock
from pipeline.markers import done_blocks, remove_markers
from pipeline.normalization import NormalizationStats, stats_to_record
from pipeline.omezarr import (
    create_output,
    ensure_scratch_labels,
    open_output,
    read_state,
    remove_scratch,
    scratch_label_edges,
    scratch_label_levels,
    write_state,
)
from pipeline.plan import RunPlan, SegmentRequest, plan_run
from pipeline.provenance import new_run_record, now
from pipeline.run_checks import (
    fixed_profile,
    refuse_if_running,
    replace_previous,
    resumable,
    warn_on_read_amplification,
)
from pipeline.run_labels import label_merge, labels_as_uint64
from pipeline.run_log import log_file
from pipeline.run_phase import Clock, run_phase
from pipeline.stage_jobs import (
    contact_jobs,
    predict_jobs,
    pyramid_jobs,
    resample_jobs,
)
from pipeline.store import fingerprint, normalization_sample
from pipeline.worker_device import CheckpointRef, device_statistics, start_warm_up, warm_up_result

__all__ = ["SegmentRequest", "segment"]

log = logging.getLogger(__name__)


def segment(
    request: SegmentRequest, client: Client | None = None, turn: DeviceTurn | None = None
) -> dict[str, Any]:
    """Segment one volume (or continue an interrupted run); return the run record.

    ``client``: reuse a running Dask cluster instead of opening one. ``turn``: this run's turn at
    the cluster's devices among runs that share it (see :mod:`pipeline.device_turn`), given up
    once its last block is predicted. A failed write of the output (disk full, file too large, a
    store error) becomes an OutputWriteError naming the output, a lost Dask scheduler a
    SchedulerLostError; what was written stays, marked incomplete, for ``--resume``.
    """
    turn = turn or DeviceTurn()
    try:
        return _segment(request, client, turn)
    except SCHEDULER_LOST as error:  # a CommClosedError is an OSError too, but not the output's
        said = " ".join(str(error).split())  # Dask's messages span lines
        raise SchedulerLostError(
            f"lost the connection to the Dask scheduler during the run of {request.output_url} "
            f"({type(error).__name__}: {said}); what was written is left incomplete: once the scheduler "
            "is back, run again (with --resume to continue the output)"
        ) from error
    except OSError as error:
        raise OutputWriteError(
            f"writing {request.output_url} failed: {error}; the output is left incomplete: free space "
            "(or mend the store) and run again with --resume"
        ) from error
    finally:
        turn.release()


class Laps:
    """Seconds between named moments, in order: where a run's time before its first block (and after
    its last block's work) goes."""

    def __init__(self, started: float) -> None:
        self._last = started
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


def _segment(request: SegmentRequest, client: Client | None, turn: DeviceTurn) -> dict[str, Any]:
    started = time.perf_counter()
    laps = Laps(started)
    plan = plan_run(request)
    refuse_if_running(plan)
    laps("plan")
    with _client(request, client) as active:
        laps("cluster")  # started or connected here, or handed in
        _check_cluster(active, plan)
        laps("cluster checks")
        warmed = _warm_workers(active, plan)
        return _write(plan, active, started, laps, warmed, turn)


def _check_cluster(client: Client, plan: RunPlan) -> None:
    """Before anything is written: the workers have what the run asks of them (GPUs, the input, the model)."""
    if plan.request.config.profile.device == "cuda":
        check_workers_have_gpus(client)
    check_workers_see(client, [plan.volume.ref.url, str(plan.checkpoint.path.resolve())])


def _warm_workers(client: Client, plan: RunPlan) -> str | None:
    """Every worker makes the run's batcher (model loaded; on a GPU, warmed up) while the driver samples
    the input and creates the output, not when its first block asks. With ``batch_size: auto`` the
    size is not known yet: the first blocks make it, as before."""
    profile = plan.request.config.profile
    if not isinstance(profile.batch_size, int):
        return None
    name = uuid.uuid4().hex
    checkpoint = CheckpointRef(str(plan.checkpoint.path.resolve()), plan.checkpoint.sha256)
    client.run(
        start_warm_up,
        name,
        checkpoint,
        profile,
        plan.checkpoint.config.geometry.input_size(plan.request.config.tiling.tile),
        on_error="ignore",  # a worker lost now: its blocks are retried elsewhere, as ever
    )
    return name


def _warm_up_seconds(client: Client, warmed: str | None) -> dict[str, Any]:
    """Each worker's warm-up as it ended: seconds, or the error its first block met too."""
    if warmed is None:
        return {}
    results = client.run(warm_up_result, warmed, on_error="ignore")
    return {
        address: round(value, 3) if isinstance(value, float) else value for address, value in results.items()
    }


def _write(
    plan: RunPlan,
    client: Client,
    started: float,
    laps: Laps,
    warmed: str | None,
    turn: DeviceTurn,
) -> dict[str, Any]:
    """Create (or continue) the output and run every stage on ``client``; return the run record."""
    request = plan.request
    run_id = request.run_id or str(uuid.uuid4())
    input_fingerprint = fingerprint(plan.volume)
    read_amplification = warn_on_read_amplification(plan)
    laps("input fingerprint")
    if request.resume:
        stats, previous_id = resumable(plan, input_fingerprint)
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
        replace_previous(plan)
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
        with log_file(plan.output_url, run_id):
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
                profile = fixed_profile(client, plan, state["runs"][0] if request.resume else None)
                record["execution_profile"] = profile.model_dump()
                laps("run record, execution profile")
                turn.take()
                laps("the previous run's blocks")  # a run sharing the cluster before this one
                record["setup_seconds"] = laps.seconds
                save()
                _run_stages(client, plan, profile, stats, Clock(run_id, started), record, save, turn)
                finish = Laps(time.perf_counter())  # where the time after the last block's work goes
                record["worker_warm_up_seconds"] = _warm_up_seconds(client, warmed)
                record["worker_peak_rss_bytes"] = worker_peak_rss(client)
                finish("worker readings")
                remove_scratch(plan.output_url)
                finish("scratch removed")
                record["finish_seconds"] = finish.seconds
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


def _device_readings(client: Client) -> dict[str, dict[str, float]]:
    """Each worker's device batcher statistics so far; a worker lost meanwhile (its blocks retried
    elsewhere) is left out, not the run failed."""
    readings: dict[str, dict[str, float]] = client.run(device_statistics, on_error="ignore")
    return readings


def _device_work(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """What the workers' device batchers did between two readings, summed over workers."""
    totals: dict[str, float] = {}
    for worker, counts in after.items():
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + value - before.get(worker, {}).get(name, 0)
    return {name: round(value, 3) for name, value in sorted(totals.items())}


def _run_stages(
    client: Client,
    plan: RunPlan,
    profile: ProfileConfig,
    stats: tuple[NormalizationStats, ...],
    run: Clock,
    record: dict[str, Any],
    save: Callable[[], None],
    turn: DeviceTurn,
) -> None:
    """Predict (or resample) with contacts and the probability pyramid behind it, and the label
    merge with relabel and the label pyramid as the blocks' labels and contacts come in (slab by
    slab; again, for uint64 labels, after a count past uint32's limit: see :mod:`pipeline.run_labels`).
    The run's ``turn`` at the devices is given up once its last block is predicted."""
    if plan.label_rule is not None:  # an output of an older run keeps no subsampled labels or edge lines
        kept = replace(
            plan.label_rule,
            scratch_levels=scratch_label_levels(plan.output_url),
            edges=plan.grid.block_edges[1:] if scratch_label_edges(plan.output_url) else None,
        )
        plan = replace(plan, label_rule=kept)
    resampled = plan.model_grid is not None
    labelled = "resample" if resampled else "predict"  # the stage that writes s0 and the local labels
    before = _device_readings(client)
    if resampled:
        run_phase(client, plan, predict_jobs(plan, profile, stats), run, record, turn=turn)
        record["stages"]["predict"]["device"] = _device_work(before, _device_readings(client))
        save()
        first = resample_jobs(plan)
    else:
        first = predict_jobs(plan, profile, stats)
    contacts = contact_jobs(plan, labelled) if plan.label_rule is not None else []
    merge = label_merge(plan, labelled, record) if plan.label_rule is not None else None
    run_phase(
        client,
        plan,
        [*first, *contacts, *pyramid_jobs(plan, "", "mean", labelled)],
        run,
        record,
        merge,
        turn=turn,
    )
    if not resampled:
        record["stages"]["predict"]["device"] = _device_work(before, _device_readings(client))
    save()
    if merge is not None and merge.passed_limit is not None:  # more objects than uint32 holds
        run_phase(client, plan, [], run, record, labels_as_uint64(plan, labelled, merge, record), turn=turn)
        save()


@contextmanager
def _client(request: SegmentRequest, client: Client | None) -> Iterator[Client]:
    if client is not None:
        yield client
        return
    with open_client(request.config.cluster, device=request.config.profile.device) as opened:
        yield opened
