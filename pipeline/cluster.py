"""The Dask cluster of one run: where blocks are computed.

``local``: a LocalCluster of worker processes on 127.0.0.1; ``cuda``: a
dask-cuda LocalCUDACluster, one worker pinned per GPU; ``tcp://HOST:PORT``
(or ``tls://``): an existing scheduler, with workers started on other nodes
by the operator; ``slurm:FILE``: dask-jobqueue workers, one SLURM job (and
GPU) each (``pipeline.slurm``). A worker we start runs ``threads_per_worker``
blocks at once: their forward passes share the process's one device batcher
while the others read, write and label; torch's intra-op threads come from
the execution profile. The
driver keeps a bounded window of blocks in flight, so a volume of hundreds
of thousands of blocks never floods the scheduler.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import resource
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import ExitStack, contextmanager, suppress
from functools import partial
from typing import Any, TypeVar

import dask
import fsspec
from dask.utils import key_split
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, as_completed, wait
from distributed.comm.core import CommClosedError
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.system import MEMORY_LIMIT

from pipeline.blocks import prepare_worker
from pipeline.config import SLURM_PREFIX, ClusterConfig
from pipeline.cpu_time import ROLES, cpu_seconds_by_role, other_threads_cpu_seconds, system_seconds_by_role
from pipeline.errors import InputDataError, InputError, PipelineError
from pipeline.locations import is_url
from pipeline.mps import PIPE as MPS_PIPE
from pipeline.mps import cluster_mps
from pipeline.schedule import Job, JobGraph, JobName, WorkerSlots
from pipeline.worker_environment import MEMORY_ENVIRONMENT, dask_settings, zarr_pool_environment

log = logging.getLogger(__name__)

T = TypeVar("T")


class BlockFailedError(PipelineError):
    """A block failed on every attempt; the run stops and says which one."""


class BadInputBlockError(BlockFailedError, InputError):
    """A block failed on every attempt because of the input's data (exit 2, like any bad input)."""


class SchedulerLostError(PipelineError):
    """The run lost its connection to the Dask scheduler; the output stays incomplete, to resume."""


SCHEDULER_LOST = (CommClosedError, CancelledError)  # what a client raises once its scheduler is gone


@contextmanager
def open_client(config: ClusterConfig, *, device: str = "cpu", forward_logs: bool = True) -> Iterator[Client]:
    """A connected client for the configured cluster, closed (and the cluster stopped) on exit.

    ``device``: the runs' device; every worker gets ready for blocks here, once, rather than in
    the first run it serves (:func:`pipeline.blocks.prepare_worker`), and for ``cuda`` says so if
    it has no GPU. ``forward_logs``: workers' ``pipeline`` logs are re-emitted here (one client
    per process should ask, or each record arrives once per client).
    """
    # the scheduler's HTTP server (metrics, and the dashboard when asked) stays on a free local port
    local_options: dict[str, Any] = {
        "threads_per_worker": config.threads_per_worker,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        "scheduler_kwargs": {"dashboard": config.dashboard},
        "memory_limit": config.memory_limit,
        "silence_logs": logging.ERROR,
    }
    gpus = visible_gpus() if config.address == "cuda" and config.workers_per_gpu > 1 else []
    if config.address == "local":
        environment = spawn_environment(config.workers)
    else:
        environment = spawn_environment(len(gpus) * config.workers_per_gpu if gpus else None)
    # a SIGKILLed worker now and then takes its nanny down with it (measured: benchmarks/soak.py), so a
    # cluster we start can end with no worker at all: its blocks then fail instead of waiting forever
    settings = {
        "distributed.nanny.pre-spawn-environ": environment,
        "distributed.scheduler.no-workers-timeout": f"{config.no_workers_timeout_seconds}s",
        **dask_settings(config.dashboard),
    }
    with ExitStack() as stack:
        shared = config.workers > 1 if config.address == "local" else config.workers_per_gpu > 1
        mps = cluster_mps(
            config.mps,
            device=device,
            starts_workers=config.address in ("local", "cuda"),
            gpu_shared=shared,
            address=config.address,
        )
        environment.update(stack.enter_context(mps))
        stack.enter_context(own_environment_kept(environment))
        stack.enter_context(dask.config.set(settings))
        if config.address == "local":
            cluster: Any = stack.enter_context(
                LocalCluster(n_workers=config.workers, processes=True, **local_options)
            )
            client = stack.enter_context(Client(cluster))
        elif gpus:
            cluster = stack.enter_context(gpu_sharing_cluster(gpus, config.workers_per_gpu, local_options))
            client = stack.enter_context(Client(cluster))
        elif config.address == "cuda":
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                raise InputError(
                    "--cluster cuda needs dask-cuda: install the project with its gpu extra "
                    "(pip install 'unet-pipeline[gpu]')"
                ) from None
            cluster = stack.enter_context(LocalCUDACluster(**local_options))  # one worker per visible GPU
            client = stack.enter_context(Client(cluster))
        elif config.address.startswith(SLURM_PREFIX):
            from pipeline.slurm import slurm_cluster

            cluster = stack.enter_context(slurm_cluster(config.address.removeprefix(SLURM_PREFIX)))
            client = stack.enter_context(Client(cluster))
            _wait_for_workers(client, config.address, config.connect_timeout_seconds)
        else:
            try:
                client = stack.enter_context(
                    Client(config.address, timeout=f"{config.connect_timeout_seconds}s")
                )
            except OSError as error:
                raise InputError(f"cannot reach the Dask scheduler at {config.address}: {error}") from None
            _wait_for_workers(client, config.address, config.connect_timeout_seconds)
        if config.address in ("local", "cuda"):  # worker processes of this driver's, on this host
            client.register_plugin(OwnProcessGroup(), name="own-process-group")
        if forward_logs:
            client.forward_logging("pipeline", level=logging.INFO)
        if client.dashboard_link and config.dashboard:
            log.info("Dask dashboard: %s", client.dashboard_link)
        started = time.perf_counter()
        if device == "cuda":
            check_workers_have_gpus(client)
        else:
            on_each_worker(client, partial(prepare_worker, device))
        log.info("workers ready for blocks in %.1f s", time.perf_counter() - started)
        yield client


class OwnProcessGroup(WorkerPlugin):
    """A worker process the driver started leaves the driver's process group (a worker its nanny
    starts again too): a signal to the group reaches the driver only, which ends the run (its record
    "interrupted", its output resumable) and then stops its workers. Prefect cancels a flow run by
    SIGTERM to the run's process group, a terminal's Ctrl-C goes to the foreground group: with the
    driver, the workers died and took their blocks with them, and the nannies started new ones
    (measured: a 3-s task's result after 7.9 s), while the cancelled run waited for their results
    to see that it was cancelled. Where the driver is killed outright, a worker ends with its parent
    (Dask's nanny children watch it)."""

    idempotent = True

    def setup(self, worker: Any) -> None:
        with suppress(OSError):  # a session leader cannot (and gets no signal meant for a group)
            os.setpgid(0, 0)


def spawn_environment(workers_here: int | None) -> dict[str, str]:
    """The environment of the worker processes we start: Dask's pre-spawn variables, glibc's and
    NumPy's memory settings, and Zarr's codec pool shared out among ``workers_here`` processes on this
    host (None: Zarr's own pool, as for workers on other hosts and dask-cuda's one per GPU)."""
    environment = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **MEMORY_ENVIRONMENT}
    if workers_here:
        environment.update(zarr_pool_environment(workers_here, os.cpu_count() or 1))
    return environment


@contextmanager
def own_environment_kept(workers_environment: dict[str, str]) -> Iterator[None]:
    """This process's environment as it was, after a cluster whose workers got ``workers_environment``.

    A Nanny copies the pre-spawn variables into its own process's environment (os.environ) before
    it starts a worker, and there they would stay, and outrank the next cluster's (Dask reads
    each variable from os.environ first): a second cluster would get the first one's MPS pipe folder,
    its daemon gone.
    """
    before = {name: os.environ.get(name) for name in workers_environment}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def visible_gpus(asked_by: str = "--cluster cuda") -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` as it is, or every one the driver finds."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    else:
        import torch

        gpus = [str(index) for index in range(torch.cuda.device_count())]
    if not gpus:
        raise InputError(
            f"{asked_by} found no GPU (CUDA_VISIBLE_DEVICES="
            f"{listed!r}): run on a GPU node, or use --cluster local for the CPU"
        )
    return gpus


def gpu_sharing_cluster(gpus: list[str], per_gpu: int, options: dict[str, Any]) -> SpecCluster:
    """``per_gpu`` worker processes on each GPU, each seeing only its own (``CUDA_VISIBLE_DEVICES``).

    One worker's host side (reading, labelling, encoding, under one GIL) cannot keep a fast GPU
    busy: 8 workers sharing one H100 ran twice as fast end to end as one (docs/benchmarks.md).
    dask-cuda's LocalCUDACluster starts one worker per GPU; this is the same with several.
    """
    workers = len(gpus) * per_gpu
    memory = options["memory_limit"]
    worker_options = {
        "host": options["host"],
        "nthreads": options["threads_per_worker"],
        "memory_limit": int(MEMORY_LIMIT / workers) if memory == "auto" else memory,
        "silence_logs": options["silence_logs"],
    }
    return SpecCluster(
        scheduler={
            "cls": Scheduler,
            "options": {
                "host": options["host"],
                "dashboard_address": options["dashboard_address"],
                **options["scheduler_kwargs"],
            },
        },
        workers={
            f"gpu{gpu}-{index}": {
                "cls": Nanny,
                "options": {**worker_options, "env": {"CUDA_VISIBLE_DEVICES": gpu}},
            }
            for gpu in gpus
            for index in range(per_gpu)
        },
        silence_logs=options["silence_logs"],
    )


def serve_gpu_workers(
    address: str,
    per_gpu: int,
    threads: int,
    *,
    mps: bool | str = "auto",
    health_port: int | None = None,
    local_directory: str | None = None,
) -> None:
    """Worker processes for a running scheduler, ``per_gpu`` on each visible GPU, each seeing only its own,
    until SIGTERM or SIGINT: what ``--cluster cuda --workers-per-gpu`` starts, for a scheduler of
    its own (compose's ``dask-worker`` service, a GPU node joining a ``tcp://`` scheduler). ``dask cuda
    worker`` starts one per GPU, which cannot keep an H100 busy (docs/benchmarks.md). The workers
    get the environment of the workers a run starts (:func:`open_client`); the first one answers
    ``/health`` on ``health_port``.
    """
    gpus = visible_gpus("unet-pipeline cluster workers")
    environment = spawn_environment(len(gpus) * per_gpu)
    with ExitStack() as stack:
        daemon = cluster_mps(mps, device="cuda", starts_workers=True, gpu_shared=per_gpu > 1, address=address)
        environment.update(stack.enter_context(daemon))
        stack.enter_context(own_environment_kept(environment))
        stack.enter_context(
            dask.config.set({"distributed.nanny.pre-spawn-environ": environment, **dask_settings(False)})
        )
        asyncio.run(_run_nannies(address, gpus, per_gpu, threads, health_port, local_directory))


async def _run_nannies(
    address: str,
    gpus: list[str],
    per_gpu: int,
    threads: int,
    health_port: int | None,
    local_directory: str | None,
) -> None:
    names = [(gpu, index) for gpu in gpus for index in range(per_gpu)]
    nannies = [
        Nanny(
            address,
            nthreads=threads,
            name=f"{socket.gethostname()}-gpu{gpu}-{index}",
            env={"CUDA_VISIBLE_DEVICES": gpu},
            memory_limit=int(MEMORY_LIMIT / len(names)),
            local_directory=local_directory,
            dashboard_address=f":{health_port}" if health_port is not None and k == 0 else ":0",
            silence_logs=logging.ERROR,
        )
        for k, (gpu, index) in enumerate(names)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await asyncio.gather(*nannies)  # each started, its worker joined the scheduler
    log.info("%d workers on %d GPU(s) joined %s", len(nannies), len(gpus), address)
    finished = [asyncio.ensure_future(nanny.finished()) for nanny in nannies]
    await asyncio.wait([asyncio.ensure_future(stop.wait()), *finished], return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*(nanny.close() for nanny in nannies), return_exceptions=True)


def _wait_for_workers(client: Client, address: str, seconds: float) -> None:
    """A scheduler without workers would leave the run waiting forever: give up after ``seconds``."""
    try:
        client.wait_for_workers(1, timeout=seconds)
    except TimeoutError:
        raise InputError(
            f"no Dask worker joined the scheduler at {address} within {seconds:g} s: start workers "
            "(`dask worker ADDRESS --nthreads 2` on each node, `dask cuda worker ADDRESS` on GPU nodes) "
            "or raise cluster.connect_timeout_seconds"
        ) from None


JOBS_TOGETHER = 4  # follow-ups sent as one Dask task, while more are ready than free slots


def run_jobs(
    client: Client,
    graph: JobGraph,
    *,
    in_flight: int,
    follow_ups_in_flight: int,
    retries: int,
    key: Callable[[Job], str],
    describe: Callable[[Job], str],
    on_result: Callable[[Job, Any], None],
) -> None:
    """Run a graph's jobs as their needs are met, at most ``in_flight`` main jobs and
    ``follow_ups_in_flight`` follow-ups submitted at a time.

    Follow-ups go first on a worker (they are short, and the main jobs keep
    the device fed meanwhile); main slots that no main job is ready for take
    follow-ups too. Slots count Dask tasks: while more follow-ups are ready
    than their free slots, up to ``JOBS_TOGETHER`` of them go as one task, run
    one after the other (each task costs the driver a round trip through the
    scheduler: benchmarks/driver_cpu_per_job.py). A main job always goes
    alone (a task's results come back together, and the contacts, merge and
    relabel behind a block would wait for the last block of its task), to the
    worker holding the fewest of the run's main jobs
    (:class:`pipeline.schedule.WorkerSlots`). A job that raises is
    sent again, with the jobs after it in its task, up to ``retries`` times
    (jobs are idempotent); if it still fails, the others are cancelled and
    BlockFailedError names it.
    """
    by_key: dict[str, list[Job]] = {}
    placed: dict[str, str | None] = {}  # main jobs' tasks: the worker each was placed on
    slots = WorkerSlots(lambda: client.scheduler_info(n_workers=-1)["workers"])
    attempts: Counter[JobName] = Counter()
    again: set[JobName] = set()  # jobs sent again: their tasks' keys get a count
    resent = itertools.count(1)
    sent = {False: 0, True: 0}  # Dask tasks in flight, of one job or several
    limits = {False: in_flight, True: follow_ups_in_flight}
    window: as_completed = as_completed(loop=client.loop)

    def free_slots(follow_up: bool) -> int:
        """Main slots no main job is ready for go to follow-ups (a run's tail: relabel, pyramids)."""
        borrowed = max(0, sent[True] - limits[True])
        main = limits[False] - sent[False] - borrowed
        if not follow_up:
            return main
        spare = 0 if graph.ready(False) else max(0, main)
        return max(0, limits[True] - sent[True]) + spare

    def take(follow_up: bool) -> list[Job]:
        first = graph.take(follow_up)
        if first is None:
            return []
        taken = [first]
        if not follow_up:  # a task's results come back together: follow-ups would wait for the last
            return taken
        together = min(JOBS_TOGETHER, -(-(graph.ready(follow_up) + 1) // free_slots(follow_up)))
        while len(taken) < together and (job := graph.take(follow_up)) is not None:
            taken.append(job)
        return taken

    def send_ready() -> None:
        for follow_up in (True, False):
            while free_slots(follow_up) > 0:
                jobs = take(follow_up)
                if not jobs:
                    break
                name = key(jobs[0]) if len(jobs) == 1 else f"{key(jobs[0])}+{len(jobs) - 1}"
                if jobs[0].name in again:  # a key of a task before, which the scheduler may still hold
                    name = f"{name}~{next(resent)}"
                by_key[name] = jobs
                sent[follow_up] += 1
                where = {}  # a follow-up goes wherever Dask sends it
                if not follow_up:
                    placed[name] = slots.take()
                    where = _placed_on(placed[name])
                window.add(
                    client.submit(
                        run_together,
                        tuple((job.function, job.task) for job in jobs),
                        key=name,
                        pure=False,
                        priority=1 + jobs[0].precedence if follow_up else 0,
                        **where,
                    )
                )

    send_ready()
    try:
        while not window.is_empty():
            # every task done by now, their results in one fetch: one each cost the driver a blocking
            # hand-over to the client's event loop per task (benchmarks/driver_job_rate.py)
            finished = window.next_batch(block=True)
            taken = [by_key.pop(future.key) for future in finished]
            for future, jobs in zip(finished, taken, strict=True):
                # its worker died with it too often, or its result would not pickle
                if future.status == "error":
                    try:
                        future.result()
                    except Exception as error:
                        raise _failed(jobs[0], error, describe, retries, len(jobs) - 1) from error
            try:
                results = client.gather(finished)
            except SCHEDULER_LOST:
                raise
            except Exception as error:  # a result lost with its worker, and its recomputation failed
                lost = next(
                    (
                        jobs
                        for jobs, future in zip(taken, finished, strict=True)
                        if future.status != "finished"
                    ),
                    taken[0],
                )
                raise _failed(lost[0], error, describe, retries) from error
            for future, jobs, (job_results, failure) in zip(finished, taken, results, strict=True):
                sent[jobs[0].follow_up] -= 1
                if not jobs[0].follow_up:
                    slots.give_back(placed.pop(future.key))
                future.release()
                for job, result in zip(jobs[: len(job_results)], job_results, strict=True):
                    graph.finish(job)
                    on_result(job, result)
                if failure is not None:
                    failed = jobs[len(job_results)]
                    attempts[failed.name] += 1
                    if attempts[failed.name] > retries:
                        raise _failed(failed, failure, describe, retries) from failure
                    log.warning(
                        "%s failed (attempt %d of %d), sent again: %s: %s",
                        describe(failed),
                        attempts[failed.name],
                        retries + 1,
                        type(failure).__name__,
                        failure,
                    )
                    again.update(job.name for job in jobs[len(job_results) :])
                    graph.again(jobs[len(job_results) :])
            send_ready()
    finally:
        leftover = list(window.futures)
        if leftover:
            client.cancel(leftover)
    if graph.unfinished:
        raise PipelineError(f"internal: {graph.unfinished} block tasks wait for tasks that never ran")


def _placed_on(worker: str | None) -> dict[str, Any]:
    """``client.submit``'s arguments for a task placed on ``worker``: there while it is alive, elsewhere
    if it leaves (and open to Dask's work stealing), unplaced where no worker is known."""
    return {"workers": [worker], "allow_other_workers": True} if worker else {}


def run_together(calls: tuple[tuple[Callable[[Any], Any], Any], ...]) -> tuple[list[Any], Exception | None]:
    """The block tasks of a Dask task's jobs (one or several), one after the other, until one raises:
    the results so far and that error (the driver sends its job again, and those after it)."""
    results = []
    for function, task in calls:
        try:
            results.append(function(task))
        except Exception as error:  # noqa: BLE001 - handed to the driver, which retries or fails the run
            return results, error if _pickles(error) else RuntimeError(f"{type(error).__name__}: {error}")
    return results, None


def _pickles(error: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return False
    return True


def _failed(
    job: Job, error: Exception, describe: Callable[[Job], str], retries: int, others: int = 0
) -> PipelineError:
    """``others``: jobs in the same Dask task, any of which may have been the one that failed."""
    kind = BadInputBlockError if isinstance(error, InputDataError) else BlockFailedError
    which = f"{describe(job)} (or one of the {others} jobs sent with it)" if others else describe(job)
    attempts = f"after {retries + 1} attempt(s)" if not others else "in its Dask task"
    return kind(f"{which} failed {attempts}: {type(error).__name__}: {error}")


def location_exists(location: str) -> bool:
    """Whether this process sees ``location``: a local path, or a URL with this process's credentials."""
    if not is_url(location):
        return os.path.exists(location)
    fs, path = fsspec.core.url_to_fs(location)
    fs.invalidate_cache(path)  # a long-lived worker may have listed the bucket before
    try:
        return bool(fs.exists(path))
    except (OSError, PermissionError, ValueError) as error:
        log.warning("%s cannot be checked from this worker: %s", location, error)
        return False


def check_workers_see(client: Client, locations: list[str]) -> None:
    """InputError naming the workers (and hosts) that cannot see these paths or URLs (the input, the output)."""
    for location in locations:
        seen = client.run(location_exists, location, on_error="ignore")  # none from a worker gone meanwhile
        blind = sorted(address for address, exists in seen.items() if not exists)
        if blind:
            fix = (
                "give every worker the same credentials and endpoint (the standard AWS variables or profile)"
                if is_url(location)
                else "mount it at the same path on every node"
            )
            raise InputError(
                f"{location} is not visible to {len(blind)} of {len(seen)} Dask workers "
                f"({', '.join(blind[:4])}): {fix}"
            )


CHECK_PRIORITY = 100  # a run's checks on the workers, before the blocks (priority 0) and follow-ups (1)
LEFT_WORKER_CHECK_SECONDS = 1.0  # how often on_each_worker looks for workers that left


def on_each_worker(client: Client, function: Callable[[], T]) -> dict[str, T]:
    """``function()`` on every worker as a task (in its thread pool, not its event loop), by address.

    Ahead of every block queued there (a run setting up beside another's blocks waits for a free
    thread, not for the queue). A worker that leaves first (killed, its nanny starting another) is
    left out with a warning: its task, bound to it, would wait for it until the scheduler gave up
    and failed the run (found by benchmarks/soak.py)."""
    futures = {
        address: client.submit(
            function, workers=[address], allow_other_workers=False, pure=False, priority=CHECK_PRIORITY
        )
        for address in client.scheduler_info(n_workers=-1)["workers"]
    }
    results: dict[str, T] = {}
    try:
        waiting = dict(futures)
        while waiting:
            with suppress(TimeoutError):  # none done yet: see who is still there
                wait(list(waiting.values()), timeout=LEFT_WORKER_CHECK_SECONDS, return_when="FIRST_COMPLETED")
            present = set(client.scheduler_info(n_workers=-1)["workers"])
            for address, future in list(waiting.items()):
                if future.done() and (future.status == "finished" or address in present):
                    results[address] = future.result()  # an error of a worker still there is raised
                elif address not in present:
                    log.warning(
                        "Dask worker %s left before it ran %s: left out", address, key_split(future.key)
                    )
                else:
                    continue
                del waiting[address]
        return results
    finally:
        # forgotten by the scheduler before this returns: a worker holding a result it still
        # counts could not be retired (nowhere to move the result to)
        client.cancel(list(futures.values()))


def check_workers_have_gpus(client: Client) -> None:
    """InputError naming the workers that see no CUDA device, for a run whose profile asks for one.

    Starts CUDA on each worker that has not yet: quick on a cluster that did (open_client)."""
    counts = on_each_worker(client, partial(prepare_worker, "cuda"))
    without = sorted(address for address, count in counts.items() if count == 0)
    if without:
        raise InputError(
            f"--device cuda (profile.device), but {len(without)} of {len(counts)} Dask workers see no "
            f"CUDA device ({', '.join(without[:4])}): start the workers on GPU nodes with a CUDA build "
            "of torch (`dask cuda worker ADDRESS`, or --cluster cuda on one machine), or run with --device cpu"
        )
    crowded = [count for count in counts.values() if count > 1]
    if crowded:  # each uses its first (cuda:0): the node's other GPUs would idle
        log.warning(
            "%d of %d Dask workers see %d GPUs each and use only the first: on a node of several GPUs use "
            "--cluster cuda (with --workers-per-gpu K for several workers on each)",
            len(crowded),
            len(counts),
            max(crowded),
        )


def cluster_shape(client: Client) -> dict[str, Any]:
    """Workers, threads and memory of the cluster, for the run record."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    under_mps = client.run(lambda: bool(os.environ.get(MPS_PIPE)), on_error="ignore")
    return {
        "scheduler": client.scheduler.address if client.scheduler else None,
        "workers": len(workers),
        "threads_per_worker": sorted({w["nthreads"] for w in workers.values()}),
        "memory_limit_bytes": sorted({w.get("memory_limit") or 0 for w in workers.values()}),
        "hosts": sorted({w["host"] for w in workers.values()}),
        "workers_under_mps": sum(value is True for value in under_mps.values()),
    }


def _peak_rss_bytes() -> int:
    """This process's peak resident memory since it started.

    Linux's VmHWM belongs to the process image, so it restarts at exec;
    getrusage's ru_maxrss would carry the parent's peak into a spawned worker.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux, where /proc exists


def worker_cpu_seconds(client: Client) -> dict[str, float]:
    """CPU seconds the workers' live threads have used so far, summed over workers per role
    (:mod:`pipeline.cpu_time`)."""
    return {**dict.fromkeys(ROLES, 0.0), **_summed_over_workers(client, cpu_seconds_by_role)}


def worker_system_seconds(client: Client) -> dict[str, float]:
    """Of :func:`worker_cpu_seconds`, the kernel's part (page faults, file IO), summed over workers per role."""
    return {**dict.fromkeys(ROLES, 0.0), **_summed_over_workers(client, system_seconds_by_role)}


def worker_other_threads_cpu_seconds(client: Client) -> dict[str, float]:
    """CPU seconds of the workers' threads of no known role, summed over workers by thread name."""
    return _summed_over_workers(client, other_threads_cpu_seconds)


def _summed_over_workers(client: Client, reading: Callable[[], dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for seconds in client.run(reading, on_error="ignore").values():
        for name, value in seconds.items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def worker_peak_rss(client: Client) -> dict[str, int]:
    """Peak resident memory of each worker process over its lifetime."""
    return dict(client.run(_peak_rss_bytes, on_error="ignore"))  # of the workers still there
