"""Which block tasks of a run may start now: each waits for the tasks that write what it reads.

A run streams its stages: a block's contacts start once the blocks its face
slabs touch are labelled, a pyramid shard once the shards (or blocks) it
downsamples are written, so the later stages work while the network still
runs instead of after it. Pure bookkeeping; the Dask wiring is in
:mod:`pipeline.cluster`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

JobName = tuple[str, int]  # (stage, block id)


@dataclass(frozen=True, slots=True)
class Job:
    stage: str
    block_id: int
    function: Callable[[Any], Any]
    task: Any
    needs: tuple[JobName, ...] = ()  # jobs that write what this one reads
    follow_up: bool = False  # short work behind the main stage (contacts, pyramids): sent first
    # among ready jobs of its kind, higher goes first: after the last block, the chain that
    # ends the run (contacts, the label merge, relabel) should not queue behind pyramid shards
    precedence: int = 0

    @property
    def name(self) -> JobName:
        return self.stage, self.block_id


@dataclass
class StageTimes:
    blocks: int = 0
    computed: int = 0
    finished: int = 0  # of the computed ones
    first_sent: float | None = None
    last_done: float | None = None


@dataclass
class JobGraph:
    """The jobs of one phase of a run, released in the order given as what they need gets done.

    ``done``: jobs finished before (the markers of an interrupted run); they never run and count as
    finished. A need outside the graph belongs to an earlier phase, which is complete. Jobs may
    join later (:meth:`add`), e.g. once the stages they wait for are finished.
    """

    jobs: Iterable[Job]
    done: set[JobName] = field(default_factory=set)
    stages: dict[str, StageTimes] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._names: set[JobName] = set()
        self._finished: set[JobName] = set(self.done)
        self._unmet: dict[JobName, int] = {}
        self._dependants: dict[JobName, list[Job]] = {}
        self._ready: dict[bool, list[tuple[int, int, Job]]] = {False: [], True: []}  # heaps
        self._order = itertools.count()  # first ready, first taken, within a precedence
        self._again = itertools.count(-1, -1)  # ahead of all of it
        self.unfinished = 0
        self.add(self.jobs, set())

    def add(self, jobs: Iterable[Job], done: set[JobName]) -> None:
        """More jobs, ``done`` among them (markers); their needs may be jobs of the graph already."""
        listed = list(jobs)
        self._finished |= done
        self._names |= {job.name for job in listed}
        for job in listed:
            times = self.stages.setdefault(job.stage, StageTimes())
            times.blocks += 1
            if job.name in self._finished:
                continue
            times.computed += 1
            self.unfinished += 1
            unmet = {need for need in job.needs if need in self._names and need not in self._finished}
            for need in unmet:
                self._dependants.setdefault(need, []).append(job)
            if unmet:
                self._unmet[job.name] = len(unmet)
            else:
                self._make_ready(job, next(self._order))

    def finished(self, stage: str) -> bool:
        """Whether every job of ``stage`` is done (true of a stage with none)."""
        times = self.stages.get(stage)
        return times is None or times.finished == times.computed

    def job_finished(self, name: JobName) -> bool:
        """Whether that job is done (now, or by an earlier attempt)."""
        return name in self._finished

    def ready(self, follow_up: bool) -> int:
        """How many jobs of that kind could be taken now."""
        return len(self._ready[follow_up])

    def take(self, follow_up: bool) -> Job | None:
        """A job whose needs are met (a follow-up or a main one), or None if none is ready now."""
        queue = self._ready[follow_up]
        if not queue:
            return None
        job = heapq.heappop(queue)[2]
        times = self.stages[job.stage]
        if times.first_sent is None:
            times.first_sent = time.perf_counter()
        return job

    def again(self, jobs: list[Job]) -> None:
        """Jobs taken but not done (one failed, those after it in its task not run), first in line
        again among the jobs of their precedence."""
        for job in reversed(jobs):
            self._make_ready(job, next(self._again))

    def finish(self, job: Job) -> None:
        self.unfinished -= 1
        self._finished.add(job.name)
        times = self.stages[job.stage]
        times.finished += 1
        times.last_done = time.perf_counter()
        for dependant in self._dependants.pop(job.name, []):
            self._unmet[dependant.name] -= 1
            if not self._unmet[dependant.name]:
                del self._unmet[dependant.name]
                self._make_ready(dependant, next(self._order))

    def _make_ready(self, job: Job, order: int) -> None:
        heapq.heappush(self._ready[job.follow_up], (-job.precedence, order, job))


class WorkerSlots:
    """Which worker a run's next main job (a block's predict) goes to: the live worker with the fewest
    of the run's main jobs in flight, the first listed among equals.

    A worker's blocks share its one device batcher, so each worker's count is what has to be even.
    Left to Dask (a task without inputs goes where its estimate of the queues is shortest, and
    work stealing moves such tasks again), one of 2 workers got 9 of a run's 16 blocks and the
    other 7 in 8 of 40 runs on a 2-core CPU, whose second core then had no block to predict for
    the last block's time: 75-80 % of the model-only rate against 81-87 % (docs/benchmarks.md).
    Placed here (and not stolen: the schedulers a run starts do not steal), every worker holds the
    same count while blocks wait, and the last ones go where a block finished first.

    ``live``: the workers' addresses now (asked again after ``refresh_seconds``, and whenever none
    is known): a worker that joins takes blocks from then on, one that left gets none.
    """

    def __init__(
        self,
        live: Callable[[], Iterable[str]],
        refresh_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._live, self._refresh_seconds, self._clock = live, refresh_seconds, clock
        self._workers: list[str] = []
        self._asked = -float("inf")
        self._in_flight: dict[str, int] = {}

    def take(self) -> str | None:
        """The worker for the next main job, counted in flight there; None while no worker is known."""
        if not self._workers or self._clock() - self._asked >= self._refresh_seconds:
            self._workers = list(self._live())
            self._asked = self._clock()
        if not self._workers:
            return None
        worker = min(self._workers, key=lambda address: self._in_flight.get(address, 0))
        self._in_flight[worker] = self._in_flight.get(worker, 0) + 1
        return worker

    def give_back(self, worker: str | None) -> None:
        """A main job placed on ``worker`` is done (wherever it ran)."""
        if worker is None:
            return
        self._in_flight[worker] -= 1
        if not self._in_flight[worker]:
            del self._in_flight[worker]

    def in_flight(self, worker: str) -> int:
        return self._in_flight.get(worker, 0)
