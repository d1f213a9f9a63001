"""napari's OME-Zarr reader opens both output versions (runs where the `viewer` extra is installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.synthetic import cell_image
from tests.conftest import write_small_setup, write_volume

napari_ome_zarr = pytest.importorskip("napari_ome_zarr", reason="the viewer extra is not installed")


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_napari_reads_image_and_labels(tmp_path: Path, version: str) -> None:
    source = write_volume(tmp_path / "in.zarr", cell_image((2, 120, 130), seed=3), (1, 64, 64))
    settings = {
        "tiling": {"tile": 36, "shard_tiles": 1, "block_tiles": [2, 2]},
        "output": {"pyramid_levels": 1},
    }
    checkpoint, config = write_small_setup(tmp_path, settings, seed=2)
    output = str(tmp_path / "out.ome.zarr")
    args = ["segment", source, output, "--model", str(checkpoint), "--config", str(config), "--ngff", version]
    result = CliRunner().invoke(cli, [*args, "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    reader = napari_ome_zarr.napari_get_reader(output)
    assert reader is not None
    layers = {layer_type: data for data, _, layer_type in reader(output)}
    assert set(layers) == {"image", "labels"}
    assert [tuple(level.shape) for level in layers["labels"]] == [(2, 120, 130), (2, 60, 65)]
