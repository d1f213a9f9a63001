"""The bench's settings and the model alone: execution profiles, forward-pass throughput on a
device-resident batch, and the precision agreement of bf16 against fp32."""

from __future__ import annotations

import contextlib
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.demo import DEMO_MODEL
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.predict import predict_plane, prepare_model
from pipeline.synthetic import write_synthetic_acquisition

DTYPE_NAMES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True, slots=True)
class BenchProfile:
    dtype: str  # fp32 | tf32 | bf16 | fp16
    channels_last: bool
    compiled: bool
    batch_size: int
    deterministic: bool = True  # False: cuDNN benchmark mode (fastest kernels, not bitwise repeatable)

    @property
    def name(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        mode = "" if self.deterministic else " benchmark-mode"
        return f"{self.dtype} {layout} {'compiled' if self.compiled else 'eager'} b{self.batch_size}{mode}"

    @classmethod
    def parse(cls, text: str) -> BenchProfile:
        """``dtype:layout:mode:batch[:benchmark]``, e.g. ``bf16:cl:compiled:32`` (layout cl or nchw)."""
        parts = text.strip().split(":")
        if len(parts) not in (4, 5) or parts[0] not in DTYPE_NAMES or parts[1] not in ("cl", "nchw"):
            raise ValueError(f"profile {text!r} is not dtype:layout:mode:batch, e.g. bf16:cl:compiled:32")
        if (
            parts[2] not in ("eager", "compiled")
            or not parts[3].isdigit()
            or parts[4:] not in ([], ["benchmark"])
        ):
            raise ValueError(f"profile {text!r} is not dtype:layout:mode:batch, e.g. bf16:cl:compiled:32")
        return cls(parts[0], parts[1] == "cl", parts[2] == "compiled", int(parts[3]), not parts[4:])


NAIVE = BenchProfile("fp32", False, False, 1)


@dataclass(frozen=True, slots=True)
class BenchSettings:
    device: str = "cpu"
    base_channels: int = 16
    depth: int = 5
    tile: int = 388
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    batch_sizes: tuple[int, ...] = (1, 4)
    layouts: tuple[bool, ...] = (False, True)  # channels_last off / on
    compile: bool = False
    threads: int = 2
    min_seconds: float = 2.0  # per profile, after warm-up
    e2e_shape: tuple[int, int, int] | None = (4, 3104, 3104)
    e2e_workers: int = 2  # as segment's default: on a 2-core CPU, one torch thread each
    e2e_tasks_per_worker: int = 2  # blocks a worker runs at once (Dask threads)
    e2e_block_tiles: int = 4
    e2e_block_planes: int = 1
    e2e_weights: str = "random"  # random | demo (the shipped model, cells: widened to base_channels)
    e2e_mps: bool | str = "auto"  # the end-to-end run's workers under an NVIDIA MPS daemon (cluster.mps)
    profiles: tuple[BenchProfile, ...] = ()  # explicit list instead of the matrix (the naive one is added)
    # the end-to-end run's profile (its model-only rate measured too); None: the fastest eager one
    e2e_profile: BenchProfile | None = None
    e2e_warm_up: bool = True  # a one-block acquisition first: the workers' model loaded (and compiled)
    e2e_timeline: str | None = None  # an SVG of the timed run's tasks on the worker threads (bench_timeline)


def profiles(settings: BenchSettings) -> list[BenchProfile]:
    """The naive profile first, then every dtype x layout x batch size (x compiled), no repeats."""
    found = [NAIVE]
    if settings.profiles:
        found += [profile for profile in settings.profiles if profile != NAIVE]
    else:
        for dtype in settings.dtypes:
            for channels_last in settings.layouts:
                for batch in settings.batch_sizes:
                    for compiled in (False, True) if settings.compile else (False,):
                        found.append(BenchProfile(dtype, channels_last, compiled, batch))
    if settings.e2e_profile is not None and settings.e2e_shape is not None:
        found.append(settings.e2e_profile)  # its model-only rate is what the run is held against
    return list(dict.fromkeys(found))


def bench_model(settings: BenchSettings, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(1, 2, settings.base_channels, settings.depth).eval()


def measure_model(settings: BenchSettings, profile: BenchProfile) -> dict[str, Any]:
    """Forward passes of one device-resident batch for at least ``min_seconds``, after warm-up."""
    device = torch.device(settings.device)
    model = prepare_model(
        bench_model(settings),
        device=device,
        dtype=DTYPE_NAMES[profile.dtype],
        channels_last=profile.channels_last,
    )
    window = model.geometry.input_size(settings.tile)
    memory_format = torch.channels_last if profile.channels_last else torch.contiguous_format
    batch = torch.randn(profile.batch_size, 1, window, window).to(
        device=device, dtype=next(model.parameters()).dtype, memory_format=memory_format
    )
    forward: Any = torch.compile(model, dynamic=False) if profile.compiled else model
    with (
        tf32(profile.dtype == "tf32" and device.type == "cuda"),
        cudnn_mode(profile.deterministic),
        torch.inference_mode(),
    ):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        compile_started = time.perf_counter()
        for _ in range(3 if profile.compiled else 1):
            forward(batch)
        synchronize(device)
        warmup = time.perf_counter() - compile_started
        passes, started = 0, time.perf_counter()
        while passes < 2 or time.perf_counter() - started < settings.min_seconds:
            forward(batch)
            passes += 1
            if device.type == "cuda" and passes % 4:
                continue
            synchronize(device)
        synchronize(device)
        seconds = time.perf_counter() - started
    pixels = passes * profile.batch_size * settings.tile**2
    return {
        "mpix_per_second": round(pixels / seconds / 1e6, 3),
        "seconds_per_batch": round(seconds / passes, 4),
        "warmup_seconds": round(warmup, 2),
        "passes": passes,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }


def precision_agreement(settings: BenchSettings) -> dict[str, Any]:
    """bf16 against fp32 on one synthetic nuclei plane: probability difference, label voxels equal.

    Uses the shipped demo model when it fits the bench's architecture, else the bench model.
    """
    plane = np.asarray(write_plane(settings), dtype=np.float32)
    stats = Normalization("percentile", 1.0, 99.8).statistics(plane.ravel())
    normalised = stats.apply(plane)
    demo = load_checkpoint(DEMO_MODEL).model if DEMO_MODEL.exists() else None
    use_demo = demo is not None and demo.geometry.is_valid_input(settings.tile + 2 * demo.geometry.halo)
    model = demo if demo is not None and use_demo else bench_model(settings)
    results = {}
    for dtype in ("float32", "bfloat16"):  # fp32 first: predict_plane casts the model in place
        results[dtype] = predict_plane(
            model, normalised, tile=settings.tile, batch_size=4, device=settings.device, dtype=dtype
        )[1]
    reference, low = results["float32"], results["bfloat16"]
    return {
        "model": "demo" if use_demo else "bench (untrained)",
        "pixels": int(reference.size),
        "max_abs_probability_difference": float(np.abs(reference - low).max()),
        "foreground_voxels_equal": float(np.mean((reference >= 0.5) == (low >= 0.5))),
    }


def write_plane(settings: BenchSettings) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        image, _ = write_synthetic_acquisition(
            f"{folder}/plane.ome.zarr", (2 * settings.tile, 2 * settings.tile), (256, 256), seed=7
        )
    return image


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@contextlib.contextmanager
def cudnn_mode(deterministic: bool) -> Iterator[None]:
    """cuDNN as the execution profile sets it (pipeline.worker_device.configure_torch)."""
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = not deterministic, deterministic
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
