"""`segment` end to end on one volume with several cluster shapes: workers x blocks per worker, and
optionally the workers' CUDA contexts merged by NVIDIA's Multi-Process Service (MPS).

Worker processes sharing one GPU each hold a CUDA context of their own, and the GPU runs one
context at a time, switching between them; fewer processes mean fewer contexts but fewer
interpreters for the host work. This measures the trade on one machine: the bench's volume is
written once, the profile's model-only rate measured once, then each shape runs `segment` on a
cluster of its own (as `unet-pipeline bench` does, the model-only rate measured again after each).
A shape ``8x2:mps`` starts an MPS control daemon for that run (skipped, and said so, where the
machine has none). From the repository root, on a GPU machine:

    python3 benchmarks/gpu_cluster_shapes.py --shapes 8x2,4x4,2x8,8x2:mps --json shapes.json

On CPU (no MPS) it runs as a check of the script: ``--device cpu --base-channels 8 --shape 4x1552x1552
--profile bf16:cl:eager:4 --shapes 1x2,2x1``. JSON is written after each shape, so a late failure
keeps the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from pipeline.bench import measure_end_to_end, write_bench_volume
from pipeline.bench_model import BenchProfile, BenchSettings, machine, measure_model

MPS_CONTROL = "nvidia-cuda-mps-control"


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
            run = {"cluster": text}
            with mps_daemon(option == "mps", Path(folder)) as mps:
                run["mps"] = mps
                if option == "mps" and mps != "running":
                    print(f"{text}: skipped ({mps})", flush=True)
                    report["runs"].append(run)
                    continue
                shaped = replace(settings, e2e_workers=workers, e2e_tasks_per_worker=tasks)
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


@contextlib.contextmanager
def mps_daemon(wanted: bool, folder: Path) -> Iterator[str]:
    """An MPS control daemon while the block runs, its pipe folder in the environment the cluster's
    worker processes inherit; yields "running", "not wanted", or why it could not start."""
    if not wanted:
        yield "not wanted"
        return
    control = shutil.which(MPS_CONTROL)
    if control is None:
        yield f"no {MPS_CONTROL} on this machine"
        return
    names = {"CUDA_MPS_PIPE_DIRECTORY": folder / "mps-pipe", "CUDA_MPS_LOG_DIRECTORY": folder / "mps-log"}
    for path in names.values():
        path.mkdir(exist_ok=True)
    env = {**os.environ, **{name: str(path) for name, path in names.items()}}
    started = subprocess.run(
        [control, "-d"], check=False, env=env, capture_output=True, text=True, timeout=30
    )
    if started.returncode != 0:
        yield f"{MPS_CONTROL} -d exited {started.returncode}: {started.stderr.strip()}"
        return
    before = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(path) for name, path in names.items()})
    try:
        yield "running"
    finally:
        subprocess.run(
            [control], input="quit\n", check=False, env=env, capture_output=True, text=True, timeout=30
        )
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        log = folder / "mps-log" / "control.log"
        if log.exists():
            print(log.read_text()[-2000:], flush=True)


if __name__ == "__main__":
    main()
