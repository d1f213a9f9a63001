"""NGFF 0.4 (Zarr v2) and 0.5 (Zarr v3) outputs: the same arrays, each valid and readable without us."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.synthetic import cell_image
from tests.conftest import write_small_setup, write_volume

SETTINGS = {
    "tiling": {"tile": 36, "shard_tiles": 2, "block_tiles": [2, 2]},
    "profile": {"batch_size": 2},
    "output": {"pyramid_levels": 2},
}

READERS = """
import json, sys
import zarr, dask.array as da
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.{models}.image import Image
from ome_zarr_models.{models}.image_label import ImageLabel
output = sys.argv[1]
Image.from_zarr(zarr.open_group(output, mode="r"))
ImageLabel.from_zarr(zarr.open_group(output + "/labels/cells", mode="r"))
nodes = list(Reader(parse_url(output))())
print(json.dumps({{
    "format": zarr.open_group(output, mode="r").metadata.zarr_format,
    "levels": [list(level.shape) for level in nodes[0].data],
    "dask_max": int(da.from_zarr(output, component="labels/cells/s0").max().compute()),
    "imported_pipeline": "pipeline" in sys.modules,
}}))
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, dask_address: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ngff")
    source = write_volume(root / "in.zarr", cell_image((2, 150, 170), seed=12), (1, 64, 64))
    checkpoint, config = write_small_setup(root, {**SETTINGS, "cluster": {"address": dask_address}}, seed=6)
    made = {}
    for version in ("0.5", "0.4"):
        output = root / f"out-{version}.ome.zarr"
        args = ["segment", source, str(output), "--model", str(checkpoint), "--config", str(config)]
        result = CliRunner().invoke(cli, [*args, "--ngff", version, "--no-progress"])
        assert result.exit_code == 0, result.output
        made[version] = output
    return made


def test_both_versions_hold_the_same_arrays(outputs: dict[str, Path]) -> None:
    newer, older = outputs["0.5"], outputs["0.4"]
    assert (older / ".zattrs").exists() and not (older / "zarr.json").exists()
    for level in ("s0", "s1", "s2", "labels/cells/s0", "labels/cells/s2"):
        v3 = zarr.open_array(str(newer / level), mode="r")
        v2 = zarr.open_array(str(older / level), mode="r")
        assert v2.metadata.zarr_format == 2 and v3.metadata.zarr_format == 3
        assert v2.chunks == v3.chunks == (1, 36, 36)
        assert np.array_equal(v2[...], v3[...]), level
    assert zarr.open_array(str(newer / "labels/cells/s0"), mode="r")[...].max() > 0
    attrs = dict(zarr.open_group(str(older), mode="r").attrs)
    assert attrs["multiscales"][0]["version"] == "0.4" and attrs["unet_pipeline"]["complete"] is True
    assert (older / "s0" / "0" / "0" / "0").exists()  # "/"-separated chunk keys, as NGFF 0.4 asks


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_each_version_validates_and_opens_in_the_readers(outputs: dict[str, Path], version: str) -> None:
    script = READERS.format(models="v05" if version == "0.5" else "v04")
    result = subprocess.run(
        [sys.executable, "-c", script, str(outputs[version])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["format"] == (3 if version == "0.5" else 2)
    assert report["levels"] == [[2, 150, 170], [2, 75, 85], [2, 38, 43]]
    assert report["dask_max"] > 0
    assert report["imported_pipeline"] is False
