"""How a graph's jobs go to Dask: follow-ups that queue up share a task, and a failure still names its job."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, get_worker

from pipeline.cluster import JOBS_TOGETHER, BadInputBlockError, BlockFailedError, open_client, run_jobs
from pipeline.config import ClusterConfig
from pipeline.errors import InputDataError
from pipeline.schedule import Job, JobGraph, JobName


def task_and_dask_key(task: int) -> tuple[int, str]:
    """The task it was given and the key of the Dask task it ran in; a negative task fails."""
    if task < 0:
        raise (InputDataError if task == -1 else ValueError)(f"task {task} fails")
    return task, get_worker().get_current_task()


def fails_first_time(claim: str) -> str:
    """Raises the first time it is run for ``claim`` (a path), as a passing fault would; then returns it."""
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return claim
    raise OSError(f"{claim}: not yet")


def ready_jobs(main: int, follow_ups: int, failing: int | None = None, error: int = -1) -> JobGraph:
    """Main jobs 0.. and follow-ups 100.., all ready at once; block ``failing`` raises."""
    return JobGraph(
        [Job("predict", block, task_and_dask_key, block) for block in range(main)]
        + [
            Job("relabel", block, task_and_dask_key, error if block == failing else block, follow_up=True)
            for block in range(100, 100 + follow_ups)
        ]
    )


def run(
    client: Client,
    graph: JobGraph,
    in_flight: int,
    follow_ups_in_flight: int,
    on_result: Callable[[Job, Any], None] = lambda job, result: None,
) -> None:
    run_jobs(
        client,
        graph,
        in_flight=in_flight,
        follow_ups_in_flight=follow_ups_in_flight,
        retries=0,
        key=lambda job: f"{job.stage}-{job.block_id}",
        describe=lambda job: f"{job.stage} of block {job.block_id}",
        on_result=on_result,
    )


def results_by_job(dask_address: str, graph: JobGraph, in_flight: int, follow_ups: int) -> dict[JobName, Any]:
    results: dict[JobName, tuple[int, str]] = {}
    with Client(dask_address) as client:
        run(client, graph, in_flight, follow_ups, lambda job, result: results.setdefault(job.name, result))
    assert graph.unfinished == 0
    return results


def test_follow_ups_that_queue_up_share_dask_tasks_and_each_gets_its_own_result(dask_address: str) -> None:
    """Main jobs go one to a task however many queue up: a task's results come back together, and
    the contacts, the merge and relabel behind a block would wait for the last block of its task."""
    results = results_by_job(dask_address, ready_jobs(main=8, follow_ups=12), in_flight=1, follow_ups=1)
    assert sorted(results) == [
        *(("predict", block) for block in range(8)),
        *(("relabel", block) for block in range(100, 112)),
    ]
    assert all(task == block for (_, block), (task, _) in results.items())
    stages_by_dask_task: dict[str, list[str]] = {}
    for (stage, _), (_, key) in results.items():
        stages_by_dask_task.setdefault(key, []).append(stage)
    assert all(len(set(stages)) == 1 for stages in stages_by_dask_task.values())
    assert max(len(stages) for stages in stages_by_dask_task.values() if "relabel" in stages) == JOBS_TOGETHER
    assert all(len(stages) == 1 for stages in stages_by_dask_task.values() if "predict" in stages)


def test_jobs_that_free_slots_can_take_go_alone(dask_address: str) -> None:
    results = results_by_job(dask_address, ready_jobs(main=3, follow_ups=2), in_flight=6, follow_ups=2)
    assert len(results) == 5
    assert Counter(key for _, key in results.values()).most_common(1)[0][1] == 1


@pytest.mark.parametrize(
    ("error", "raised", "kind"),
    [(-1, BadInputBlockError, "InputDataError"), (-2, BlockFailedError, "ValueError")],
)
def test_a_job_failing_among_others_in_one_dask_task_is_the_one_named(
    dask_address: str, error: int, raised: type[Exception], kind: str
) -> None:
    failing = 100 + JOBS_TOGETHER + 1  # the second job of the second task of follow-ups
    with Client(dask_address) as client, pytest.raises(raised) as caught:
        run(client, ready_jobs(1, 12, failing, error), in_flight=1, follow_ups_in_flight=1)
    assert str(caught.value) == (
        f"relabel of block {failing} failed after 1 attempt(s): {kind}: task {error} fails"
    )


def test_each_job_in_a_shared_task_has_retries_of_its_own(
    dask_address: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    claims = [str(tmp_path / f"{block}") for block in range(8)]
    graph = JobGraph(
        [Job("relabel", block, fails_first_time, claim, follow_up=True) for block, claim in enumerate(claims)]
    )
    results: dict[JobName, str] = {}
    with Client(dask_address) as client, caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
        run_jobs(
            client,
            graph,
            in_flight=1,
            follow_ups_in_flight=1,
            retries=1,  # every job fails once: a task's one retry for all its jobs would not do
            key=lambda job: f"{job.stage}-{job.block_id}",
            describe=lambda job: f"{job.stage} of block {job.block_id}",
            on_result=lambda job, result: results.setdefault(job.name, result),
        )
    assert results == {("relabel", block): claim for block, claim in enumerate(claims)}
    assert caplog.text.count("failed (attempt 1 of 2), sent again: OSError") == 8


def sleep_on_worker(seconds: float) -> str:
    time.sleep(seconds)
    return str(get_worker().address)


def placed_main_tasks(dask_scheduler: Any) -> dict[str, tuple[str, list[str]]]:
    """Each main task the scheduler has at a worker: that worker and the workers it was placed on."""
    return {
        str(key): (task.processing_on.address, sorted(task.worker_restrictions or ()))
        for key, task in dask_scheduler.tasks.items()
        if str(key).startswith("predict-") and task.processing_on is not None
    }


def test_main_jobs_are_placed_on_the_worker_with_the_fewest() -> None:
    """The driver places each main job (a block's predict) on the worker holding the fewest of the
    run's, and on a cluster we start it runs there (no work stealing): none holds more than its
    share of those in flight, for a worker's blocks share its one device."""
    # blocks of 20 to 80 ms, and long follow-ups beside them that Dask places where it likes
    graph = JobGraph(
        [Job("predict", block, sleep_on_worker, 0.02 + 0.03 * (block % 3)) for block in range(24)]
        + [Job("contacts", block, sleep_on_worker, 0.3, follow_up=True) for block in range(4)]
    )
    seen: list[dict[str, tuple[str, list[str]]]] = []
    ran: Counter[str] = Counter()
    with open_client(ClusterConfig(workers=2, threads_per_worker=2), forward_logs=False) as client:
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        assert not client.run_on_scheduler(lambda dask_scheduler: "stealing" in dask_scheduler.extensions)

        def check(job: Job, worker: str) -> None:
            ran[worker] += job.stage == "predict"
            seen.append(client.run_on_scheduler(placed_main_tasks))

        # 3 a worker of 2 threads, as a run sends them: one waits in each worker for a free thread
        run(client, graph, in_flight=3 * len(workers), follow_ups_in_flight=1, on_result=check)
    assert sum(ran.values()) == 24 and set(ran) == set(workers)
    tasks = [task for moment in seen for task in moment.values()]
    assert tasks and all(placed == [at] for at, placed in tasks)
    assert all(max(Counter(at for at, _ in moment.values()).values(), default=0) <= 3 for moment in seen)
