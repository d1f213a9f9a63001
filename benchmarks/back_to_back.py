"""Acquisitions back to back on one cluster: one after another, against taking turns at its devices.

A nightly run segments its acquisitions on one Dask cluster. One after
another, the devices idle through each run's set-up and through its tail
(contacts, the label merge, relabel, pyramids, record); taking turns
(`pipeline/device_turn.py`), the next run sets up while one predicts and
predicts while the one before finishes. This runs the same synthetic
acquisitions (copies of the bench's nuclei volume, the shipped demo model
widened to ``--base-channels``) both ways on one cluster and reports the wall time, the time no block was
predicted, and whether every output is the same both ways. From the
repository root:

    .venv/bin/python benchmarks/back_to_back.py --acquisitions 4 --shape 8x1164x1164
    python3 benchmarks/back_to_back.py --device cuda --base-channels 64 --shape 16x4656x4656 \\
        --workers 8 --tasks-per-worker 2 --block-planes 4 --batch-size 16      # one H100

Writes the figures as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.bench import cluster_overrides, save_widened_demo_model, write_bench_volume
from pipeline.cluster import open_client
from pipeline.config import load_config
from pipeline.device_turn import device_turns
from pipeline.plan import SegmentRequest
from pipeline.run import segment

ARRAYS = ("s0", "labels/cells/s0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acquisitions", type=int, default=4)
    parser.add_argument("--shape", default="8x1164x1164", help="ZYX of each acquisition")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--base-channels", type=int, default=8, help="the demo model widened to this")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks-per-worker", type=int, default=2)
    parser.add_argument("--block-planes", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    planes, height, width = (int(n) for n in args.shape.split("x"))
    shape = (planes, height, width)
    with tempfile.TemporaryDirectory(prefix="back-to-back-") as folder:
        root = Path(folder)
        inputs = [f"{root}/in-{k}.zarr" for k in range(args.acquisitions)]
        write_bench_volume(inputs[0], shape)  # drawing nuclei takes a minute for 8 x 4656²: copies
        for url in inputs[1:]:
            shutil.copytree(inputs[0], url)
        checkpoint = root / "model.safetensors"
        save_widened_demo_model(checkpoint, args.base_channels)
        config = load_config(
            overrides={
                **cluster_overrides(args.workers, args.tasks_per_worker),
                "profile.device": args.device,
                "profile.dtype": "bfloat16",
                "profile.channels_last": True,
                "profile.batch_size": args.batch_size,
                "tiling.block_planes": args.block_planes,
            }
        )
        results: dict[str, Any] = {"shape": list(shape), "acquisitions": args.acquisitions}
        with open_client(config.cluster, device=args.device) as client:
            # untimed: the workers load the model (and cuDNN starts) before either way is timed
            segment(
                SegmentRequest(
                    inputs[0], str(root / "warm.ome.zarr"), checkpoint, config, show_progress=False
                ),
                client,
            )
            for mode in ("one after another", "taking turns"):
                outputs = [root / f"{mode.replace(' ', '-')}-{k}.ome.zarr" for k in range(len(inputs))]
                requests = [
                    SegmentRequest(url, str(out), checkpoint, config, show_progress=False)
                    for url, out in zip(inputs, outputs, strict=True)
                ]
                results[mode] = _run(client, requests, together=mode == "taking turns")
                print(mode, json.dumps(results[mode]), flush=True)
            results["outputs equal"] = all(
                np.array_equal(
                    zarr.open_array(str(root / f"one-after-another-{k}.ome.zarr" / name), mode="r")[...],
                    zarr.open_array(str(root / f"taking-turns-{k}.ome.zarr" / name), mode="r")[...],
                )
                for k in range(len(inputs))
                for name in ARRAYS
            )
    print("outputs equal:", results["outputs equal"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _run(client: Any, requests: list[SegmentRequest], *, together: bool) -> dict[str, Any]:
    """Wall seconds of the runs, and the seconds in which none of them was predicting a block."""
    spans: list[tuple[float, float]] = []  # each run's predict stage, from the first run's start
    records: list[dict[str, Any]] = []
    started = time.perf_counter()

    def one(request: SegmentRequest, turn: Any) -> None:
        called = time.perf_counter() - started
        record = segment(request, client, turn)
        predict = record["stages"]["predict"]
        first = called + predict["started_after_seconds"]
        spans.append((first, first + predict["wall_seconds"]))
        records.append(record)

    if together:
        turns = device_turns(len(requests))
        threads = [
            threading.Thread(target=one, args=(request, turn))
            for request, turn in zip(requests, turns, strict=True)
        ]
        for thread, turn in zip(threads, turns, strict=True):
            thread.start()
            turn.taken.wait()  # as the nightly flow does: the next one sets up once this one predicts
        for thread in threads:
            thread.join()
    else:
        for request in requests:
            one(request, None)
    wall = time.perf_counter() - started
    covered, reach = 0.0, 0.0
    for begin, end in sorted(spans):
        covered += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    pixels = sum(record["stages"]["predict"]["pixels"] for record in records)
    return {
        "wall_seconds": round(wall, 2),
        "no_block_predicted_seconds": round(wall - covered, 2),
        "mpix_per_second": round(pixels / 1e6 / wall, 3),
        "run_walls": [record["wall_seconds"] for record in records],
        "waited_for_the_run_before": [
            record["setup_seconds"]["the previous run's blocks"] for record in records
        ],
    }


if __name__ == "__main__":
    main()
