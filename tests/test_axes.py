"""Many-axis inputs: one channel and one timepoint of a TCZYX acquisition, picked without copying."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import zarr
from click.testing import CliRunner
from scipy import ndimage

from pipeline.axes import VolumeArray, select_volume
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.cli import cli
from pipeline.errors import InputError
from pipeline.model import UNet
from pipeline.normalization import Normalization, NormalizationStats
from pipeline.preview import render_preview
from pipeline.store import PixelSize, open_input
from pipeline.synthetic import cell_image
from tests.canonical import canonical_prediction
from tests.conftest import write_ome_tiff, write_small_setup, write_volume

SPATIAL = (3, 120, 140)
SETTINGS = {
    "tiling": {"tile": 36, "shard_tiles": 1, "block_tiles": [2, 2]},
    "profile": {"batch_size": 2},
    "output": {"dtype": "float32", "pyramid_levels": 1},
}


def tczyx() -> np.ndarray:
    """2 timepoints x 2 channels, every volume different."""
    return np.stack([np.stack([cell_image(SPATIAL, seed=10 * t + c) for c in range(2)]) for t in range(2)])


def write_ome_zarr(path: Path, data: np.ndarray) -> str:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", data=data, chunks=(1, 1, 1, 64, 64))
    kinds = {"t": "time", "c": "channel"}
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {
                        "name": a,
                        "type": kinds.get(a, "space"),
                        **({"unit": "micrometer"} if a in "zyx" else {}),
                    }
                    for a in "tczyx"
                ],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": [60.0, 1, 2.0, 0.3, 0.3]}],
                    }
                ],
            }
        ],
    }
    return str(path)


def test_volume_array_reads_equal_numpy_indexing() -> None:
    data = np.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6)
    view = VolumeArray(zarr.array(data, chunks=(1, 1, 2, 5, 3)), ((0, 1), (1, 2)))
    assert view.shape == (4, 5, 6) and view.chunks == (2, 5, 3) and view.ndim == 3
    assert np.array_equal(view[...], data[1, 2])
    assert np.array_equal(view[1:3, 2], data[1, 2, 1:3, 2])
    assert np.array_equal(view[(slice(0, 4, 2), slice(None), slice(1, 5))], data[1, 2, 0:4:2, :, 1:5])


def test_selection_names_the_axes_and_the_flag() -> None:
    shape = (2, 3, 5, 64, 64)
    assert select_volume("a", "tczyx", shape, channel=2, timepoint=1).fixed == ((0, 1), (1, 2))
    with pytest.raises(
        InputError,
        match=r"a: axes TCZYX \(T=2, C=3, Z=5, Y=64, X=64\): 3 channels; choose one with --channel 0\.\.2",
    ):
        select_volume("a", "tczyx", shape, timepoint=0)
    every = select_volume("a", "tczyx", shape, channel=0)
    assert every.timepoints == 2 and every.merge_time and every.output_axes == "tzyx"
    assert select_volume("a", "tyx", (4, 64, 64)).output_axes == "tyx"
    with pytest.raises(InputError, match=r"T must come before the spatial axes"):
        select_volume("a", "ztyx", (3, 2, 64, 64))
    with pytest.raises(InputError, match=r"--channel 3 is out of range: axes TCZYX"):
        select_volume("a", "tczyx", shape, channel=3, timepoint=0)
    with pytest.raises(InputError, match=r"--channel 1 given, but the input has no such axis \(axes ZYX"):
        select_volume("a", "zyx", (5, 64, 64), channel=1)
    single = select_volume("a", "tczyx", (1, 1, 5, 64, 64))
    assert single.spatial == "zyx" and single.chosen == {"t": 0, "c": 0}
    with pytest.raises(InputError, match=r"axes ZCCYX"):
        select_volume("a", "zccyx", (2, 2, 2, 8, 8), channel=0)


@pytest.mark.parametrize("form", ["ome-zarr", "ome-tiff"])
def test_one_channel_of_one_timepoint_segments_like_that_volume_alone(
    tmp_path: Path, form: str, dask_address: str
) -> None:
    data = tczyx()
    if form == "ome-zarr":
        source = write_ome_zarr(tmp_path / "in.ome.zarr", data)
    else:
        source = write_ome_tiff(tmp_path / "in.ome.tif", data, "TCZYX", (2.0, 0.3, 0.3))
    volume = open_input(source, channel=1, timepoint=1)
    assert volume.ref.axes == "zyx" and volume.selection == {"t": 1, "c": 1}
    assert volume.pixel_sizes["z"] == PixelSize(2.0, "micrometer")
    assert volume.pixel_sizes["x"] == PixelSize(0.3, "micrometer")
    alone = write_volume(tmp_path / "alone.zarr", data[1, 1], (1, 64, 64))
    checkpoint, config = write_small_setup(
        tmp_path, {**SETTINGS, "cluster": {"address": dask_address}}, seed=4
    )
    runner = CliRunner()
    common = ["--model", str(checkpoint), "--config", str(config), "--no-progress"]
    picked = runner.invoke(
        cli,
        ["segment", source, str(tmp_path / "picked.ome.zarr"), "--channel", "1", "--timepoint", "1", *common],
    )
    assert picked.exit_code == 0, picked.output
    reference = runner.invoke(cli, ["segment", alone, str(tmp_path / "alone.ome.zarr"), *common])
    assert reference.exit_code == 0, reference.output
    for level in ("s0", "labels/cells/s0"):
        assert np.array_equal(
            zarr.open_array(f"{tmp_path}/picked.ome.zarr/{level}", mode="r")[...],
            zarr.open_array(f"{tmp_path}/alone.ome.zarr/{level}", mode="r")[...],
        )
    attrs: dict[str, Any] = dict(zarr.open_group(str(tmp_path / "picked.ome.zarr"), mode="r").attrs)
    multiscales = attrs["ome"]["multiscales"][0]
    assert [axis["name"] for axis in multiscales["axes"]] == ["z", "y", "x"]
    assert multiscales["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.3, 0.3]
    record = json.loads(runner.invoke(cli, ["inspect", str(tmp_path / "picked.ome.zarr"), "--json"]).output)
    assert record["runs"][-1]["input"]["selection"] == {"t": 1, "c": 1}
    assert record["runs"][-1]["config"]["input"]["channel"] == 1
    assert record["runs"][-1]["config"]["input"]["timepoint"] == 1
    assert render_preview(str(tmp_path / "picked.ome.zarr"), max_pixels=200).shape == (120, 140, 3)


def test_a_many_channel_input_without_channel_is_refused_naming_it(tmp_path: Path) -> None:
    source = write_ome_zarr(tmp_path / "in.ome.zarr", tczyx())
    checkpoint, _ = write_small_setup(tmp_path, SETTINGS, seed=4)
    result = CliRunner().invoke(
        cli,
        ["segment", source, str(tmp_path / "out.ome.zarr"), "--model", str(checkpoint), "--timepoint", "0"],
    )
    assert result.exit_code == 2
    assert (
        f"{source}: axes TCZYX (T=2, C=2, Z=3, Y=120, X=140): 2 channels; choose one with --channel 0..1"
        in result.output
    )
    assert not (tmp_path / "out.ome.zarr").exists()


def test_volume_array_sees_every_timepoint_as_runs_of_planes() -> None:
    data = np.arange(2 * 3 * 2 * 4 * 5).reshape(2, 3, 2, 4, 5)  # t c z y x
    view = VolumeArray(zarr.array(data, chunks=(1, 1, 1, 4, 5)), ((1, 2),), merge_time=True)
    flat = data[:, 2].reshape(4, 4, 5)
    assert view.shape == (4, 4, 5) and view.chunks == (1, 4, 5) and view.ndim == 3
    assert np.array_equal(view[...], flat)
    assert np.array_equal(view[1:3, 1:3], flat[1:3, 1:3])  # across the timepoint edge
    assert np.array_equal(view[3], flat[3])
    assert np.array_equal(view[::3, :, 2], flat[::3, :, 2])


@pytest.mark.parametrize("block_planes", [1, 3])
def test_every_timepoint_segments_into_tzyx_like_each_timepoint_alone(
    tmp_path: Path, dask_address: str, block_planes: int
) -> None:
    source = write_ome_zarr(tmp_path / "in.ome.zarr", tczyx())
    settings = {
        **SETTINGS,
        "tiling": {**SETTINGS["tiling"], "block_planes": block_planes},
        "profile": {"batch_size": 1},  # the canonical loop's profile
    }
    checkpoint, config = write_small_setup(
        tmp_path, {**settings, "cluster": {"address": dask_address}}, seed=4
    )
    runner = CliRunner()
    common = ["--model", str(checkpoint), "--config", str(config), "--channel", "0", "--no-progress"]
    every = tmp_path / "every.ome.zarr"
    result = runner.invoke(cli, ["segment", source, str(every), *common])
    assert result.exit_code == 0, result.output
    probability = zarr.open_array(str(every / "s0"), mode="r")[...]
    labels = zarr.open_array(str(every / "labels/cells/s0"), mode="r")[...]
    assert probability.shape == labels.shape == (2, *SPATIAL)
    record = json.loads(runner.invoke(cli, ["inspect", str(every), "--json"]).output)["runs"][-1]
    stats = NormalizationStats.from_dict(record["normalization"])  # one normalisation for the whole series
    model = load_checkpoint(checkpoint).model
    torch.set_num_threads(1)
    offset = 0
    for timepoint in range(2):
        volume = stats.apply(tczyx()[timepoint, 0])
        expected = np.stack([canonical_prediction(model, plane, tile=36)[1] for plane in volume])
        assert np.array_equal(probability[timepoint], expected)
        components, count = ndimage.label(expected >= 0.5)  # 3D, faces: within the timepoint only
        components[components > 0] += offset  # IDs run on through the timepoints, in raster order
        assert np.array_equal(labels[timepoint], components)
        offset += count
    assert set(np.unique(labels[0])) & set(np.unique(labels[1])) == {0}
    attrs: dict[str, Any] = dict(zarr.open_group(str(every), mode="r").attrs)
    multiscales = attrs["ome"]["multiscales"][0]
    kinds = [(axis["name"], axis["type"]) for axis in multiscales["axes"]]
    assert kinds == [("t", "time"), ("z", "space"), ("y", "space"), ("x", "space")]
    assert multiscales["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.3, 0.3]
    assert record["input"]["timepoints"] == 2 and record["labels"]["objects"] == offset
    assert render_preview(str(every), max_pixels=200).shape == (120, 140, 3)


def test_a_time_series_of_planes_is_labelled_plane_by_plane(tmp_path: Path, dask_address: str) -> None:
    series = np.stack([cell_image((90, 100), seed=s) for s in range(3)])
    source = tmp_path / "series.ome.tif"
    tifffile.imwrite(source, series, ome=True, photometric="minisblack", metadata={"axes": "TYX"})
    checkpoint, config = write_small_setup(
        tmp_path, {**SETTINGS, "cluster": {"address": dask_address}}, seed=4
    )
    output = tmp_path / "series.ome.zarr"
    args = ["segment", str(source), str(output), "--model", str(checkpoint), "--config", str(config)]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    labels = zarr.open_array(str(output / "labels/cells/s0"), mode="r")[...]
    foreground = zarr.open_array(str(output / "s0"), mode="r")[...] >= 0.5
    assert labels.shape == (3, 90, 100)
    offset = 0
    for plane in range(3):  # objects never join across timepoints, even where they overlap
        components, count = ndimage.label(foreground[plane])
        components[components > 0] += offset
        assert np.array_equal(labels[plane], components)
        offset += count
    axes = dict(zarr.open_group(str(output), mode="r").attrs)["ome"]["multiscales"][0]["axes"]
    assert [axis["name"] for axis in axes] == ["t", "y", "x"]


@pytest.fixture
def two_channel_model(tmp_path: Path) -> Path:
    torch.manual_seed(8)
    path = tmp_path / "two-channel.safetensors"
    save_checkpoint(path, UNet(in_channels=2, base_channels=2, depth=3), normalization=Normalization())
    return path


def test_a_two_channel_model_reads_the_listed_channels_each_normalised_alone(
    tmp_path: Path, two_channel_model: Path, dask_address: str
) -> None:
    data = tczyx()[0]  # CZYX, two channels
    data = np.concatenate([data, (data[:1] // 3).astype(data.dtype)])  # a third, dimmer channel
    group = zarr.open_group(str(tmp_path / "czyx.ome.zarr"), mode="w", zarr_format=3)
    group.create_array("0", data=data, chunks=(1, 1, 64, 64))
    kinds = {"c": "channel"}
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": a, "type": kinds.get(a, "space")} for a in "czyx"],
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 4}]}
                ],
            }
        ],
    }
    source = str(tmp_path / "czyx.ome.zarr")
    settings = {**SETTINGS, "profile": {"batch_size": 1}, "cluster": {"address": dask_address}}
    _, config = write_small_setup(tmp_path, settings, seed=4)
    runner = CliRunner()
    common = ["--model", str(two_channel_model), "--config", str(config), "--no-progress"]
    refused = runner.invoke(cli, ["segment", source, str(tmp_path / "no.ome.zarr"), *common])
    assert refused.exit_code == 2
    assert (
        "axes CZYX (C=3, Z=3, Y=120, X=140): the model takes 2 channels; choose them with --channel 0,1"
        in (refused.output)
    )
    output = tmp_path / "two.ome.zarr"
    result = runner.invoke(cli, ["segment", source, str(output), *common, "--channel", "2,0"])
    assert result.exit_code == 0, result.output
    record = json.loads(runner.invoke(cli, ["inspect", str(output), "--json"]).output)["runs"][-1]
    assert record["input"]["selection"] == {"c": [2, 0]}
    stats = [NormalizationStats.from_dict(channel) for channel in record["normalization"]["channels"]]
    assert stats[0] != stats[1]  # the dim channel has its own map
    stacked = np.stack([stats[0].apply(data[2]), stats[1].apply(data[0])], axis=1)  # (Z, C, Y, X)
    model = load_checkpoint(two_channel_model).model
    torch.set_num_threads(1)
    expected = np.stack([canonical_prediction(model, plane, tile=36)[1] for plane in stacked])
    assert np.array_equal(zarr.open_array(str(output / "s0"), mode="r")[...], expected)
    assert render_preview(str(output), max_pixels=200).shape == (120, 140, 3)
