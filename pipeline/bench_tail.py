"""What the workers did after the last block was predicted: the end-to-end run's tail, stage by stage.

From Dask's task stream (each task's worker and its compute's start and stop, wall clock on the
workers' host): for every stage with a task still computing after the last predict task stopped,
how many such tasks, when the first of them started and the last stopped (seconds after that stop;
negative: before it), and their longest compute. A stage whose first start is late waited for
something (the driver, a free slot, the tasks it needs); one whose tasks are long is slow itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

# a run's Dask keys: "<stage, dashed>-<block>-<run id>", "+N" when N more jobs share the task, "~k" when sent again
KEY = re.compile(r"^(?P<stage>.+)-\d+-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def stage_of(key: object) -> str | None:
    """The stage of a run's task key (dashed: "pyramid-s1"), or None for a task of something else."""
    found = KEY.match(str(key))
    return found["stage"] if found else None


class Compute(NamedTuple):
    """One compute of a run's task: its stage, key, worker and thread, start and stop (host clock)."""

    stage: str
    key: str
    worker: str
    thread: int
    start: float
    stop: float


def computes(task_stream: Iterable[dict[str, Any]]) -> list[Compute]:
    """Every compute of a run's tasks in the stream (other tasks left out), by start."""
    found = []
    for task in task_stream:
        stage = stage_of(task.get("key"))
        if stage is None:
            continue
        for step in task.get("startstops", ()):
            if step.get("action") == "compute":
                found.append(
                    Compute(
                        stage,
                        str(task.get("key")),
                        str(task.get("worker")),
                        int(task.get("thread") or 0),
                        float(step["start"]),
                        float(step["stop"]),
                    )
                )
    return sorted(found, key=lambda compute: compute.start)


def tail_by_stage(task_stream: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage, its tasks still computing after the last predict stopped (see the module's doc)."""
    found = computes(task_stream)
    predicted = [compute.stop for compute in found if compute.stage == "predict"]
    if not predicted:
        return {}
    last = max(predicted)
    tail: dict[str, dict[str, float]] = {}
    for stage, _, _, _, start, stop in found:
        if stop <= last or stage == "predict":
            continue
        figures = tail.setdefault(stage, {"tasks": 0, "first_start": start - last, "last_stop": stop - last})
        figures["tasks"] += 1
        figures["last_stop"] = max(figures["last_stop"], stop - last)
        figures["longest"] = max(figures.get("longest", 0.0), stop - start)
    return {
        stage: {name: round(value, 3) if name != "tasks" else value for name, value in figures.items()}
        for stage, figures in sorted(tail.items(), key=lambda item: item[1]["last_stop"])
    }
