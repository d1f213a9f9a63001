"""``unet-pipeline cluster``: look at a cluster set-up before a run uses it."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cluster import serve_gpu_workers
from pipeline.slurm import load_slurm_settings, new_cluster
from pipeline.worker_environment import shell_exports


@click.group("cluster")
def cluster_command() -> None:
    """Cluster set-ups (--cluster slurm:FILE, or workers started by hand)."""


@cluster_command.command("workers")
@click.argument("address")
@click.option(
    "--workers-per-gpu",
    default=8,
    show_default=True,
    help="Worker processes on each visible GPU, each pinned to it.",
)
@click.option(
    "--threads", default=2, show_default=True, help="Blocks each worker runs at once (Dask threads)."
)
@click.option(
    "--mps/--no-mps",
    default=None,
    help="Run the workers under an NVIDIA MPS daemon started for them, or not (default: where several "
    "share a GPU and NVIDIA's control program is on PATH).",
)
@click.option("--health-port", type=int, help="The first worker answers /health on this port.")
@click.option("--local-directory", help="Folder for the workers' scratch files.")
def workers(
    address: str,
    workers_per_gpu: int,
    threads: int,
    mps: bool | None,
    health_port: int | None,
    local_directory: str | None,
) -> None:
    """Worker processes for the Dask scheduler at ADDRESS: --workers-per-gpu on each GPU of
    CUDA_VISIBLE_DEVICES (or every GPU), each seeing only its own, until stopped (Ctrl-C, SIGTERM).
    dask-cuda's `dask cuda worker` starts one per GPU, too few to keep a fast GPU busy."""
    serve_gpu_workers(
        address,
        workers_per_gpu,
        threads,
        mps="auto" if mps is None else mps,
        health_port=health_port,
        local_directory=local_directory,
    )


@cluster_command.command("job-script")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def job_script(file: Path) -> None:
    """Print the SLURM job script of one worker that FILE sets up (nothing is submitted)."""
    with new_cluster(load_slurm_settings(file)) as cluster:
        click.echo(cluster.job_script())


@cluster_command.command("worker-env")
@click.option("--dashboard", is_flag=True, help="Keep Dask's sampling profiler on (it feeds the dashboard).")
def worker_env(dashboard: bool) -> None:
    """Print the environment the workers unet-pipeline starts get (malloc settings, Dask's
    housekeeping), as shell ``export`` lines for workers you start yourself (`dask worker ...`)."""
    for line in shell_exports(dashboard):
        click.echo(line)
