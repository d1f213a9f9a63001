"""The end-to-end run as a picture: every task on its worker thread, at its time, in its stage's colour."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

import pytest

from pipeline.bench_tail import computes
from pipeline.bench_timeline import LEFT, WIDTH, _tick_step, stage_colour, timeline_svg

RUN = "7ec25d5f-5da9-48e9-bb36-a1e2e86a0dcb"
SVG = "{http://www.w3.org/2000/svg}"
PLOT = WIDTH - LEFT - 20


def task(key: str, start: float, stop: float, worker: str, thread: int) -> dict[str, Any]:
    steps = (
        {"action": "transfer", "start": start - 1, "stop": start},
        {"action": "compute", "start": start, "stop": stop},
    )
    return {"key": key, "worker": worker, "thread": thread, "startstops": steps}


STREAM = [
    task(f"predict-0-{RUN}", 101.0, 103.0, "tcp://127.0.0.1:2", 7),
    task(f"predict-1-{RUN}", 101.5, 104.5, "tcp://127.0.0.1:1", 5),
    task(f"predict-2-{RUN}", 103.0, 108.0, "tcp://127.0.0.1:2", 9),
    task(f"contacts-0-{RUN}", 104.5, 105.0, "tcp://127.0.0.1:1", 5),
    task(f"relabel-0-{RUN}+1", 108.5, 109.0, "tcp://127.0.0.1:1", 6),
    task("check-gpu-1", 100.0, 110.0, "tcp://127.0.0.1:1", 6),  # not the run's: left out
]


def rects(svg: str, kind: str) -> list[ElementTree.Element]:
    return [rect for rect in ElementTree.fromstring(svg).iter(f"{SVG}rect") if rect.get("class") == kind]


def texts(svg: str) -> list[str]:
    return ["".join(text.itertext()) for text in ElementTree.fromstring(svg).iter(f"{SVG}text")]


def at(seconds: float) -> float:
    """Where a moment ``seconds`` after the run's call is drawn, in a 10-second run."""
    return LEFT + PLOT * seconds / 10


def test_each_task_is_drawn_on_its_worker_thread_at_its_time() -> None:
    svg = timeline_svg(computes(STREAM), 100.0, 110.0, "a <run> & its title")
    tasks = rects(svg, "task")
    assert [rect.get("data-stage") for rect in tasks] == [
        "predict",
        "predict",
        "predict",
        "contacts",
        "relabel",
    ]
    first, _, third, _, relabel = tasks
    assert float(first.get("x", "")) == pytest.approx(at(1.0), abs=0.01)
    assert float(first.get("width", "")) == pytest.approx(at(3.0) - at(1.0), abs=0.01)
    assert float(third.get("x", "")) == pytest.approx(at(3.0), abs=0.01)
    assert first.get("fill") == stage_colour("predict") != relabel.get("fill")
    # a row per worker thread: workers in address order, their threads numbered in each
    rows = {(rect.get("data-stage"), rect.get("y")) for rect in tasks}
    assert len({y for _, y in rows}) == 4
    assert texts(svg)[0] == "a <run> & its title"
    names = [text for text in texts(svg) if text.startswith("worker ")]
    assert names == ["worker 1, thread 1", "worker 1, thread 2", "worker 2, thread 1", "worker 2, thread 2"]
    assert tasks[1].get("y") == tasks[3].get("y")  # worker 1's thread 5: predict, then contacts


def test_the_time_without_a_predict_task_is_shaded_and_told() -> None:
    svg = timeline_svg(computes(STREAM), 100.0, 110.0, "run")
    before, after = rects(svg, "idle")
    assert float(before.get("x", "")) == pytest.approx(LEFT) and float(
        before.get("width", "")
    ) == pytest.approx(at(1.0) - LEFT, abs=0.01)
    assert float(after.get("x", "")) == pytest.approx(at(8.0), abs=0.01)
    assert float(after.get("width", "")) == pytest.approx(at(10.0) - at(8.0), abs=0.01)
    assert "no block predicted: 1.00 s before the first, 2.00 s after the last, of 10.00 s" in texts(svg)


def test_the_legend_counts_each_stages_tasks_and_seconds() -> None:
    legend = [text for text in texts(timeline_svg(computes(STREAM), 100.0, 110.0, "run")) if ": " in text]
    assert legend[-3:] == ["predict: 3 tasks, 10.00 s", "contacts: 1 task, 0.50 s", "relabel: 1 task, 0.50 s"]


def test_the_gpus_busy_time_gets_a_row_of_its_own() -> None:
    assert not rects(timeline_svg(computes(STREAM), 100.0, 110.0, "run"), "busy")
    busy = rects(timeline_svg(computes(STREAM), 100.0, 110.0, "run", [(105.0, 50.0), (110.0, 100.0)]), "busy")
    assert [float(rect.get("height", "")) for rect in busy] == [5.0, 10.0]  # of a 10-px bar
    assert float(busy[1].get("x", "")) == pytest.approx(at(5.0), abs=0.01)


@pytest.mark.parametrize(("span", "step"), [(0.5, 0.1), (1.3, 0.2), (8.3, 1.0), (15.0, 2.0), (100.0, 10.0)])
def test_the_time_axis_has_round_ticks(span: float, step: float) -> None:
    assert _tick_step(span) == pytest.approx(step)
