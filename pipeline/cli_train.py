"""``unet-pipeline train``: the paper's recipe on your annotated images (part of the CLI)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.config import load_train_config
from pipeline.errors import InputError
from pipeline.train import train


@click.command("train")
@click.option("--images", required=True, help="A Zarr / OME-Zarr volume, or a folder of them.")
@click.option(
    "--labels",
    help="Instance labels: a volume, or a folder with the same names (default: labels/ inside each image).",
)
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint."
)
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="Training YAML (configs/train.yaml)."
)
@click.option("--base-channels", type=int, help="Channels at full resolution.")
@click.option("--steps", type=int, help="Optimiser steps.")
@click.option("--seed", type=int, help="Seed of initialisation and sampling.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]))
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
def train_command(
    images: str,
    labels: str | None,
    out: Path,
    config_file: Path | None,
    base_channels: int | None,
    steps: int | None,
    seed: int | None,
    device: str | None,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Train a U-Net on annotated images; the best checkpoint (validation F1) goes to --out."""
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    flags = {"base_channels": base_channels, "steps": steps, "seed": seed, "device": device}
    config = load_train_config(config_file, {key: value for key, value in flags.items() if value is not None})
    summary = train(images, labels, out, config, show_progress=not no_progress)
    best = summary["best"]
    click.echo(
        f"trained {out}: best at step {best['step']} of {config.steps}, validation foreground IoU "
        f"{best['foreground_iou']:.3f}, instance F1 {best['instance_f1']:.3f} ({summary['seconds']} s)"
    )
