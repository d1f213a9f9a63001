"""How many jobs a second the driver can hand to Dask, and what that caps a run at.

Every job of a run (a block's predict, contacts and relabel, a pyramid shard) travels in a Dask
task: a main job (predict) alone, a follow-up alone or with up to
:data:`pipeline.cluster.JOBS_TOGETHER` others while more are ready than free slots: the driver submits the task, the scheduler sends it to a worker, and the
result comes back through the scheduler to the driver, which then sends the next ones. With a
local cluster the scheduler runs in the driver's process, beside the client: one interpreter does
both. This sends jobs that do
nothing but carry real block tasks (those of a 16384² acquisition), one main job a block and the
run's follow-ups beside them, through
:func:`pipeline.cluster.run_jobs` on a local cluster (``--workers``), as fast as it goes, and reports
the jobs per second, the driver's CPU time per job, and the output rate at which that many jobs a
second would be needed, for blocks of 1 and 4 planes (all of a run's jobs per block counted from
its plan). ``--scheduler subprocess`` runs the scheduler in a process of its own instead. From the
repository root:

    .venv/bin/python benchmarks/driver_job_rate.py --jobs 3000

Writes the figures as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distributed import Client
from distributed.deploy.subprocess import SubprocessCluster
from empty_input import empty_input_request

from pipeline.cluster import open_client, run_jobs
from pipeline.config import load_config
from pipeline.normalization import NormalizationStats
from pipeline.plan import RunPlan, plan_run
from pipeline.schedule import JobGraph
from pipeline.stage_jobs import (
    contact_jobs,
    halved_label_levels,
    label_level_shards,
    predict_jobs,
    pyramid_jobs,
)

PLANE = 16384
STATS = (NormalizationStats(0.0, 1.0),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=6, help="jobs sent at a time (2 workers x 3)")
    parser.add_argument("--scheduler", choices=("driver", "subprocess"), default="driver")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="driver-job-rate-") as folder:
        planes = max(4, -(-args.jobs // (-(-PLANE // 1552)) ** 2))  # blocks of 4 x 4 tiles of 388
        plans = {block_planes: _plan(Path(folder), block_planes, planes) for block_planes in (1, 4)}
        # id: a function the workers import (as a run's are), doing nothing with the task it is sent;
        # a run's mix: one main job a block (predict, one to a Dask task), the rest follow-ups
        follow_ups_per_block = _jobs_per_block(plans[1]) - 1
        blocks = round(args.jobs / (1 + follow_ups_per_block))
        main = [dataclasses.replace(job, function=id) for job in _predict_jobs(plans[1])][:blocks]
        follow_ups = [
            dataclasses.replace(main[k % blocks], block_id=blocks + k, follow_up=True)
            for k in range(args.jobs - blocks)
        ]
        jobs = main + follow_ups
        with _client(args.scheduler, args.workers) as client:
            graph = JobGraph(jobs, set())
            cpu, wall = time.process_time(), time.perf_counter()
            run_jobs(
                client,
                graph,
                in_flight=args.in_flight,
                follow_ups_in_flight=2,
                retries=2,
                key=lambda job: f"nothing-{job.block_id}",
                describe=str,
                on_result=lambda job, report: None,
            )
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    rate = len(jobs) / wall
    report: dict[str, Any] = {
        "scheduler": args.scheduler,
        "workers": args.workers,
        "jobs": len(jobs),
        "main_jobs": len(main),
        "in_flight": args.in_flight,
        "jobs_per_second": round(rate, 1),
        "driver_cpu_ms_per_job": round(cpu / len(jobs) * 1e3, 2),
        "per_block_plane": {},
    }
    for planes, plan in plans.items():
        per_block = _jobs_per_block(plan)
        mpix_per_block = plan.blocks[0].write_roi(plan.grid.volume_shape, plan.grid.tile).size / 1e6
        report["per_block_plane"][planes] = {
            "jobs_per_block": round(per_block, 2),
            "output_mpix_per_block": round(mpix_per_block, 2),
            "mpix_per_second_at_this_job_rate": round(rate / per_block * mpix_per_block, 1),
        }
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _plan(folder: Path, block_planes: int, planes: int) -> RunPlan:
    """The plan of an empty uint16 input of ``planes`` x 16384²."""
    overrides = {"tiling.block_planes": block_planes}
    return plan_run(empty_input_request(folder, (planes, PLANE, PLANE), overrides, f"in-{block_planes}"))


def _predict_jobs(plan: RunPlan) -> list[Any]:
    return predict_jobs(plan, plan.request.config.profile, STATS)


def _jobs_per_block(plan: RunPlan) -> float:
    """Every job of a run (predict, contacts, relabel, both pyramids) per block."""
    jobs = (
        len(_predict_jobs(plan))
        + len(contact_jobs(plan, "predict"))
        + len(pyramid_jobs(plan, "", "mean", "predict"))
        + len(plan.blocks)  # relabel
        + len(label_level_shards(plan))
        + len(halved_label_levels(plan))
    )
    return jobs / len(plan.blocks)


@contextmanager
def _client(scheduler: str, workers: int) -> Iterator[Client]:
    if scheduler == "driver":
        with open_client(load_config(overrides={"cluster.workers": workers}).cluster) as client:
            yield client
        return
    with (
        SubprocessCluster(
            host="127.0.0.1", n_workers=workers, threads_per_worker=2, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


if __name__ == "__main__":
    main()
