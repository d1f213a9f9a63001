"""Volumes at the edges of what a run meets: they must just work, and give the right answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
import yaml
import zarr
from click.testing import CliRunner

from pipeline.checkpoint import save_checkpoint
from pipeline.cli import cli
from pipeline.demo import DEMO_MODEL
from pipeline.labels import Connectivity
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.synthetic import cell_image
from tests.conftest import write_volume

SMALL = {"tiling": {"tile": 36, "shard_tiles": 1, "block_tiles": [1, 1]}, "output": {"dtype": "float32"}}


def segment(tmp_path: Path, data: np.ndarray, model: Path, settings: dict[str, object], address: str) -> Path:
    source = write_volume(tmp_path / "in.zarr", data, tuple(min(n, 64) for n in data.shape))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**settings, "cluster": {"address": address}}))
    output = tmp_path / "out.ome.zarr"
    args = ["segment", source, str(output), "--model", str(model), "--config", str(config), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return output


def last_run(output: Path) -> dict[str, object]:
    state = dict(zarr.open_group(str(output), mode="r").attrs)["unet_pipeline"]
    assert state["complete"] is True
    run: dict[str, object] = state["runs"][-1]
    return run


def test_an_all_zero_volume_has_no_objects(tmp_path: Path, dask_address: str) -> None:
    output = segment(tmp_path, np.zeros((2, 300, 260), np.uint16), DEMO_MODEL, {}, dask_address)
    assert json.loads(json.dumps(last_run(output)["labels"]))["objects"] == 0
    assert not zarr.open_array(str(output / "labels/cells/s0"), mode="r")[...].any()


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 1), (3, 1, 5)])
def test_the_smallest_volumes_segment(tmp_path: Path, dask_address: str, shape: tuple[int, ...]) -> None:
    data = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape) * 1000
    torch.manual_seed(1)
    model = tmp_path / "small.safetensors"
    save_checkpoint(model, UNet(base_channels=2, depth=3), normalization=Normalization())
    output = segment(tmp_path, data, model, SMALL, dask_address)
    last_run(output)
    for level in ("s0", "labels/cells/s0"):
        assert zarr.open_array(str(output / level), mode="r").shape == shape


def test_one_object_spanning_every_block_is_one_object(tmp_path: Path, dask_address: str) -> None:
    net = UNet(base_channels=2, depth=3)
    with torch.no_grad():  # a network that calls everything foreground
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([-20.0, 20.0]))
    model = tmp_path / "everything.safetensors"
    save_checkpoint(model, net, normalization=Normalization())
    output = segment(tmp_path, np.ones((3, 150, 170), np.uint16), model, SMALL, dask_address)
    run = last_run(output)
    assert json.loads(json.dumps(run["blocks"]))["total"] == 3 * 5 * 5
    assert json.loads(json.dumps(run["labels"]))["objects"] == 1
    assert (zarr.open_array(str(output / "labels/cells/s0"), mode="r")[...] == 1).all()


def test_the_full_16_bit_range(tmp_path: Path, dask_address: str) -> None:
    rng = np.random.default_rng(4)
    data = rng.choice(np.array([0, 1, 65534, 65535], np.uint16), size=(2, 120, 130))
    torch.manual_seed(2)
    model = tmp_path / "small.safetensors"
    save_checkpoint(model, UNet(base_channels=2, depth=3), normalization=Normalization("minmax"))
    output = segment(tmp_path, data, model, SMALL, dask_address)
    run = last_run(output)
    assert json.loads(json.dumps(run["normalization"])) == {"offset": 0.0, "scale": 1 / 65535}
    probability = zarr.open_array(str(output / "s0"), mode="r")[...]
    assert np.isfinite(probability).all() and 0 <= probability.min() and probability.max() <= 1


def test_more_objects_than_uint32_holds_gives_uint64_labels_equal_to_whole_volume_components(
    tmp_path: Path, dask_address: str
) -> None:
    """The limit lowered to 5 objects stands in for 2**32 - 1: the same code path, on a small volume."""
    torch.manual_seed(2)  # an untrained net that calls ~1 % foreground: a few hundred small objects
    model = tmp_path / "small.safetensors"
    save_checkpoint(model, UNet(base_channels=2, depth=3), normalization=Normalization())
    data = cell_image((2, 120, 140), seed=8)  # 32 one-tile blocks
    settings = {
        **SMALL,
        "labels": {"uint32_max_objects": 5},
        "output": {"dtype": "float32", "pyramid_levels": 1},
    }
    output = segment(tmp_path, data, model, settings, dask_address)
    labels = json.loads(json.dumps(last_run(output)["labels"]))
    probability = zarr.open_array(str(output / "s0"), mode="r")[...]
    expected, count = scipy.ndimage.label(probability >= 0.5, structure=Connectivity().structure())
    assert labels["objects"] == count > 5 and labels["dtype"] == "uint64"
    assert labels["uint32_limit_passed"]["objects"] > 5  # the dtype follows the count: merged again past 5
    for level, step in (("s0", 1), ("s1", 2)):
        stored = zarr.open_array(str(output / "labels" / "cells" / level), mode="r")
        assert stored.dtype == np.uint64
        assert np.array_equal(stored[...], expected[:, ::step, ::step])  # same partition, same canonical IDs
