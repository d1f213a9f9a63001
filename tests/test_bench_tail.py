"""The end-to-end bench's tail: which stages still ran after the last block was predicted, read from
Dask's task stream."""

from __future__ import annotations

from typing import Any

from pipeline.bench_tail import stage_of, tail_by_stage

RUN = "7ec25d5f-5da9-48e9-bb36-a1e2e86a0dcb"


def task(key: str, start: float, stop: float, worker: str = "tcp://127.0.0.1:1") -> dict[str, Any]:
    steps = (
        {"action": "transfer", "start": start - 1, "stop": start},
        {"action": "compute", "start": start, "stop": stop},
    )
    return {"key": key, "worker": worker, "startstops": steps}


def test_a_run_key_names_its_stage_and_other_keys_none() -> None:
    assert stage_of(f"predict-12-{RUN}") == "predict"
    assert stage_of(f"pyramid-labels-cells-s1-3-{RUN}+2~1") == "pyramid-labels-cells-s1"
    assert stage_of("check-gpu-1234") is None and stage_of(("x", 1)) is None


def test_stages_still_running_after_the_last_predict_with_their_first_start_and_last_stop() -> None:
    stream = [
        task(f"predict-0-{RUN}", 100.0, 101.0),
        task(f"predict-1-{RUN}", 101.0, 110.0),  # the last block: its stop is 0
        task(f"contacts-0-{RUN}", 109.0, 109.5),  # done before: not in the tail
        task(f"contacts-1-{RUN}", 110.5, 110.75),
        task(f"relabel-0-{RUN}+1", 111.0, 112.0),
        task(f"pyramid-s1-0-{RUN}", 109.5, 110.25),  # started before, stopped after
        task(f"pyramid-s1-1-{RUN}", 110.25, 111.5),
        task("check-gpu-1", 120.0, 121.0),
    ]
    assert tail_by_stage(stream) == {
        "contacts": {"tasks": 1, "first_start": 0.5, "last_stop": 0.75, "longest": 0.25},
        "pyramid-s1": {"tasks": 2, "first_start": -0.5, "last_stop": 1.5, "longest": 1.25},
        "relabel": {"tasks": 1, "first_start": 1.0, "last_stop": 2.0, "longest": 1.0},
    }
    assert tail_by_stage(stream[2:]) == {}  # no predict task recorded
