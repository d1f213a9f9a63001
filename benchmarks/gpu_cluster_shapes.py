"""`segment` end to end on one volume with several cluster shapes: workers x blocks per worker, and
optionally the workers' CUDA contexts merged by NVIDIA's Multi-Process Service (MPS).

Worker processes sharing one GPU each hold a CUDA context of their own, and the GPU runs one
context at a time, switching between them; fewer processes mean fewer contexts but fewer
interpreters for the host work. This measures the trade on one machine: the bench's volume is
written once, the profile's model-only rate measured once, then each shape runs `segment` on a
cluster of its own (as `unet-pipeline bench` does, the model-only rate measured again after each).
A shape ``8x2:mps`` runs that cluster's workers under an MPS control daemon (``cluster.mps``:
the pipeline starts it with the cluster and stops it after). From the repository root, on a GPU
machine:

    python3 benchmarks/gpu_cluster_shapes.py --shapes 8x2,4x4,2x8,8x2:mps --json shapes.json

On CPU (where cluster.mps starts nothing) it runs as a check of the script: ``--device cpu
--base-channels 8 --shape 4x1552x1552 --profile bf16:cl:eager:4 --shapes 1x2,2x1``. JSON is
written after each shape, so a late failure keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from pipeline.bench import measure_end_to_end, write_bench_volume
from pipeline.bench_model import BenchProfile, BenchSettings, machine, measure_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="64x4656x4656", help="ZYX of the volume")
    parser.add_argument(
        "--shapes", default="8x2,4x4,2x8", help="workers x tasks per worker[:mps], comma separated"
    )
    parser.add_argument("--profile", default="bf16:cl:eager:16")
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--block-tiles", type=int, default=4)
    parser.add_argument("--block-planes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="model-only seconds after warm-up")
    parser.add_argument(
        "--weights",
        choices=["random", "demo"],
        default="random",
        help="random: speckle (columns through every plane hold every block's relabel back to the end); "
        "demo: the demo model widened (cells)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    planes, height, width = (int(n) for n in args.shape.split("x"))
    profile = BenchProfile.parse(args.profile)
    settings = BenchSettings(
        device=args.device,
        base_channels=args.base_channels,
        threads=os.cpu_count() or 1,
        min_seconds=args.seconds,
        e2e_shape=(planes, height, width),
        e2e_block_tiles=args.block_tiles,
        e2e_block_planes=args.block_planes,
        e2e_weights=args.weights,
        profiles=(profile,),
    )
    torch.set_num_threads(settings.threads)
    row = {"profile": profile.name, **asdict(profile), **measure_model(settings, profile)}
    print(f"model only, {profile.name}: {row['mpix_per_second']} Mpix/s", flush=True)
    report: dict[str, Any] = {"machine": machine(), "model_only": row, "runs": []}
    with tempfile.TemporaryDirectory(prefix="cluster-shapes-") as folder:
        volume = f"{folder}/input.zarr"
        started = time.perf_counter()
        write_bench_volume(volume, (planes, height, width))
        report["volume_seconds"] = round(time.perf_counter() - started, 1)
        for text in args.shapes.split(","):
            shape, _, option = text.partition(":")
            workers, tasks = (int(n) for n in shape.split("x"))
            shaped = replace(
                settings, e2e_workers=workers, e2e_tasks_per_worker=tasks, e2e_mps=option == "mps"
            )
            run: dict[str, Any] = {"cluster": text}
            try:
                run.update(measure_end_to_end(shaped, [row], volume=volume))
            except Exception as error:  # noqa: BLE001 - the next shape still runs; the error is reported
                run["error"] = f"{type(error).__name__}: {error}"
            report["runs"].append(run)
            print(f"{text}: failed: {run['error']}" if "error" in run else summary(run), flush=True)
            if args.json:
                args.json.write_text(json.dumps(report, indent=2) + "\n")


def summary(run: dict[str, Any]) -> str:
    cpu = run["cpu_seconds"]
    return (
        f"{run['cluster']:>9}: {run['mpix_per_second']:7.2f} Mpix/s end to end = "
        f"{run['fraction_of_model_only']:.0%} of model-only, predict stage "
        f"{run['predict_stage_fraction_of_model_only']:.0%}, wall {run['wall_seconds']} s, GPU util "
        f"{run['gpu_utilisation_percent']} %, host {run['host_cpu_seconds_per_mpix']} CPU-s/Mpix, "
        f"block tasks {cpu['block tasks']} CPU-s, idle before/after {run['before_first_block_seconds']}/"
        f"{run['after_last_block_seconds']} s"
    )


if __name__ == "__main__":
    main()
