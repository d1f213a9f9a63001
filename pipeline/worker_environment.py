"""What the Dask workers we start get in their environment, whoever starts them: a local
cluster's nannies or a SLURM job script."""

from __future__ import annotations

# glibc hands blocks over 32 MiB back to the OS on free, and Dask's nanny asks it to
# trim at 64 KiB: every forward pass then faults its activations in again (measured on
# a 2-core CPU, base-8 U-Net: system time as large as user time, a run 2x slower).
# Workers we start keep up to 1 GiB of freed memory for reuse instead. It changes
# where memory comes from, never a result.
MALLOC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}

# The worker's sampling profiler (every thread's stack, every 10 ms) feeds only the
# dashboard; it cost 0.6 CPU-s of a 38 Mpix run on 2 cores (the bench volume), 2 % of
# the run's CPU. On when the dashboard is asked for.
PROFILER_SETTING = "distributed.worker.profile.enabled"


def shell_exports(dashboard: bool = False) -> list[str]:
    """``export`` lines for a job script that starts a worker."""
    variables = {**MALLOC_ENVIRONMENT, "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": str(dashboard)}
    return [f"export {name}={value}" for name, value in variables.items()]
