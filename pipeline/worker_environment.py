"""What the Dask processes we start get, whoever starts them: a local cluster (its
scheduler and nannies in the driver, workers spawned by them) or a SLURM job script."""

from __future__ import annotations

import os

# glibc hands blocks over 32 MiB back to the OS on free, and Dask's nanny asks it to
# trim at 64 KiB: every forward pass then faults its activations in again (measured on
# a 2-core CPU, base-8 U-Net: system time as large as user time, a run 2x slower).
# Workers we start keep up to 1 GiB of freed memory for reuse instead. Every thread
# takes it from one arena: in arenas of their own (glibc's default, up to 8 per core),
# the block tasks' arrays of tens of MiB came from fresh memory again and again, and
# NumPy's request for transparent huge pages on them made the kernel zero (and compact)
# 2 MiB at each fault. Without either, a block task's kernel time fell from 0.93-1.17 to
# 0.15-0.18 CPU-s and its CPU time by a fifth (3 runs each, 16 blocks of 4 x 1552² on a
# 2-core CPU, docs/benchmarks.md). It changes where memory comes from, never a result.
MEMORY_ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "1073741824",
    "MALLOC_ARENA_MAX": "1",
    "NUMPY_MADVISE_HUGEPAGE": "0",
}

# Dask's housekeeping, slower than its defaults. An idle 2-worker local cluster used 0.093
# CPU-s per second with the defaults (4.7 % of a core, the driver and the workers
# together) and 0.022 with these; with the defaults, a 17 s bench run spent about 2 CPU-s
# on it. The event loop's
# tick (20 ms) only measures the loop's responsiveness, and the system monitor (500 ms) and
# the sampling profiler (every thread's stack every 10 ms) only feed the dashboard.
# The memory monitor, which pauses or restarts a worker over its limit, stays quick.
HOUSEKEEPING = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "250ms",
}

# A run places each block's predict on the worker holding the fewest of its blocks
# (pipeline.schedule.WorkerSlots): a worker's blocks share its one device. Dask's work
# stealing moves a task waiting in one worker to another its estimates call idle, blocks
# first (they have no inputs to move), and with it on, placed blocks ran elsewhere (tested).
# Schedulers we start (local, cuda, SLURM) do not steal; with one of yours, turn it off
# there too (DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING=False, as docker/compose.yaml does).
PLACEMENT = {"distributed.scheduler.work-stealing": False}
PROFILER = "distributed.worker.profile.enabled"  # on only with the dashboard

# Zarr encodes and decodes every chunk in a thread pool of cores + 4 threads in every
# process: 8 workers on a 16-core GPU host had 160. With 4 each (and 3 blocks per worker
# instead of 2) a run on an H100 went from 50.8 to 55.0 Mpix/s (docs/benchmarks.md); on
# 2 cores, 2 or 6 threads per worker made no difference. Set it yourself to override.
ZARR_CODEC_POOL = "ZARR_THREADING__MAX_WORKERS"


def zarr_pool_environment(workers: int, cores: int) -> dict[str, str]:
    """Zarr's codec pool for each of ``workers`` processes on ``cores`` (none when already set)."""
    if ZARR_CODEC_POOL in os.environ:
        return {}
    return {ZARR_CODEC_POOL: str(max(2, 2 * cores // max(1, workers)))}


def dask_settings(dashboard: bool) -> dict[str, object]:
    return {**HOUSEKEEPING, **PLACEMENT, PROFILER: dashboard}


def dask_variable(setting: str) -> str:
    """The environment variable Dask reads a setting from: ``a.b-c`` -> ``DASK_A__B_C``."""
    return "DASK_" + setting.upper().replace(".", "__").replace("-", "_")


def shell_exports(dashboard: bool = False) -> list[str]:
    """``export`` lines for a job script that starts a worker: the same as a local one gets."""
    variables = {
        **MEMORY_ENVIRONMENT,
        **{dask_variable(name): str(value) for name, value in dask_settings(dashboard).items()},
    }
    return [f"export {name}={value}" for name, value in variables.items()]
