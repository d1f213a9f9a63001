"""The driver's CPU time per job in a real run: `segment` of many small blocks with a tiny network.

Two runs of a volume of nuclei, 800² planes, tiles of 100 px, one tile and one plane a block
(64 blocks a plane), a depth-3 U-Net of 2 channels, a local cluster of 2 workers: with ``--planes``
and twice that many. The driver process's CPU time (the client, the scheduler, the run's
bookkeeping, all in one interpreter) grows by the second run's extra jobs; the difference divided by
them is its CPU time per job, the fixed costs (planning, the cluster's start) cancelled out. From
the repository root:

    .venv/bin/python benchmarks/driver_cpu_per_job.py --planes 8

Writes the figures as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import zarr

from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.run import SegmentRequest, segment
from pipeline.synthetic import cell_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="driver-cpu-per-job-") as folder:
        root = Path(folder)
        torch.manual_seed(0)
        model = root / "tiny.safetensors"
        save_checkpoint(model, UNet(base_channels=2, depth=3), normalization=Normalization())
        for planes in (args.planes, 2 * args.planes):
            source = root / f"in-{planes}.zarr"
            data = cell_image((planes, 800, 800), seed=3)
            zarr.create_array(str(source), shape=data.shape, chunks=(1, 400, 400), dtype=data.dtype)[...] = (
                data
            )
            config = load_config(
                overrides={
                    "tiling.tile": 100,
                    "tiling.block_tiles": [1, 1],
                    "tiling.shard_tiles": 1,
                    "profile.batch_size": 1,
                }
            )
            request = SegmentRequest(
                str(source), str(root / f"out-{planes}.ome.zarr"), model, config, show_progress=False
            )
            cpu, wall = time.process_time(), time.perf_counter()
            record = segment(request)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            jobs = sum(stage["computed"] for stage in record["stages"].values())
            runs.append(
                {
                    "planes": planes,
                    "blocks": record["blocks"]["total"],
                    "jobs": jobs,
                    "wall_seconds": round(wall, 2),
                    "driver_cpu_seconds": round(cpu, 2),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    first, second = runs
    report: dict[str, Any] = {
        "runs": runs,
        "jobs_per_block": round(second["jobs"] / second["blocks"], 2),
        "driver_cpu_ms_per_job": round(
            (second["driver_cpu_seconds"] - first["driver_cpu_seconds"])
            / (second["jobs"] - first["jobs"])
            * 1e3,
            2,
        ),
    }
    print(json.dumps({key: report[key] for key in ("jobs_per_block", "driver_cpu_ms_per_job")}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
