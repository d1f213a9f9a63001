"""The demo job: segment a synthetic acquisition with the shipped model, and score it against the truth.

Makes synthetic nuclei acquisitions with their exact labels (OME-Zarr), runs
the same ``segment`` a nightly run uses, on a local Dask cluster, with the
demo model shipped in ``models/`` (trained on other synthetic seeds by
``make demo-model``), and reports objects found against the truth,
foreground IoU, instance F1, touching nuclei kept apart, and throughput.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import pipeline
from pipeline.checkpoint import load_checkpoint
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.metrics import score_volume
from pipeline.picture import write_png
from pipeline.preview import render_preview
from pipeline.run import SegmentRequest, segment
from pipeline.synthetic import write_synthetic_acquisition

log = logging.getLogger(__name__)

DEMO_MODEL = Path(pipeline.__file__).resolve().parents[1] / "models" / "demo-unet.safetensors"
DEMO_SHAPE = (8, 1200, 1200)
DEMO_2D_SHAPE = (900, 1100)
DEMO_CHUNKS = (1, 400, 400)
DEMO_SEED = 2026  # never used in training (models/README.md lists the training seeds)
DEMO_CONFIG = """\
# the demo's run config (configs/default.yaml documents every key)
cluster: {workers: 2}
"""


@dataclass(frozen=True, slots=True)
class DemoResult:
    input_url: str
    output_url: str
    checkpoint: Path
    config: Path
    picture: Path
    record: dict[str, Any]
    scores: dict[str, Any]


def run_demo(out_dir: Path, model: Path | None = None) -> DemoResult:
    """Write the acquisitions, segment the 3D one, score it against its truth, draw a preview.

    ``OUT/acquisitions`` gets a ZYX and a YX acquisition, each with its ready
    marker: the nightly flow's demo segments that folder.
    """
    checkpoint = model or DEMO_MODEL
    if not checkpoint.exists():
        raise InputError(f"no demo model at {checkpoint}: `make demo-model` trains it (or pass --model)")
    load_checkpoint(checkpoint)
    acquisitions = out_dir / "acquisitions"
    acquisitions.mkdir(parents=True, exist_ok=True)
    input_url = _write_acquisition(acquisitions / "nuclei-3d.ome.zarr", DEMO_SHAPE, DEMO_SEED)
    _write_acquisition(acquisitions / "nuclei-2d.ome.zarr", DEMO_2D_SHAPE, DEMO_SEED + 1)
    config_path = out_dir / "demo-config.yaml"
    config_path.write_text(DEMO_CONFIG)
    output_url = str(out_dir / "segmentation.ome.zarr")
    request = SegmentRequest(input_url, output_url, checkpoint, load_config(config_path), overwrite=True)
    record = segment(request)
    predicted = np.asarray(zarr.open_array(f"{output_url}/labels/cells/s0", mode="r")[...])
    truth = np.asarray(zarr.open_array(f"{input_url}/labels/truth/s0", mode="r")[...])
    scores = score_volume(predicted, truth)
    (out_dir / "demo-scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    picture = write_png(out_dir / "preview.png", render_preview(output_url, max_pixels=1200))
    return DemoResult(input_url, output_url, checkpoint, config_path, picture, record, scores)


def _write_acquisition(path: Path, shape: tuple[int, ...], seed: int) -> str:
    """An acquisition as a microscope would leave it: data first, then the ready marker."""
    chunks = DEMO_CHUNKS[-len(shape) :]
    write_synthetic_acquisition(str(path), shape, chunks, seed=seed)
    path.with_name(path.name + ".ready").touch()
    return str(path)
