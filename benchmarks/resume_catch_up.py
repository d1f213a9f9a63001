"""The driver's time before a resumed run sends its first block, where an earlier attempt finished
most of the volume: the label merge catches up from the finished blocks' markers.

Writes the markers an attempt stopped in the last slab leaves (label summary and contacts of every
block before it, nuclei-sized: 1,000 labels and 300 contact pairs a block; relabel done), then does
what the resumed run's driver does before its first block: the jobs, the job graph with those
markers, the label stream, and the stream's first call. Then it calls the stream as each result
would until the merge has caught up, and reports the driver's time per call. The input is empty (its
chunks unwritten: no block runs). From the repository root:

    .venv/bin/python benchmarks/resume_catch_up.py --slabs 40     # 40 x 16384², 4,840 blocks

Writes the figures as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from empty_input import empty_input_request

from pipeline.markers import done_blocks, write_marker
from pipeline.normalization import NormalizationStats
from pipeline.omezarr import create_output
from pipeline.plan import RunPlan, plan_run
from pipeline.run_labels import label_merge
from pipeline.schedule import JobGraph
from pipeline.stage_jobs import contact_jobs, predict_jobs, pyramid_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slabs", type=int, default=40, help="planes of the input (a slab of blocks each)")
    parser.add_argument("--plane", type=int, default=16384, help="Y and X of the input")
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="resume-catch-up-") as folder:
        shape = (args.slabs, args.plane, args.plane)
        request = empty_input_request(Path(folder), shape)
        config = request.config
        plan = plan_run(request)
        create_output(plan.output_url, plan.layout, label_blocks=plan.grid.block_edges)
        per_slab = len(plan.blocks) // plan.grid.shape[0]
        finished = len(plan.blocks) - per_slab
        started = time.perf_counter()
        write_finished_markers(plan, finished, per_slab, args.labels, args.pairs)
        print(f"markers of {finished} blocks written in {time.perf_counter() - started:.1f} s", flush=True)

        started = time.perf_counter()
        jobs = [
            *predict_jobs(plan, config.profile, (NormalizationStats(0.0, 1.0),)),
            *contact_jobs(plan, "predict"),
            *pyramid_jobs(plan, "", "mean", "predict"),
        ]
        graph = JobGraph(
            jobs, {(stage, block) for stage in ("predict", "contacts") for block in range(finished)}
        )
        stream = label_merge(plan, "predict", {"stages": {}})
        set_up = time.perf_counter() - started
        calls = []
        while stream.merge.next_slab < plan.grid.shape[0] - 1:
            started = time.perf_counter()
            made = stream.more(graph, {})
            calls.append((time.perf_counter() - started, len(made)))
            graph.add(made, {(job.stage, job.block_id) for job in made if job.block_id in stream.relabelled})
    report: dict[str, Any] = {
        "shape": list(shape),
        "blocks": len(plan.blocks),
        "blocks_finished_before": finished,
        "labels_per_block": args.labels,
        "pairs_per_block": args.pairs,
        "set_up_seconds": round(set_up, 2),
        "first_call_seconds": round(calls[0][0], 3),
        "before_the_first_block_seconds": round(set_up + calls[0][0], 2),
        "calls_to_catch_up": len(calls),
        "longest_later_call_seconds": round(max((c for c, _ in calls[1:]), default=0.0), 3),
        "catch_up_seconds": round(sum(c for c, _ in calls), 2),
    }
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def write_finished_markers(plan: RunPlan, finished: int, per_slab: int, labels: int, pairs: int) -> None:
    """Label summary, contacts and relabel markers of blocks 0 .. finished - 1: random labels in
    each block's planes, contacts half to the block below (the slab before), half to the next block
    of the slab."""
    rng = np.random.default_rng(0)
    volume = plan.grid.volume_shape
    plane_voxels = volume[1] * volume[2]
    for block in range(finished):
        z = block // per_slab
        summary = {
            "count": np.array([labels]),
            "first_voxel": np.sort(rng.integers(z * plane_voxels, (z + 1) * plane_voxels, labels)),
            "sizes": rng.integers(20, 5000, labels),
        }
        write_marker(plan.output_url, "predict", block, summary)
        pair_rows = []
        if z > 0:
            below = block - per_slab
            pair_rows.append(_pairs(rng, below, block, labels, pairs // 2))
        if (block + 1) % per_slab:
            pair_rows.append(_pairs(rng, block, block + 1, labels, pairs // 2))
        contacts = np.concatenate([np.empty((0, 4), np.int64), *pair_rows])
        write_marker(plan.output_url, "contacts", block, {"pairs": contacts})
        write_marker(plan.output_url, "relabel", block)
    assert len(done_blocks(plan.output_url, "relabel")) == finished


def _pairs(rng: np.random.Generator, low: int, high: int, labels: int, count: int) -> np.ndarray:
    return np.stack(
        [
            np.full(count, low),
            rng.integers(1, labels + 1, count),
            np.full(count, high),
            rng.integers(1, labels + 1, count),
        ],
        axis=1,
    ).astype(np.int64)


if __name__ == "__main__":
    main()
