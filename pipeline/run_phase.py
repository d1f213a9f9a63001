"""A phase of a run: its stages' block jobs sent to Dask as their needs are met, with progress bars,
and jobs that join as results come in (the label merge's relabel and label pyramid).

Jobs a previous attempt finished (their markers) are skipped; each stage's counts and timings go into
the run record, also when the phase fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from distributed import Client

from pipeline.blocks import BlockReport
from pipeline.cluster import run_jobs
from pipeline.device_turn import DeviceTurn
from pipeline.markers import done_blocks
from pipeline.plan import RunPlan
from pipeline.progress import stages_progress
from pipeline.schedule import Job, JobGraph

Reports = dict[str, dict[int, BlockReport]]  # stage -> block id -> this run's report


@dataclass(frozen=True, slots=True)
class Clock:
    """The run's id (in every job's Dask key) and its start (when each stage began, from it)."""

    run_id: str
    started: float  # time.perf_counter() when the run began


class JobSource(Protocol):
    """Jobs that join a phase as what they are made from comes in."""

    @property
    def exhausted(self) -> bool:
        """Nothing more to come."""

    def more(self, graph: JobGraph, reports: Reports) -> list[Job]:
        """The jobs that can be made now (called after every result, and at the start)."""


def run_phase(
    client: Client,
    plan: RunPlan,
    jobs: list[Job],
    run: Clock,
    record: dict[str, Any],
    later: JobSource | None = None,
    turn: DeviceTurn | None = None,
) -> Reports:
    """Run the unmarked jobs of some stages as their needs are met, and ``later``'s as it makes them;
    record counts and timings per stage. ``turn``: the run's turn at the devices, given up once every
    predict job is done; an interruption of its chain is raised at the next result."""
    config = plan.request.config
    stages = list(dict.fromkeys(job.stage for job in jobs))
    graph = JobGraph(jobs, _marked(plan, stages))
    workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    reports: Reports = {stage: {} for stage in stages}
    seconds: dict[str, dict[str, float]] = {stage: {} for stage in stages}
    cpu_seconds: dict[str, dict[str, float]] = {stage: {} for stage in stages}
    totals = {stage: graph.stages[stage].computed for stage in stages}
    try:
        with stages_progress(totals, enabled=plan.request.show_progress) as bars:
            marked: dict[str, set[tuple[str, int]]] = {}

            def join_later() -> None:
                if later is None:
                    return
                added = later.more(graph, reports)
                if not added:
                    return
                joining = list(dict.fromkeys(job.stage for job in added))
                for stage in joining:
                    if stage not in marked:
                        marked[stage] = _marked(plan, [stage])
                new = [stage for stage in joining if stage not in stages]
                before = {stage: graph.stages[stage].computed for stage in joining if stage in graph.stages}
                graph.add(added, set().union(*(marked[stage] for stage in joining)))
                stages.extend(new)
                reports.update({stage: {} for stage in new})
                seconds.update({stage: {} for stage in new})
                cpu_seconds.update({stage: {} for stage in new})
                bars.add({stage: graph.stages[stage].computed - before.get(stage, 0) for stage in joining})

            def tell_predicted() -> None:
                if turn is not None and "predict" in graph.stages and graph.finished("predict"):
                    turn.release()

            def collect(job: Job, report: BlockReport) -> None:
                if turn is not None:
                    turn.raise_if_interrupted()
                reports[job.stage][report.block_id] = report
                for sums, values in (
                    (seconds[job.stage], report.seconds),
                    (cpu_seconds[job.stage], report.cpu_seconds),
                ):
                    for name, value in values.items():
                        sums[name] = sums.get(name, 0.0) + value
                bars.advance(job.stage, report.pixels)
                if job.stage == "predict":
                    tell_predicted()
                join_later()

            tell_predicted()  # a resumed run may have predicted every block before
            join_later()  # or finished those stages
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
                # of those, the task threads' own CPU (what was not waiting), where a task times its sections
                "worker_cpu_seconds": {name: round(value, 3) for name, value in cpu_seconds[stage].items()},
            }
        if "predict" in stages:
            record["blocks"]["done"] = graph.stages["predict"].blocks
    assert later is None or later.exhausted, "the jobs of a later stage never came"
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
