"""A run's jobs start only after the jobs that write what they read; finished ones are never rerun."""

from __future__ import annotations

from pipeline.geometry import BlockGrid
from pipeline.schedule import Job, JobGraph


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
