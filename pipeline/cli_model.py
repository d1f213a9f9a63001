"""``unet-pipeline model``: create, inspect and convert checkpoints (part of the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from pipeline.checkpoint import convert_state_dict, load_checkpoint, save_checkpoint
from pipeline.errors import InputError
from pipeline.model import UNet, count_parameters
from pipeline.normalization import METHODS, Normalization
from pipeline.predict import PAPER_TILE


@click.group("model")
def model_command() -> None:
    """Create, inspect and convert model checkpoints."""


normalization_option = click.option(
    "--normalization",
    type=click.Choice(METHODS),
    default="percentile",
    show_default=True,
    help="Input normalisation recorded in the checkpoint (percentile: 1 to 99.8).",
)


@model_command.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base-channels", default=64, show_default=True, help="Channels at full resolution.")
@click.option("--depth", default=5, show_default=True, help="Resolution levels, bottleneck included.")
@click.option("--in-channels", default=1, show_default=True)
@click.option("--classes", "n_classes", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the He-normal initialisation.")
@normalization_option
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def model_init(
    path: Path,
    base_channels: int,
    depth: int,
    in_channels: int,
    n_classes: int,
    seed: int,
    normalization: str,
    overwrite: bool,
) -> None:
    """Write an initialised, untrained checkpoint to PATH."""
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it")
    torch.manual_seed(seed)
    try:
        net = UNet(in_channels, n_classes, base_channels, depth)
    except ValueError as error:
        raise InputError(str(error)) from error
    classes = ("background", "foreground") if n_classes == 2 else tuple(f"class{i}" for i in range(n_classes))
    sha256 = save_checkpoint(
        path,
        net,
        normalization=Normalization(normalization),
        classes=classes,
        training={"status": "untrained", "seed": seed},
    )
    click.echo(f"wrote untrained {net.config} ({count_parameters(net):,} parameters) to {path}")
    click.echo(f"sha256 {sha256}")


@model_command.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def model_info(path: Path, as_json: bool) -> None:
    """Architecture, parameter count, geometry and sha256 of a checkpoint."""
    checkpoint = load_checkpoint(path)
    geometry = checkpoint.model.geometry
    tile = PAPER_TILE if geometry.is_valid_input(PAPER_TILE + 2 * geometry.halo) else None
    info = {
        "path": str(path),
        "sha256": checkpoint.sha256,
        "architecture": checkpoint.config.to_dict(),
        "parameters": count_parameters(checkpoint.model),
        "halo": geometry.halo,
        "valid_input_sizes": f"{geometry.pool_factor}k + {geometry.min_input_size % geometry.pool_factor}"
        f" from {geometry.min_input_size}",
        "default_tile": tile,
        "normalization": checkpoint.normalization.to_dict(),
        "classes": list(checkpoint.classes),
        "training": checkpoint.training,
        "package_version": checkpoint.package_version,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key:>18}: {value}")


@model_command.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@normalization_option
@click.option(
    "--pixel-size",
    type=click.FloatRange(min=0, min_open=True),
    help="Y, X pixel size (um) the weights were trained at; runs compare theirs with it.",
)
def model_convert(source: Path, target: Path, normalization: str, pixel_size: float | None) -> None:
    """Convert a torch.save-d state dict of this U-Net into a safe checkpoint."""
    sha256 = convert_state_dict(
        source, target, normalization=Normalization(normalization), pixel_size_um=pixel_size
    )
    click.echo(f"wrote {target} (sha256 {sha256})")
