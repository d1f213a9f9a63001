"""``nightly-segmentation``: segment every new, ready acquisition under an input folder.

Discover acquisitions -> skip those whose output is complete with this model
and config -> one ``segment-volume`` subflow each, all on one Dask cluster,
the next one's blocks starting as soon as the last block of the one before
is predicted -> a report artifact, and the summary ``unet-pipeline status``
reads. One
failing acquisition does not stop the others; the flow run then ends
Failed and names it. A second run with nothing new does no work.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.prefect_context import quiet_dask
from flows.report import ReportRow, markdown_report, row_from_record
from flows.segment_volume import DEVICE_TURN, segment_volume
from pipeline.acquisitions import Acquisition, check_roots, discover_acquisitions
from pipeline.checkpoint import read_checkpoint_info
from pipeline.cluster import open_client
from pipeline.config import NightlyConfig, RunConfig, load_config, load_nightly_config
from pipeline.device_turn import device_turns
from pipeline.errors import PipelineError
from pipeline.locations import join
from pipeline.outputs import Decision, decide, read_output_status, write_nightly_summary
from pipeline.provenance import now

REPORT_KEY = "nightly-report"
STATUS_OF_ACTION = {"segment": "segmented", "resume": "resumed", "overwrite": "re-segmented"}
# acquisitions in flight: one predicting, the next setting up, earlier ones finishing beside them
ACQUISITIONS_AT_ONCE = 3


class NightlyFailedError(PipelineError):
    """Some acquisitions failed; the others were segmented."""


@flow(name="nightly-segmentation", persist_result=False)
def nightly_segmentation(
    input_root: str | None = None,
    output_root: str | None = None,
    model: str | None = None,
    config: str | None = None,
    settings: str | None = None,
) -> list[dict[str, Any]]:
    """Segment the new acquisitions under ``input_root`` into ``output_root``.

    Either root may be a folder or a bucket prefix (``s3://bucket/incoming``);
    local paths are relative to the working directory. The Dask workers read
    and write the buckets with their own credentials (the standard AWS sources).

    ``settings``: a nightly settings file (``configs/nightly.yaml``) giving
    the defaults; the other parameters override it. ``config``: the run
    config (YAML) of every segmentation.
    """
    logger = get_run_logger()
    started, started_at = time.perf_counter(), now()
    nightly = load_nightly_config(
        Path(settings) if settings else None,
        {"input_root": input_root, "output_root": output_root, "model": model, "config": config},
    ).absolute()
    check_roots(nightly.input_root, nightly.output_root)
    run_config = load_config(nightly.config)
    checkpoint_sha256 = read_checkpoint_info(nightly.model).sha256
    acquisitions = discover_acquisitions(
        nightly.input_root, quiet_seconds=nightly.quiet_seconds, ready_marker=nightly.ready_marker
    )
    logger.info(
        "%d acquisitions under %s (%d ready)",
        len(acquisitions),
        nightly.input_root,
        sum(a.ready for a in acquisitions),
    )
    rows: dict[str, ReportRow] = {}
    todo: list[tuple[Acquisition, Decision]] = []
    for acquisition in acquisitions:
        output = join(str(nightly.output_root), acquisition.output_name)
        if not acquisition.ready:
            logger.info("%s: waiting, %s", acquisition.name, acquisition.why)
            rows[acquisition.name] = ReportRow(acquisition.name, "waiting", output, acquisition.why)
            continue
        status = read_output_status(output)
        decision = decide(status, checkpoint_sha256, run_config)
        if decision.action in ("skip", "wait"):
            logger.info("%s: %s", acquisition.name, decision.why)
            rows[acquisition.name] = (
                row_from_record(acquisition.name, "skipped", output, status.runs[-1], decision.why)
                if decision.action == "skip"
                else ReportRow(acquisition.name, "busy", output, decision.why)
            )
        else:
            todo.append((acquisition, decision))
    if todo:
        rows.update(_segment_all(nightly, run_config, todo))
    ordered = [rows[a.name] for a in acquisitions]
    failed = [row for row in ordered if row.status in ("failed", "cancelled")]
    _publish(nightly, ordered, started_at, time.perf_counter() - started, checkpoint_sha256, run_config)
    if failed:
        raise NightlyFailedError(
            f"{len(failed)} of {len(todo)} acquisitions failed: "
            + "; ".join(f"{row.acquisition} ({row.detail})" for row in failed)
        )
    return [row.to_dict() for row in ordered]


def _segment_all(
    nightly: NightlyConfig, run_config: RunConfig, todo: list[tuple[Acquisition, Decision]]
) -> dict[str, ReportRow]:
    """One subflow per acquisition, all on one Dask cluster opened here, taking turns at its devices
    (:mod:`pipeline.device_turn`): the next acquisition is set up while one predicts, and its
    blocks start as soon as that one's last block is done, beside the rest of its run."""
    turns = device_turns(len(todo))
    with (
        quiet_dask(),
        open_client(run_config.cluster, device=run_config.profile.device, forward_logs=False) as client,
        ThreadPoolExecutor(max_workers=ACQUISITIONS_AT_ONCE, thread_name_prefix="acquisition") as pool,
    ):
        address = client.scheduler.address if client.scheduler else None
        futures = []
        try:
            for (acquisition, decision), turn in zip(todo, turns, strict=True):
                # the subflow runs in the pool's thread, in a copy of this flow run's context
                context = copy_context()
                context.run(DEVICE_TURN.set, turn)
                futures.append(
                    pool.submit(context.run, _segment_one, nightly, acquisition, decision, address)
                )
                turn.taken.wait()  # its blocks have started (or it ended): the next one may set up
            return dict(future.result() for future in futures)
        except BaseException as error:  # a cancellation's signal comes to this thread only
            turns[0].interrupt(error)  # each run stops at its next block result, its output resumable
            for future in futures:
                future.cancel()
            raise


def _segment_one(
    nightly: NightlyConfig, acquisition: Acquisition, decision: Decision, address: str | None
) -> tuple[str, ReportRow]:
    """One acquisition's subflow (with its retries) and its report row; gives up its device turn."""
    logger = get_run_logger()
    output = join(str(nightly.output_root), acquisition.output_name)
    logger.info("%s: %s", acquisition.name, decision.why)
    attempt = segment_volume.with_options(
        retries=nightly.retries, retry_delay_seconds=nightly.retry_delay_seconds
    )
    try:
        state = attempt(
            acquisition=acquisition.name,
            input_url=str(acquisition.path),
            output_url=output,
            model=str(nightly.model),
            config=None if nightly.config is None else str(nightly.config),
            dask_address=address,
            preview_max_pixels=nightly.preview_max_pixels,
            return_state=True,
        )
    finally:
        turn = DEVICE_TURN.get()
        if turn is not None:
            turn.release()  # a subflow that never reached its run (refused, crashed) holds no turn
    last_run = read_output_status(output).last_run
    if state.is_completed() and last_run is not None:
        return acquisition.name, row_from_record(
            acquisition.name, STATUS_OF_ACTION[decision.action], output, last_run
        )
    status = "cancelled" if state.is_cancelled() else "failed"
    detail = (state.message or state.name or "").removeprefix("Flow run encountered an exception: ")
    logger.error("%s: %s: %s", acquisition.name, status, detail)
    return acquisition.name, ReportRow(acquisition.name, status, output, detail)


def _overall_rate(rows: list[ReportRow], seconds: float) -> str:
    """The acquisitions segmented tonight, together, in the flow run's time (they overlap)."""
    mpix = sum(
        row.mpix_per_second * row.seconds
        for row in rows
        if row.status in STATUS_OF_ACTION.values() and row.mpix_per_second and row.seconds
    )
    return f" ({mpix:.1f} Mpix segmented: {mpix / seconds:.2f} Mpix/s overall)" if mpix and seconds else ""


def _publish(
    nightly: NightlyConfig,
    rows: list[ReportRow],
    started_at: str,
    seconds: float,
    checkpoint_sha256: str,
    run_config: RunConfig,
) -> None:
    """The markdown report artifact, and the summary ``unet-pipeline status`` reads."""
    preamble = [
        f"Flow run `{flow_run.name}` ({flow_run.id}), started {started_at}, took {seconds:.1f} s"
        + _overall_rate(rows, seconds)
        + ".",
        f"Input root `{nightly.input_root}` -> output root `{nightly.output_root}`.",
        (
            f"Model `{nightly.model}` (sha256 {checkpoint_sha256[:12]}), run config "
            f"`{nightly.config or '(defaults)'}` (output hash {run_config.output_hash()[:12]})."
        ),
    ]
    report = markdown_report("Nightly segmentation", preamble, rows)
    create_markdown_artifact(report, key=REPORT_KEY, description="what this nightly run did, per acquisition")
    write_nightly_summary(
        nightly.output_root,
        {
            "flow_run_id": str(flow_run.id),
            "flow_run_name": flow_run.name,
            "started": started_at,
            "ended": now(),
            "input_root": str(nightly.input_root),
            "ready_marker": nightly.ready_marker,
            "quiet_seconds": nightly.quiet_seconds,
            "model_sha256": checkpoint_sha256,
            "rows": [row.to_dict() for row in rows],
            "report": report,
        },
    )
