"""``unet-pipeline cluster``: look at a cluster set-up before a run uses it."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.slurm import load_slurm_settings, new_cluster
from pipeline.worker_environment import shell_exports


@click.group("cluster")
def cluster_command() -> None:
    """Cluster set-ups (--cluster slurm:FILE, or workers started by hand)."""


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
