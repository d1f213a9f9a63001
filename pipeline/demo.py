"""The demo job: segment a small embedded example through the real code path."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.picture import side_by_side, to_uint8, write_png
from pipeline.predict import predict_plane
from pipeline.synthetic import cell_image

log = logging.getLogger(__name__)

DEMO_SHAPE = (700, 900)  # 2 x 3 tiles of 388 px, ragged on both axes


@dataclass(frozen=True, slots=True)
class DemoResult:
    checkpoint: Path
    picture: Path
    probabilities: Path
    shape: tuple[int, int]
    tiles: int
    seconds: float
    foreground_fraction: float
    objects: int


def run_demo(out_dir: Path, *, base_channels: int = 8, seed: int = 0) -> DemoResult:
    """Make a synthetic plane, an initialised checkpoint, and predict it tile by tile."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plane = cell_image(DEMO_SHAPE, seed=seed)
    checkpoint_path = out_dir / "model-untrained.safetensors"
    log.info("initialising an untrained U-Net (base %d channels) at %s", base_channels, checkpoint_path)
    save_checkpoint(
        checkpoint_path,
        _initialised(base_channels, seed),
        normalization=Normalization("percentile", 1.0, 99.8),
        training={"status": "untrained", "seed": seed},
    )
    checkpoint = load_checkpoint(checkpoint_path)
    stats = checkpoint.normalization.statistics(plane)
    started = time.perf_counter()
    probabilities = predict_plane(checkpoint.model, stats.apply(plane), batch_size=4)
    seconds = time.perf_counter() - started
    foreground = probabilities[1]
    _, objects = scipy.ndimage.label(foreground >= 0.5)
    probabilities_path = out_dir / "probabilities.npy"
    np.save(probabilities_path, foreground)
    picture = write_png(
        out_dir / "demo.png", side_by_side(to_uint8(plane), to_uint8(foreground, 0.0, 1.0))
    )
    rows, cols = (-(-n // 388) for n in DEMO_SHAPE)
    return DemoResult(
        checkpoint=checkpoint_path,
        picture=picture,
        probabilities=probabilities_path,
        shape=DEMO_SHAPE,
        tiles=rows * cols,
        seconds=seconds,
        foreground_fraction=float((foreground >= 0.5).mean()),
        objects=int(objects),
    )


def _initialised(base_channels: int, seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(base_channels=base_channels)
