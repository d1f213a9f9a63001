"""``unet-pipeline cluster``: look at a cluster set-up before a run uses it."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.slurm import load_slurm_settings, new_cluster


@click.group("cluster")
def cluster_command() -> None:
    """Cluster set-ups (--cluster slurm:FILE)."""


@cluster_command.command("job-script")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def job_script(file: Path) -> None:
    """Print the SLURM job script of one worker that FILE sets up (nothing is submitted)."""
    with new_cluster(load_slurm_settings(file)) as cluster:
        click.echo(cluster.job_script())
