"""The demo job: segment a small embedded example through the real code path.

Makes a synthetic ZYX volume as a chunked Zarr array, an initialised
checkpoint, and runs the same ``segment`` a nightly run uses, on a local
Dask cluster, into an OME-Zarr store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import zarr

from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.picture import side_by_side, to_uint8, write_png
from pipeline.run import SegmentRequest, segment
from pipeline.synthetic import cell_image

log = logging.getLogger(__name__)

DEMO_SHAPE = (4, 700, 900)  # 2 x 3 tiles of 388 px per plane, ragged on both axes
DEMO_CHUNKS = (1, 256, 256)
DEMO_2D_SHAPE = (520, 610)
DEMO_CONFIG = """\
# the demo's run config: small blocks for a small volume (configs/default.yaml documents every key)
cluster: {workers: 2}
profile: {batch_size: 4}
tiling: {shard_tiles: 1, block_tiles: [2, 2], block_planes: 2}  # 4 or 8 windows a block: whole batches
"""


@dataclass(frozen=True, slots=True)
class DemoResult:
    input_url: str
    output_url: str
    checkpoint: Path
    config: Path
    picture: Path
    record: dict[str, Any]


def run_demo(out_dir: Path, *, base_channels: int = 8, seed: int = 0) -> DemoResult:
    """Make the example acquisitions and an untrained checkpoint, segment one, draw plane 0.

    ``OUT/acquisitions`` gets a ZYX and a YX acquisition, each with its ready
    marker: the nightly flow's demo segments that folder.
    """
    acquisitions = out_dir / "acquisitions"
    acquisitions.mkdir(parents=True, exist_ok=True)
    volume = cell_image(DEMO_SHAPE, seed=seed)
    input_url = _write_acquisition(acquisitions / "cells-3d.zarr", volume, DEMO_CHUNKS)
    _write_acquisition(acquisitions / "cells-2d.zarr", cell_image(DEMO_2D_SHAPE, seed=seed + 1), (256, 256))
    checkpoint = out_dir / "model-untrained.safetensors"
    torch.manual_seed(seed)
    log.info("initialising an untrained U-Net (base %d channels) at %s", base_channels, checkpoint)
    save_checkpoint(
        checkpoint,
        UNet(base_channels=base_channels),
        normalization=Normalization("percentile", 1.0, 99.8),
        training={"status": "untrained", "seed": seed},
    )
    config_path = out_dir / "demo-config.yaml"
    config_path.write_text(DEMO_CONFIG)
    output_url = str(out_dir / "segmentation.ome.zarr")
    record = segment(
        SegmentRequest(input_url, output_url, checkpoint, load_config(config_path), overwrite=True)
    )
    probability = zarr.open_array(f"{output_url}/s0", mode="r")[0]
    picture = write_png(
        out_dir / "demo.png", side_by_side(to_uint8(volume[0]), to_uint8(np.asarray(probability), 0, 255))
    )
    return DemoResult(input_url, output_url, checkpoint, config_path, picture, record)


def _write_acquisition(path: Path, data: npt.NDArray[Any], chunks: tuple[int, ...]) -> str:
    """A Zarr array as a microscope would leave it: data first, then the ready marker."""
    target = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype)
    target[...] = data
    path.with_name(path.name + ".ready").touch()
    return str(path)
