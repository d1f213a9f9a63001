"""The driver's set-up of a TB-scale run, before its first block: plan, jobs, job graph, label stream.

A run makes every block's jobs (predict, contacts, the probability
pyramid's shards) and the label stream's tables before it sends the first
block, with the devices idle. This times each step and the driver's memory
growth on an empty input of the given shape (its chunks unwritten: reading
is not part of it; the output's metadata is written to a temporary folder).
From the repository root:

    .venv/bin/python benchmarks/driver_scale.py --shape 2000x16384x16384     # 537 G voxels

Writes the figures as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
from empty_input import empty_input_request

from pipeline.normalization import NormalizationStats
from pipeline.omezarr import create_output
from pipeline.plan import plan_run
from pipeline.run_labels import label_merge
from pipeline.schedule import JobGraph
from pipeline.stage_jobs import contact_jobs, predict_jobs, pyramid_jobs

T = TypeVar("T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2000x16384x16384", help="ZYX of the input")
    parser.add_argument("--block-tiles", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    steps: dict[str, dict[str, float]] = {}
    process = psutil.Process()

    def step(name: str, make: Callable[[], T]) -> T:
        rss, started = process.memory_info().rss, time.perf_counter()
        made = make()
        steps[name] = {
            "seconds": round(time.perf_counter() - started, 2),
            "rss_growth_mib": round((process.memory_info().rss - rss) / 2**20, 1),
        }
        print(name, steps[name], flush=True)
        return made

    with tempfile.TemporaryDirectory(prefix="driver-scale-") as folder:
        request = empty_input_request(Path(folder), shape, {"tiling.block_tiles": [args.block_tiles] * 2})
        config = request.config
        plan = step("plan", lambda: plan_run(request))
        create_output(plan.output_url, plan.layout, label_blocks=plan.grid.block_edges)
        stats = (NormalizationStats(0.0, 1.0),)
        jobs = [
            *step("predict jobs", lambda: predict_jobs(plan, config.profile, stats)),
            *step("contact jobs", lambda: contact_jobs(plan, "predict")),
            *step("pyramid jobs", lambda: pyramid_jobs(plan, "", "mean", "predict")),
        ]
        step("job graph", lambda: JobGraph(jobs, set()))
        step("label stream", lambda: label_merge(plan, "predict", {"stages": {}}))
    report: dict[str, Any] = {
        "shape": list(shape),
        "blocks": len(plan.blocks),
        "jobs": len(jobs),
        "steps": steps,
        "seconds": round(sum(s["seconds"] for s in steps.values()), 2),
        "rss_growth_mib": round(sum(s["rss_growth_mib"] for s in steps.values()), 1),
    }
    print(json.dumps({key: report[key] for key in ("blocks", "jobs", "seconds", "rss_growth_mib")}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
