"""The bench's default run, several times on one warm cluster: where its CPU time goes, run by run.

`unet-pipeline bench` runs `segment` once and holds it against the model's
rate; to compare two versions of the host work, this runs the same
`segment` (the bench's volume, model and profile: 4 x 3104², bf16
channels_last eager batch 1, 2 workers of 2 tasks, blocks of 4 x 4 tiles
and one plane) ``--runs`` times on one cluster and prints, for each run,
the wall time, the time before the first block and after the last, and
the CPU seconds by role (workers per :mod:`pipeline.cpu_time`, the driver's
whole process, all its threads). From the repository root:

    .venv/bin/python benchmarks/warm_runs.py --runs 3
    git worktree add /tmp/before <commit>        # the same with another version's pipeline package:
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/warm_runs.py --runs 3

Alternate the two a few times: a shared machine's speed drifts within minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.bench import bench_model, cluster_overrides, write_bench_volume
from pipeline.bench_model import BenchSettings
from pipeline.checkpoint import save_checkpoint
from pipeline.cluster import open_client, worker_cpu_seconds
from pipeline.config import load_config
from pipeline.normalization import Normalization
from pipeline.plan import SegmentRequest
from pipeline.run import segment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shape", default="4x3104x3104", help="ZYX of the volume")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    settings = BenchSettings()
    config = load_config(
        overrides={
            **cluster_overrides(settings.e2e_workers, settings.e2e_tasks_per_worker),
            "profile.device": "cpu",
            "profile.dtype": "bfloat16",
            "profile.channels_last": True,
            "profile.batch_size": 1,
            "profile.threads": max(1, settings.threads // settings.e2e_workers),
            "tiling.block_tiles": [settings.e2e_block_tiles] * 2,
            "tiling.shard_tiles": min(4, settings.e2e_block_tiles),
            "tiling.block_planes": settings.e2e_block_planes,
        }
    )
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="warm-runs-") as folder:
        root = Path(folder)
        write_bench_volume(f"{root}/input.zarr", shape)  # type: ignore[arg-type]
        checkpoint = root / "bench.safetensors"
        save_checkpoint(
            checkpoint, bench_model(settings), normalization=Normalization("percentile", 1.0, 99.8)
        )
        with open_client(config.cluster, device="cpu") as client:
            for _ in range(args.runs):
                shutil.rmtree(root / "out.ome.zarr", ignore_errors=True)
                workers, driver = worker_cpu_seconds(client), time.process_time()
                record = segment(
                    SegmentRequest(
                        f"{root}/input.zarr",
                        str(root / "out.ome.zarr"),
                        checkpoint,
                        config,
                        show_progress=False,
                    ),
                    client,
                )
                used = {role: seconds - workers[role] for role, seconds in worker_cpu_seconds(client).items()}
                used["driver"] = time.process_time() - driver
                predict = record["stages"]["predict"]
                before = predict["started_after_seconds"] or 0.0
                run = {
                    "wall_seconds": record["wall_seconds"],
                    "before_first_block_seconds": round(before, 3),
                    "after_last_block_seconds": round(
                        record["wall_seconds"] - before - predict["wall_seconds"], 3
                    ),
                    "cpu_seconds": {role: round(seconds, 2) for role, seconds in used.items()},
                    "outside_the_network": round(sum(s for r, s in used.items() if r != "network"), 2),
                }
                runs.append(run)
                print(json.dumps(run))
    summary = {
        name: statistics.median(run[name] for run in runs)
        for name in ("wall_seconds", "after_last_block_seconds", "outside_the_network")
    }
    print("medians:", json.dumps(summary))
    if args.json:
        args.json.write_text(
            json.dumps({"shape": list(shape), "runs": runs, "medians": summary}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
