"""`unet-pipeline bench`: the model alone over execution profiles, then `segment` end to end.

Every figure comes from one run on one machine, and the naive profile (fp32,
NCHW, batch 1, eager) is always measured, so each speed-up is a ratio on the
same machine. Output megapixels per second count valid output pixels: a
batch of ``b`` windows yields ``b * tile**2`` of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import zarr
from distributed import get_task_stream

from pipeline.bench_model import (
    DTYPE_NAMES,
    BenchProfile,
    BenchSettings,
    bench_model,
    machine,
    measure_model,
    precision_agreement,
    profiles,
)
from pipeline.bench_tail import computes, tail_by_stage
from pipeline.bench_timeline import timeline_svg
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.cluster import (
    open_client,
    worker_cpu_seconds,
    worker_other_threads_cpu_seconds,
    worker_system_seconds,
)
from pipeline.config import load_config
from pipeline.demo import DEMO_MODEL
from pipeline.errors import InputError
from pipeline.model import widen
from pipeline.normalization import Normalization
from pipeline.run import SegmentRequest, segment
from pipeline.synthetic import fluorescence_image, nuclei_labels
from pipeline.worker_device import wait_for_warm_ups

log = logging.getLogger(__name__)

STEPS = ("fill", "h2d", "compute", "d2h", "deliver")  # a device batch, host fill to delivery


def run_bench(settings: BenchSettings, progress: bool = True) -> dict[str, Any]:
    """Model-only throughput per profile, the end-to-end run, and precision agreement, as one report."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked, but torch sees no CUDA device")
    if settings.e2e_weights == "demo":
        demo = load_checkpoint(DEMO_MODEL).config
        if demo.depth != settings.depth or settings.base_channels < demo.base_channels:
            raise InputError(
                f"--e2e-weights demo: the demo model has {demo.base_channels} base channels and depth "
                f"{demo.depth}; bench with --depth {demo.depth} and --base-channels {demo.base_channels} or "
                "more (wider: the demo's weights in the first channels), so the model-only figures are of "
                "the same network"
            )
    torch.set_num_threads(settings.threads)
    report: dict[str, Any] = {"settings": asdict(settings), "machine": machine()}
    model_rows = []
    for profile in profiles(settings):
        row = {"profile": profile.name, **asdict(profile), **measure_model(settings, profile)}
        model_rows.append(row)
        if progress:
            log.info("model-only %-36s %8.3f Mpix/s", profile.name, row["mpix_per_second"])
    naive = model_rows[0]["mpix_per_second"]
    for row in model_rows:
        row["speedup_vs_naive"] = round(row["mpix_per_second"] / naive, 2) if naive else None
    report["model_only"] = model_rows
    report["agreement"] = precision_agreement(settings)
    if settings.e2e_shape is not None:
        report["end_to_end"] = measure_end_to_end(settings, model_rows)
    return report


def measure_end_to_end(
    settings: BenchSettings, model_rows: list[dict[str, Any]], volume: str | None = None
) -> dict[str, Any]:
    """`segment` of a synthetic uint16 Zarr volume with the fastest eager profile (or the one asked for),
    against its model-only rate.

    The clock runs from the call of `segment` on a started cluster to its complete record, after a
    one-block acquisition on the same cluster (``e2e_warm_up``): a nightly run starts its cluster once
    for all acquisitions, only the first loads (and compiles) the model in every worker, and the
    model-only figures too are taken after their warm-up. The cluster's start and the warm-up
    acquisition are reported too, as the cold figure a one-volume `segment` sees. The model-only rate
    the run is held against is the mean of that profile's pass before the run and one more after it:
    a shared or virtual machine's speed drifts by several per cent within a minute (measured here:
    2.59 to 2.86 Mpix/s).

    ``volume``: a bench volume of ``settings.e2e_shape`` written before (:func:`write_bench_volume`),
    read instead of writing one, so runs of several cluster shapes read the same input.
    """
    if settings.device == "cuda":
        torch.cuda.empty_cache()  # the model-only passes' cached memory belongs to the workers now
    best = end_to_end_profile(settings, model_rows)
    assert settings.e2e_shape is not None
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        source = volume or f"{root}/input.zarr"
        if volume is None:
            write_bench_volume(source, settings.e2e_shape)
        if settings.e2e_warm_up:
            planes, height, width = settings.e2e_shape
            edge = settings.tile * settings.e2e_block_tiles
            one_block = (min(planes, settings.e2e_block_planes), min(height, edge), min(width, edge))
            write_bench_volume(f"{root}/warm-up.zarr", one_block)
        checkpoint = root / "bench.safetensors"
        if settings.e2e_weights == "demo":
            save_widened_demo_model(checkpoint, settings.base_channels)
        else:
            save_checkpoint(
                checkpoint, bench_model(settings), normalization=Normalization("percentile", 1.0, 99.8)
            )
        threads = max(1, settings.threads // settings.e2e_workers)
        config = load_config(
            overrides={
                **cluster_overrides(settings.e2e_workers, settings.e2e_tasks_per_worker),
                "cluster.mps": settings.e2e_mps,
                "profile.device": settings.device,
                "profile.dtype": DTYPE_NAMES[best["dtype"]],
                "profile.channels_last": best["channels_last"],
                "profile.batch_size": best["batch_size"],
                "profile.deterministic": best["deterministic"],
                "profile.compile": best["compiled"],
                "profile.threads": threads,
                "tiling.tile": settings.tile,
                "tiling.block_tiles": [settings.e2e_block_tiles] * 2,
                "tiling.shard_tiles": min(4, settings.e2e_block_tiles),
                "tiling.block_planes": settings.e2e_block_planes,
            }
        )
        # like a nightly run, whose one cluster serves every acquisition: started before the volume's clock
        cluster_started = time.perf_counter()
        with open_client(config.cluster, device=settings.device) as client:
            cluster_seconds = time.perf_counter() - cluster_started
            warm_up_seconds = None
            if settings.e2e_warm_up:  # a nightly run's later acquisitions find the model loaded (compiled)
                warm_up_seconds = segment(
                    SegmentRequest(
                        f"{root}/warm-up.zarr",
                        str(root / "warm-up.ome.zarr"),
                        checkpoint,
                        config,
                        show_progress=False,
                    ),
                    client,
                )["wall_seconds"]
                client.run(wait_for_warm_ups)  # a worker the block missed may still be compiling
            workers_before, driver_before = worker_cpu_seconds(client), _process_cpu_seconds()
            others_before = worker_other_threads_cpu_seconds(client)
            system_before = worker_system_seconds(client)
            with gpu_utilisation(settings.device) as samples, get_task_stream(client) as stream:
                called = time.time()  # the task stream's clock
                record = segment(
                    SegmentRequest(
                        source, str(root / "out.ome.zarr"), checkpoint, config, show_progress=False
                    ),
                    client,
                )
                returned = time.time()
            workers_after, driver_after = worker_cpu_seconds(client), _process_cpu_seconds()
            others = worker_other_threads_cpu_seconds(client)
            system = {
                role: round(seconds - system_before[role], 2)
                for role, seconds in worker_system_seconds(client).items()
            }
        shape = zarr.open_array(f"{root}/out.ome.zarr/s0", mode="r").shape
    again = measure_model(
        settings, BenchProfile(**{name: best[name] for name in BenchProfile.__dataclass_fields__})
    )
    model_only = (best["mpix_per_second"] + again["mpix_per_second"]) / 2
    predict = record["stages"]["predict"]
    end_to_end = predict["pixels"] / record["wall_seconds"] / 1e6
    if settings.e2e_timeline:
        title = (
            f"segment {'x'.join(map(str, shape))} on {settings.device}, {best['profile']}, "
            f"{'the demo model (cells)' if settings.e2e_weights == 'demo' else 'random weights (speckle)'}, "
            f"{settings.e2e_workers} worker(s) x {settings.e2e_tasks_per_worker} tasks: "
            f"{end_to_end:.1f} Mpix/s, {end_to_end / model_only:.0%} of model-only ({time.strftime('%Y-%m-%d')})"
        )
        Path(settings.e2e_timeline).write_text(
            timeline_svg(computes(stream.data), called, returned, title, [(t, u) for t, u, _ in samples])
        )
    cpu = {role: round(workers_after[role] - workers_before[role], 2) for role in workers_after}
    cpu["driver (scheduler, client, merge)"] = round(driver_after - driver_before, 2)
    host = sum(seconds for role, seconds in cpu.items() if role != "network")
    cold = predict["pixels"] / (record["wall_seconds"] + cluster_seconds + (warm_up_seconds or 0.0)) / 1e6
    before_first = predict["started_after_seconds"] or 0.0
    after_last = record["wall_seconds"] - before_first - predict["wall_seconds"]
    return {
        "shape": list(shape),
        "profile": best["profile"],
        "workers": settings.e2e_workers,
        "tasks_per_worker": settings.e2e_tasks_per_worker,
        "mps": record["cluster"]["workers_under_mps"] > 0,  # cluster.mps auto: what the run did
        "torch_threads_per_worker": threads,
        "block_tiles": settings.e2e_block_tiles,
        "block_planes": settings.e2e_block_planes,
        "weights": settings.e2e_weights,
        "wall_seconds": record["wall_seconds"],
        "mpix_per_second": round(end_to_end, 3),
        "predict_stage_mpix_per_second": predict["mpix_per_second"],
        "model_only_mpix_per_second": round(model_only, 3),
        "model_only_before_and_after": [best["mpix_per_second"], again["mpix_per_second"]],
        "fraction_of_model_only": round(end_to_end / model_only, 3),
        "cluster_start_seconds": round(cluster_seconds, 3),
        # a one-block acquisition before the timed one, on the same cluster (None: none, the timed run
        # loaded the model in every worker: a cluster's first acquisition)
        "warm_up_acquisition_seconds": warm_up_seconds,
        # with the cluster's start (and the warm-up acquisition), as a one-volume `segment` pays them
        "cold_mpix_per_second": round(cold, 3),
        "cold_fraction_of_model_only": round(cold / model_only, 3),
        "predict_stage_fraction_of_model_only": round(predict["mpix_per_second"] / model_only, 3),
        "setup_seconds": record.get("setup_seconds"),
        "finish_seconds": record.get("finish_seconds"),
        "worker_warm_up_seconds": record.get("worker_warm_up_seconds"),  # beside the set-up: model, cuDNN
        # where the end-to-end figure loses to the predict stage's: no block is predicted then
        "before_first_block_seconds": round(before_first, 3),
        "after_last_block_seconds": round(after_last, 3),
        "tail_by_stage": tail_by_stage(stream.data),  # what ran after the last predict task stopped
        "stage_wall_seconds": {stage: values["wall_seconds"] for stage, values in record["stages"].items()},
        "stage_started_after_seconds": {
            stage: values["started_after_seconds"] for stage, values in record["stages"].items()
        },
        "predict_worker_seconds": predict["worker_seconds"],
        "predict_worker_cpu_seconds": predict["worker_cpu_seconds"],  # the task threads' own, same sections
        "cpu_seconds": cpu,  # by role, workers summed (pipeline.cpu_time); the driver's whole process
        "cpu_system_seconds": system,  # of those, the kernel's (page faults, file IO), workers' live threads
        "other_threads_cpu_seconds": dict(  # role "other" by thread name, the largest
            sorted(
                (
                    (name, round(seconds - others_before.get(name, 0.0), 2))
                    for name, seconds in others.items()
                ),
                key=lambda item: -item[1],
            )[:8]
        ),
        "host_cpu_seconds_per_mpix": round(host / (predict["pixels"] / 1e6), 4),
        # the cores all that needs to keep pace with the network at its model-only rate
        "host_cores_at_model_only_rate": round(host / (predict["pixels"] / 1e6) * model_only, 2),
        "shared_cores_ceiling": shared_cores_ceiling(
            predict["pixels"] / 1e6, cpu["network"] + host, model_only
        )
        if settings.device == "cpu"
        else None,
        "device_batcher": predict.get("device", {}),
        # above 1: the device was shared (processes' CUDA contexts taking turns, or cores on a CPU)
        "batch_seconds_vs_alone": batch_seconds_vs_alone(predict.get("device", {}), best),
        "peak_worker_rss_bytes": record.get("worker_peak_rss_bytes"),
        "gpu_utilisation_percent": round(float(np.mean([u for _, u, _ in samples])), 1) if samples else None,
        "gpu_memory_used_peak_mib": max(m for _, _, m in samples) if samples else None,
    }


def end_to_end_profile(settings: BenchSettings, model_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The model-only row of the profile the end-to-end run uses: the one asked for, else the fastest eager."""
    if settings.e2e_profile is not None:
        name = settings.e2e_profile.name
        return next(row for row in model_rows if row["profile"] == name)
    return max((row for row in model_rows if not row["compiled"]), key=lambda row: row["mpix_per_second"])


def batch_seconds_vs_alone(device: dict[str, float], best: dict[str, Any]) -> float | None:
    """A run's device time per batch against the same profile's model-only time per batch."""
    if not device.get("batches") or not best.get("seconds_per_batch"):
        return None
    return round(device["compute_seconds"] / device["batches"] / float(best["seconds_per_batch"]), 2)


def shared_cores_ceiling(mpix: float, cpu_seconds: float, model_only: float) -> float | None:
    """The most end to end can reach of model-only on the CPU, where the network and the host work
    share this machine's cores: the run takes at least all its CPU time spread over all of them."""
    if cpu_seconds <= 0 or model_only <= 0:
        return None
    return round(min(1.0, mpix * usable_cores() / cpu_seconds / model_only), 3)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _process_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


BENCH_LAYER = 4  # planes of nuclei between two background planes in the end-to-end volume


def cluster_overrides(workers: int, tasks_per_worker: int) -> dict[str, int]:
    """Config overrides for a benchmark's cluster: ``tasks_per_worker`` blocks running in each worker
    and one more sent, so a worker never waits for the driver between two blocks."""
    return {
        "cluster.workers": workers,
        "cluster.threads_per_worker": tasks_per_worker,
        "cluster.in_flight_per_worker": tasks_per_worker + 1,
    }


def save_widened_demo_model(path: Path, base_channels: int) -> None:
    """The shipped demo model zero-padded to ``base_channels``: the same function at that width's cost."""
    demo = load_checkpoint(DEMO_MODEL)
    save_checkpoint(
        path, widen(demo.model, base_channels), normalization=demo.normalization, classes=demo.classes
    )


def write_bench_volume(url: str, shape: tuple[int, int, int]) -> None:
    """A uint16 Zarr array of synthetic nuclei in 512 x 512 chunks: two distinct planes alternating,
    a plane of background after every four.

    Drawing nuclei costs far more than segmenting them; the repeat keeps a large benchmark volume
    cheap to make without changing what a block reads. The background planes end the nuclei as a
    real stack does: repeated without them, every nucleus would be a column through the whole
    volume, one object the label merge could number only after the last block.
    """
    distinct = min(shape[0], 2)
    image = fluorescence_image(nuclei_labels((distinct, *shape[1:]), seed=11), seed=11)
    background = fluorescence_image(np.zeros((1, *shape[1:]), np.uint32), seed=12)[0]
    array = zarr.open_array(url, mode="w", shape=shape, chunks=(1, 512, 512), dtype="uint16", zarr_format=3)
    for plane in range(shape[0]):
        array[plane] = background if plane % (BENCH_LAYER + 1) == BENCH_LAYER else image[plane % distinct]


@contextlib.contextmanager
def gpu_utilisation(device: str) -> Iterator[list[tuple[float, float, float]]]:
    """(time, utilisation %, memory used MiB) of the GPU (nvidia-smi, 5 per second) while the block runs:
    the percentage of the last sample period in which a kernel ran."""
    samples: list[tuple[float, float, float]] = []
    if device != "cuda":
        yield samples
        return
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout
                utilisation, memory = out.splitlines()[0].split(",")
                samples.append((time.time(), float(utilisation), float(memory)))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def table(report: dict[str, Any]) -> str:
    """The report as the text table `bench` prints."""
    lines = [f"{'model only':<40} {'Mpix/s':>9} {'x naive':>8} {'s/batch':>9}"]
    for row in report["model_only"]:
        lines.append(
            f"{row['profile']:<40} {row['mpix_per_second']:>9.3f} {row['speedup_vs_naive']:>8.2f} "
            f"{row['seconds_per_batch']:>9.4f}"
        )
    agreement = report["agreement"]
    lines.append(
        f"bf16 vs fp32 ({agreement['model']} model): max |dp| {agreement['max_abs_probability_difference']:.4f}, "
        f"foreground voxels equal {agreement['foreground_voxels_equal']:.5f}"
    )
    if "end_to_end" in report:
        e2e = report["end_to_end"]
        under_mps = " under MPS" if e2e.get("mps") else ""
        if e2e.get("warm_up_acquisition_seconds") is not None:
            under_mps += f", after a one-block acquisition of {e2e['warm_up_acquisition_seconds']:.2f} s"
        lines.append(
            f"end to end {'x'.join(map(str, e2e['shape']))} ({e2e['profile']}, {e2e['workers']} worker(s){under_mps}): "
            f"{e2e['mpix_per_second']:.3f} Mpix/s = {e2e['fraction_of_model_only']:.0%} of model-only (predict stage "
            f"{e2e['predict_stage_fraction_of_model_only']:.0%}; with the cluster's start "
            f"{e2e['cold_fraction_of_model_only']:.0%}); "
            f"stages {json.dumps(e2e['stage_wall_seconds'])}"
        )
        if "after_last_block_seconds" in e2e:
            idle = e2e["before_first_block_seconds"] + e2e["after_last_block_seconds"]
            lines.append(
                f"no block predicted: {e2e['before_first_block_seconds']:.2f} s before the first, "
                f"{e2e['after_last_block_seconds']:.2f} s after the last ({idle / e2e['wall_seconds']:.0%} of "
                f"{e2e['wall_seconds']:.2f} s)"
            )
        if e2e.get("tail_by_stage"):
            stages = ", ".join(
                f"{stage} x{figures['tasks']} {figures['first_start']:+.2f}..{figures['last_stop']:+.2f} s"
                for stage, figures in e2e["tail_by_stage"].items()
            )
            lines.append(f"after the last predict task (its stop = 0; first start..last stop): {stages}")
        if "cpu_seconds" in e2e:
            roles = ", ".join(f"{role} {seconds:.2f}" for role, seconds in e2e["cpu_seconds"].items())
            lines.append(
                f"CPU seconds: {roles}; outside the network {e2e['host_cpu_seconds_per_mpix']:.4f} per Mpix, "
                f"{e2e['host_cores_at_model_only_rate']:.2f} cores at the model-only rate"
            )
        if e2e.get("cpu_system_seconds"):
            kernel = ", ".join(f"{role} {seconds:.2f}" for role, seconds in e2e["cpu_system_seconds"].items())
            lines.append(f"of those, the kernel's (page faults, file IO), workers: {kernel}")
        if e2e.get("predict_worker_cpu_seconds"):
            cpu = e2e["predict_worker_cpu_seconds"]
            sections = ", ".join(
                f"{name} {seconds:.2f} ({cpu.get(name, 0.0):.2f})"
                for name, seconds in e2e["predict_worker_seconds"].items()
            )
            lines.append(f"predict tasks, seconds summed over blocks (the task thread's CPU): {sections}")
        if (e2e.get("shared_cores_ceiling") or 1.0) < 1.0:
            lines.append(
                f"the host work shares the cores with the network: end to end at most "
                f"{e2e['shared_cores_ceiling']:.0%} of model-only here"
            )
        device = e2e.get("device_batcher") or {}
        if device:
            steps = ", ".join(f"{step} {device.get(f'{step}_seconds', 0):.2f} s" for step in STEPS)
            lines.append(
                f"device batchers: {device.get('batches', 0):.0f} batches, {device.get('windows', 0):.0f} windows "
                f"(+{device.get('padding_windows', 0):.0f} padding); {steps}"
            )
        shared = e2e.get("batch_seconds_vs_alone")
        if (
            shared is not None
            and shared > 1.5
            and report["settings"]["device"] == "cuda"
            and e2e["workers"] > 1
        ):
            how = (
                "under MPS"
                if e2e.get("mps")
                else "each with a CUDA context of its own, which the GPU runs in turns: --mps gives them one "
                "(docs/deploy.md)"
            )
            lines.append(
                f"a batch took {shared:.1f}x its model-only time: {e2e['workers']} worker processes shared the GPU, {how}"
            )
    return "\n".join(lines)
