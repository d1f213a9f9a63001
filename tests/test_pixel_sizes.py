"""Pixel sizes: the model's against the input's, refused or resampled; exact in the model's grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.cli import cli
from pipeline.errors import InputError
from pipeline.model import UNet
from pipeline.normalization import Normalization, NormalizationStats
from pipeline.pixels import check_scale
from pipeline.resample import ResampledArray
from pipeline.store import PixelSize, open_input
from pipeline.synthetic import cell_image, write_synthetic_acquisition
from tests.canonical import canonical_prediction

UM = "micrometer"
SETTINGS = {
    "tiling": {"tile": 36, "shard_tiles": 1, "block_tiles": [2, 2]},
    "profile": {"batch_size": 1},
    "output": {"dtype": "float32", "pyramid_levels": 1},
}


def test_sizes_within_tolerance_match_and_others_are_refused_with_both_figures() -> None:
    model = {"y": 0.5, "x": 0.5}
    near = {"y": PixelSize(520.0, "nanometer"), "x": PixelSize(0.52, UM)}
    assert check_scale("in.zarr", near, model, tolerance=0.1, rescale=False).verdict == "match"
    far = {"y": PixelSize(0.1, UM), "x": PixelSize(0.1, UM)}
    with pytest.raises(
        InputError, match=r"in\.zarr: pixel size 0\.1 x 0\.1 um \(y, x\) differs from the model's "
    ):
        check_scale("in.zarr", far, model, tolerance=0.1, rescale=False)
    rescaled = check_scale("in.zarr", far, model, tolerance=0.1, rescale=True)
    assert rescaled.verdict == "rescaled" and rescaled.factors == pytest.approx({"y": 0.2, "x": 0.2})
    unitless = {"y": PixelSize(1.0), "x": PixelSize(1.0)}
    assert check_scale("in.zarr", unitless, model, tolerance=0.1, rescale=False).verdict.startswith("unknown")
    with pytest.raises(
        InputError, match="--rescale needs the pixel sizes of both input and model; the model"
    ):
        check_scale("in.zarr", far, None, tolerance=0.1, rescale=True)


@given(
    factors=st.tuples(st.sampled_from([0.5, 0.7, 1.0, 1.6, 2.0]), st.sampled_from([0.45, 1.0, 1.3, 3.0])),
    data=st.data(),
)
def test_a_resampled_window_equals_the_same_window_of_the_whole(
    factors: tuple[float, float], data: st.DataObject
) -> None:
    source = zarr.array(cell_image((2, 41, 37), seed=3), chunks=(1, 16, 16))
    view = ResampledArray(source, factors)
    whole = view[...]
    assert whole.shape == view.shape and whole.dtype == np.float32
    _, height, width = view.shape
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    assert np.array_equal(view[1:2, y0:y1, x0:x1], whole[1:2, y0:y1, x0:x1])
    assert np.array_equal(view[0, y0, x0:x1], whole[0, y0, x0:x1])
    assert np.array_equal(view[:, ::3, ::2], whole[:, ::3, ::2])


def test_resampling_by_one_is_the_input_and_by_two_interpolates_between_pixels() -> None:
    source = zarr.array(np.arange(20, dtype=np.uint16).reshape(4, 5) * 10, chunks=(2, 2))
    assert np.array_equal(ResampledArray(source, (1.0, 1.0))[...], source[...].astype(np.float32))
    doubled = ResampledArray(source, (2.0, 1.0))[...]
    assert doubled.shape == (8, 5)
    assert doubled[1, 0] == pytest.approx(0.75 * 0 + 0.25 * 50)  # centre of model pixel 1 = input row 0.25


@pytest.fixture
def fine_input(tmp_path: Path) -> str:
    """Nuclei imaged at 0.25 um/px; the model below was trained at 0.5 um/px."""
    url = str(tmp_path / "fine.ome.zarr")
    write_synthetic_acquisition(url, (2, 200, 180), (1, 64, 64), seed=31, pixel_size=0.25)
    return url


@pytest.fixture
def coarse_model(tmp_path: Path) -> Path:
    torch.manual_seed(5)
    path = tmp_path / "coarse.safetensors"
    training = {"status": "trained", "pixel_size_um": {"y": 0.5, "x": 0.5}}
    save_checkpoint(path, UNet(base_channels=2, depth=3), normalization=Normalization(), training=training)
    return path


def test_a_pixel_size_mismatch_is_refused_and_nothing_is_written(
    fine_input: str, coarse_model: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli, ["segment", fine_input, str(tmp_path / "out.ome.zarr"), "--model", str(coarse_model)]
    )
    assert result.exit_code == 2
    assert (
        f"{fine_input}: pixel size 0.25 x 0.25 um (y, x) differs from the model's training pixel size 0.5 x 0.5"
        in result.output
    )
    assert "--rescale" in result.output
    assert not (tmp_path / "out.ome.zarr").exists()


def test_rescale_predicts_on_the_models_grid_and_writes_the_inputs_grid(
    fine_input: str, coarse_model: Path, tmp_path: Path, dask_address: str
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**SETTINGS, "cluster": {"address": dask_address}}))
    output = tmp_path / "out.ome.zarr"
    args = ["segment", fine_input, str(output), "--model", str(coarse_model), "--config", str(config)]
    result = CliRunner().invoke(cli, [*args, "--rescale", "--no-progress"])
    assert result.exit_code == 0, result.output
    stored = zarr.open_array(str(output / "s0"), mode="r")[...]
    labels = zarr.open_array(str(output / "labels/cells/s0"), mode="r")[...]
    assert stored.shape == labels.shape == (2, 200, 180)  # the input's grid
    record = json.loads(CliRunner().invoke(cli, ["inspect", str(output), "--json"]).output)["runs"][-1]
    assert record["pixel_size"]["verdict"] == "rescaled"
    assert record["pixel_size"]["factors"] == {"y": 0.5, "x": 0.5}
    assert record["config"]["input"]["rescale"] is True
    assert set(record["stages"]) >= {"predict", "resample", "contacts", "relabel"}
    attrs = dict(zarr.open_group(str(output), mode="r").attrs)
    scale = attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, 0.25, 0.25]  # the input's pixel size
    assert not (output / "_scratch").exists()
    # exact: the canonical tiling of the whole input resampled to 0.5 um, resampled back, bit for bit
    model = load_checkpoint(coarse_model).model
    stats = NormalizationStats.from_dict(record["normalization"])
    on_model_grid = ResampledArray(open_input(fine_input).array, (0.5, 0.5))[...]
    assert on_model_grid.shape == (2, 100, 90)
    torch.set_num_threads(1)
    predicted = np.stack(
        [canonical_prediction(model, stats.apply(plane), tile=36)[1] for plane in on_model_grid]
    )
    expected = ResampledArray(predicted, (1 / 0.5, 1 / 0.5), (200, 180))[...]
    assert np.array_equal(stored, expected)
    assert np.array_equal(labels, ndimage.label(expected >= 0.5)[0])  # whole-volume components, input grid
