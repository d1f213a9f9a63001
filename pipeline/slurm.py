"""``--cluster slurm:FILE``: Dask workers as SLURM jobs (dask-jobqueue), one GPU each.

One job = one worker process = one GPU (SLURM pins the job to it through
CUDA_VISIBLE_DEVICES) = two blocks at a time (two Dask threads); the job's
CPUs serve torch's intra-op threads and input decoding. The scheduler runs
in the driver (on the login node, or wherever the Prefect worker runs).
FILE (``configs/cluster-slurm.yaml``) sets the queue, account, sizes and
what to run before the worker starts; unknown keys are errors.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.config import _describe, _read_yaml
from pipeline.errors import InputError
from pipeline.worker_environment import shell_exports


class SlurmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    jobs: int = Field(2, ge=1, description="SLURM jobs kept running: workers, and GPUs")
    queue: str | None = Field(None, description="partition (#SBATCH -p)")
    account: str | None = Field(None, description="#SBATCH -A")
    walltime: str = Field("04:00:00", description="#SBATCH -t, per job")
    cpus_per_job: int = Field(8, ge=1, description="#SBATCH --cpus-per-task: torch threads, decoding")
    memory: str = Field("64GB", description="per job (#SBATCH --mem) and the worker's memory limit")
    gpu_directive: str = Field("--gres=gpu:1", min_length=1, description="how this site asks for one GPU")
    extra_directives: tuple[str, ...] = Field((), description="more #SBATCH lines, e.g. --constraint=a100")
    prologue: tuple[str, ...] = Field((), description="shell lines run before the worker starts")
    python: str | None = Field(None, description="the workers' Python; default: the driver's")
    interface: str | None = Field(None, description="network interface for Dask, e.g. ib0")
    local_directory: str | None = Field(None, description="node-local scratch for the worker")
    log_directory: str | None = Field(None, description="where SLURM writes the jobs' stdout and stderr")
    job_name: str = Field("unet-pipeline", min_length=1)


def load_slurm_settings(path: Path) -> SlurmSettings:
    """The settings file, validated; InputError names the file and the key."""
    data = _read_yaml(path, "SLURM cluster file")
    try:
        return SlurmSettings.model_validate(data)
    except ValidationError as error:
        raise InputError(_describe(error, path)) from None


def cluster_options(settings: SlurmSettings) -> dict[str, Any]:
    """SLURMCluster's arguments: one worker, two Dask threads, one GPU per job."""
    options: dict[str, Any] = {
        "cores": 2,  # Dask threads per worker: one block on the device, one reading and writing
        "processes": 1,
        "job_cpu": settings.cpus_per_job,
        "memory": settings.memory,
        "walltime": settings.walltime,
        "queue": settings.queue,
        "account": settings.account,
        "job_name": settings.job_name,
        "job_extra_directives": [settings.gpu_directive, *settings.extra_directives],
        "job_script_prologue": [*shell_exports(), *settings.prologue],
        "interface": settings.interface,
        "local_directory": settings.local_directory,
        "log_directory": settings.log_directory,
        "scheduler_options": {"dashboard_address": ":0"},
    }
    if settings.python is not None:
        options["python"] = settings.python
    return options


def slurm_cluster(file: str) -> Any:
    """A SLURMCluster scaled to the file's number of jobs (each submitted with sbatch)."""
    settings = load_slurm_settings(Path(file))
    if shutil.which("sbatch") is None:
        raise InputError(
            f"--cluster slurm:{file} submits workers with sbatch, which is not on this machine's PATH: "
            "run on a SLURM login node (or a node that can submit jobs)"
        )
    cluster = new_cluster(settings)
    cluster.scale(jobs=settings.jobs)
    return cluster


def new_cluster(settings: SlurmSettings) -> Any:
    """The SLURMCluster (its scheduler started here), no job submitted yet."""
    try:
        from dask_jobqueue.slurm import SLURMCluster
    except ImportError:
        raise InputError(
            "--cluster slurm:FILE needs dask-jobqueue: install the project with its slurm extra "
            "(pip install 'unet-pipeline[slurm]')"
        ) from None
    return SLURMCluster(**cluster_options(settings))
