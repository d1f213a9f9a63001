from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
import zarr
from distributed import LocalCluster
from hypothesis import settings

from pipeline.checkpoint import save_checkpoint
from pipeline.model import UNet
from pipeline.normalization import Normalization

NARROW = {"base_channels": 4, "depth": 5}


@pytest.fixture(scope="session")
def narrow_model() -> UNet:
    """The paper's geometry (572 -> 388) with 4 base channels: cheap on a CPU."""
    torch.manual_seed(1234)
    return UNet(**NARROW).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261126)


# CI machines are shared and slow; hypothesis' per-example deadline only adds flakiness.
settings.register_profile("unet", deadline=None, print_blob=True)
settings.load_profile("unet")


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """A real LocalCluster (2 worker processes, 127.0.0.1) shared by the run tests."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address


def untrained_checkpoint(folder: Path, architecture: dict[str, int], seed: int = 99) -> Path:
    """An untrained U-Net of ``architecture`` (percentile normalisation) saved in ``folder``."""
    torch.manual_seed(seed)
    path = folder / "untrained.safetensors"
    save_checkpoint(path, UNet(**architecture), normalization=Normalization("percentile", 1.0, 99.8))
    return path


@pytest.fixture(scope="session")
def narrow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("models"), NARROW)


def write_volume(path: Path, data: np.ndarray, chunks: tuple[int, ...], zarr_format: int = 3) -> str:
    array = zarr.open_array(
        str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format
    )
    array[...] = data
    return str(path)


def write_small_setup(
    folder: Path, settings: dict[str, Any], seed: int, base_channels: int = 2
) -> tuple[Path, Path]:
    """A small depth-3 checkpoint (tiles of 36 px fit it) and a run config file, in ``folder``."""
    torch.manual_seed(seed)
    model = folder / "small.safetensors"
    save_checkpoint(model, UNet(base_channels=base_channels, depth=3), normalization=Normalization())
    config = folder / "small.yaml"
    config.write_text(yaml.safe_dump(settings))
    return model, config


def write_ome_tiff(
    path: Path, data: np.ndarray, axes: str, sizes: tuple[float, float, float], **options: Any
) -> str:
    """A tiled (64 x 64) OME-TIFF with ``axes`` and pixel sizes (z, y, x) in um."""
    z, y, x = sizes
    metadata = {"axes": axes, "PhysicalSizeX": x, "PhysicalSizeY": y, "PhysicalSizeZ": z}
    tifffile.imwrite(
        path, data, ome=True, tile=(64, 64), photometric="minisblack", metadata=metadata, **options
    )
    return str(path)
