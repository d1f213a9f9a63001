"""A run request on an empty uint16 input of any size, for the benchmarks of the driver's work at
TB scale: its chunks unwritten (reading is not what they time), the output's free-space check off
(the output is never written in full)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from pipeline import plan as plan_module
from pipeline.config import load_config
from pipeline.demo import DEMO_MODEL
from pipeline.plan import SegmentRequest


def empty_input_request(
    folder: Path, shape: tuple[int, ...], overrides: dict[str, Any] | None = None, name: str = "in"
) -> SegmentRequest:
    """``folder/<name>.zarr`` (ZYX ``shape``, 1024² chunks) to ``folder/<name>.ome.zarr``, the demo model."""
    source = folder / f"{name}.zarr"
    zarr.create_array(str(source), shape=shape, chunks=(1, 1024, 1024), dtype="uint16")
    plan_module._check_free_space = lambda *_: None
    config = load_config(overrides=overrides)
    return SegmentRequest(
        str(source), str(folder / f"{name}.ome.zarr"), DEMO_MODEL, config, show_progress=False
    )
