"""A run's jobs start only after the jobs that write what they read; finished ones are never rerun."""

from __future__ import annotations

from pipeline.geometry import BlockGrid
from pipeline.schedule import Job, JobGraph, WorkerSlots


def job(stage: str, block_id: int, *needs: tuple[str, int], follow_up: bool = False) -> Job:
    return Job(stage, block_id, abs, block_id, needs=needs, follow_up=follow_up)


def drain(graph: JobGraph, follow_up: bool) -> list[tuple[str, int]]:
    taken = []
    while (ready := graph.take(follow_up)) is not None:
        taken.append(ready.name)
    return taken


def test_a_job_is_released_when_its_last_need_finishes() -> None:
    predicts = [job("predict", b) for b in range(3)]
    contact = job("contacts", 0, ("predict", 0), ("predict", 2), follow_up=True)
    graph = JobGraph([*predicts, contact])
    assert drain(graph, follow_up=True) == []
    assert drain(graph, follow_up=False) == [("predict", 0), ("predict", 1), ("predict", 2)]
    graph.finish(predicts[0])
    graph.finish(predicts[1])
    assert graph.take(follow_up=True) is None
    graph.finish(predicts[2])
    assert drain(graph, follow_up=True) == [("contacts", 0)]
    graph.finish(contact)
    assert graph.unfinished == 0


def test_jobs_done_before_never_run_and_count_as_finished() -> None:
    jobs = [job("predict", 0), job("predict", 1), job("pyramid s1", 0, ("predict", 0), ("predict", 1))]
    graph = JobGraph(jobs, done={("predict", 0), ("pyramid s1", 0)})
    assert graph.unfinished == 1
    assert drain(graph, follow_up=False) == [("predict", 1)]
    assert drain(graph, follow_up=True) == []  # done: not released again
    assert (graph.stages["predict"].blocks, graph.stages["predict"].computed) == (2, 1)
    assert graph.stages["pyramid s1"].computed == 0


def test_needs_outside_the_graph_belong_to_a_finished_phase() -> None:
    graph = JobGraph([job("relabel", 0, ("predict", 0))])
    assert drain(graph, follow_up=False) == [("relabel", 0)]


def test_jobs_that_join_later_wait_only_for_unfinished_needs() -> None:
    """The relabel joins once labels and contacts are in, while the pyramid still runs."""
    predicts = [job("predict", b) for b in range(2)]
    pyramid = job("pyramid s1", 0, ("predict", 0), ("predict", 1), follow_up=True)
    graph = JobGraph([*predicts, pyramid])
    drain(graph, follow_up=False)
    assert not graph.finished("predict") and graph.finished("relabel")  # a stage with no jobs
    for predict in predicts:
        graph.finish(predict)
    assert graph.finished("predict") and not graph.finished("pyramid s1")
    relabels = [job("relabel", b, ("predict", b)) for b in range(2)]
    level = job("pyramid labels/s1", 0, ("relabel", 0), ("relabel", 1), follow_up=True)
    graph.add([*relabels, level], done={("relabel", 1)})
    assert graph.unfinished == 3  # the probability pyramid, relabel 0, the label level
    assert drain(graph, follow_up=False) == [("relabel", 0)]  # its predict finished before it joined
    assert drain(graph, follow_up=True) == [("pyramid s1", 0)]
    graph.finish(relabels[0])
    assert drain(graph, follow_up=True) == [("pyramid labels/s1", 0)]
    assert (graph.stages["relabel"].blocks, graph.stages["relabel"].computed) == (2, 1)


def test_ready_follow_ups_of_higher_precedence_go_first_and_a_job_sent_again_leads_its_own() -> None:
    """After the last block, its contacts (then relabel) go before the pyramid shards ready
    with them: they end the run."""
    predict = job("predict", 0)
    pyramids = [
        Job(f"pyramid s{level}", 0, abs, 0, needs=(("predict", 0),), follow_up=True) for level in (1, 2)
    ]
    contacts = Job("contacts", 0, abs, 0, needs=(("predict", 0),), follow_up=True, precedence=2)
    relabels = [Job("relabel", b, abs, b, follow_up=True, precedence=1) for b in range(2)]
    graph = JobGraph([predict, *pyramids, contacts])
    assert drain(graph, follow_up=False) == [("predict", 0)]
    graph.finish(predict)
    graph.add(relabels, set())
    assert drain(graph, follow_up=True) == [
        ("contacts", 0),
        ("relabel", 0),
        ("relabel", 1),
        ("pyramid s1", 0),
        ("pyramid s2", 0),
    ]
    graph.again([pyramids[1]])
    graph.again([relabels[1]])
    graph.add([Job("relabel", 2, abs, 2, follow_up=True, precedence=1)], set())
    assert drain(graph, follow_up=True) == [("relabel", 1), ("relabel", 2), ("pyramid s2", 0)]


def test_block_ids_in_a_box_are_the_blocks_it_touches() -> None:
    grid = BlockGrid((4, 100, 100), 10, (2, 3), block_planes=2)  # blocks 2 x 20 x 30 voxels
    assert grid.shape == (2, 5, 4)
    for start, stop in [((0, 0, 0), (1, 1, 1)), ((1, 19, 29), (3, 21, 31)), ((0, 0, 0), (4, 100, 100))]:
        expected = sorted(
            {
                int(grid.block_id_at(z, y, x))
                for z in range(start[0], stop[0])
                for y in range(start[1], stop[1])
                for x in range(start[2], stop[2])
            }
        )
        assert grid.block_ids_in(start, stop) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_next_main_job_goes_to_the_worker_with_the_fewest_in_flight() -> None:
    slots = WorkerSlots(lambda: ["tcp://a", "tcp://b"])
    assert [slots.take() for _ in range(4)] == ["tcp://a", "tcp://b", "tcp://a", "tcp://b"]
    slots.give_back("tcp://b")  # b's block finished first: the next one goes there
    assert slots.take() == "tcp://b"
    slots.give_back("tcp://a")
    slots.give_back("tcp://a")
    assert [slots.take(), slots.take(), slots.take()] == ["tcp://a", "tcp://a", "tcp://a"]
    assert slots.in_flight("tcp://a") == 3 and slots.in_flight("tcp://b") == 2
    slots.give_back(None)  # a job placed nowhere (no worker was known)


def test_workers_that_join_take_blocks_and_workers_that_left_get_none() -> None:
    live, clock = ["tcp://a", "tcp://b"], Clock()
    asked: list[float] = []

    def workers() -> list[str]:
        asked.append(clock.now)
        return list(live)

    slots = WorkerSlots(workers, refresh_seconds=2.0, clock=clock)
    assert [slots.take() for _ in range(4)] == ["tcp://a", "tcp://b"] * 2
    live[:] = ["tcp://b", "tcp://c"]  # a left, c joined: seen at the next refresh
    clock.now = 1.9
    assert slots.take() == "tcp://a" and asked == [0.0]
    clock.now = 2.0
    # b holds 2, c none: c takes two, then the first listed among equals
    assert [slots.take() for _ in range(3)] == ["tcp://c", "tcp://c", "tcp://b"] and asked == [0.0, 2.0]
    assert slots.take() == "tcp://c" and slots.in_flight("tcp://a") == 3  # a's blocks are still out


def test_while_no_worker_is_known_jobs_are_placed_nowhere_and_workers_are_asked_again() -> None:
    live: list[str] = []
    slots = WorkerSlots(lambda: live, refresh_seconds=60.0, clock=Clock())
    assert slots.take() is None
    live.append("tcp://a")
    assert slots.take() == "tcp://a"
