"""TIFF and OME-TIFF inputs: read lazily, the same output as the same data in Zarr."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.geometry import read_amplification
from pipeline.run import SegmentRequest, segment
from pipeline.store import PixelSize, open_input, read_mirrored
from pipeline.synthetic import cell_image, write_synthetic_acquisition
from tests.conftest import write_ome_tiff, write_small_setup, write_volume

SHAPE = (3, 150, 170)
SETTINGS = {
    "tiling": {"tile": 100, "shard_tiles": 1, "block_tiles": [1, 1]},  # 2 x 2 blocks a plane, ragged
    "profile": {"batch_size": 2},
    "output": {"dtype": "float32", "pyramid_levels": 1},
}


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return cell_image(SHAPE, seed=21)


def write_inputs(folder: Path, data: np.ndarray) -> dict[str, str]:
    """The same volume in every form a facility might hand us."""
    ome_tiff = write_ome_tiff(folder / "tiled.ome.tif", data, "ZYX", (1.5, 0.25, 0.25), compression="zlib")
    striped = folder / "striped.tif"
    tifffile.imwrite(striped, data, rowsperstrip=7, compression="lzw", photometric="minisblack")
    imagej = folder / "imagej.tif"
    tifffile.imwrite(
        imagej,
        data,
        imagej=True,
        resolution=(4.0, 4.0),
        compression="zstd",
        metadata={"axes": "ZYX", "spacing": 1.5, "unit": "micron"},
    )
    ome_zarr = folder / "image.ome.zarr"
    write_synthetic_acquisition(str(ome_zarr), SHAPE, (1, 64, 64), seed=21)
    zarr.open_array(f"{ome_zarr}/s0", mode="r+")[...] = data
    return {
        "zarr-v2": write_volume(folder / "v2.zarr", data, (1, 50, 50), zarr_format=2),
        "zarr-v3": write_volume(folder / "v3.zarr", data, (1, 64, 64)),
        "ome-zarr": str(ome_zarr),
        "ome-tiff-tiled": ome_tiff,
        "tiff-striped-lzw": str(striped),
        "imagej-tiff-zstd": str(imagej),
    }


def test_tiff_reads_equal_the_data_and_touch_only_their_window(tmp_path: Path, data: np.ndarray) -> None:
    inputs = write_inputs(tmp_path, data)
    tiled = open_input(inputs["ome-tiff-tiled"])
    assert tiled.ref.axes == "zyx"
    assert tiled.array.chunks == (1, 64, 64)  # the file's tiles are the Zarr chunks: nothing else is read
    assert "OME-TIFF" in tiled.description and "tiled 64 x 64" in tiled.description
    window = read_mirrored(tiled.array, range(1, 3), (-20, 80), (100, 190))
    expected = np.pad(data, ((0, 0), (20, 20), (20, 20)), mode="reflect")[1:3, 0:100, 120:210]
    assert np.array_equal(window, expected)
    striped = open_input(inputs["tiff-striped-lzw"])
    assert striped.array.chunks == (1, 7, SHAPE[2])
    assert np.array_equal(striped.array[...], data)


def test_pixel_sizes_come_from_ome_xml_and_imagej_metadata(tmp_path: Path, data: np.ndarray) -> None:
    inputs = write_inputs(tmp_path, data)
    ome = open_input(inputs["ome-tiff-tiled"]).pixel_sizes
    assert ome == {
        "z": PixelSize(1.5, "micrometer"),
        "y": PixelSize(0.25, "micrometer"),
        "x": PixelSize(0.25, "micrometer"),
    }
    imagej = open_input(inputs["imagej-tiff-zstd"]).pixel_sizes
    assert imagej == {
        "z": PixelSize(1.5, "micrometer"),
        "y": PixelSize(0.25, "micrometer"),
        "x": PixelSize(0.25, "micrometer"),
    }
    assert open_input(inputs["tiff-striped-lzw"]).pixel_sizes == {}


def test_every_input_form_gives_the_same_output_arrays(
    tmp_path: Path, data: np.ndarray, dask_address: str
) -> None:
    (tmp_path / "in").mkdir()
    inputs = write_inputs(tmp_path / "in", data)
    checkpoint, config_path = write_small_setup(tmp_path, SETTINGS, seed=8)
    config = load_config(config_path, overrides={"cluster.address": dask_address})
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, url in inputs.items():
        output = tmp_path / "out" / f"{name}.ome.zarr"
        record = segment(SegmentRequest(url, str(output), checkpoint, config, show_progress=False))
        assert record["status"] == "complete"
        outputs[name] = (
            zarr.open_array(f"{output}/s0", mode="r")[...],
            zarr.open_array(f"{output}/labels/cells/s0", mode="r")[...],
        )
    reference_probability, reference_labels = outputs["zarr-v3"]
    assert reference_labels.max() > 0
    for name, (probability, labels) in outputs.items():
        assert np.array_equal(probability, reference_probability), name
        assert np.array_equal(labels, reference_labels), name
    scale = _scale(tmp_path / "out" / "ome-tiff-tiled.ome.zarr")
    assert scale == [1.5, 0.25, 0.25]


def _scale(output: Path) -> list[float]:
    attrs: dict[str, Any] = dict(zarr.open_group(str(output), mode="r").attrs)
    level = attrs["ome"]["multiscales"][0]["datasets"][0]
    return [float(v) for v in level["coordinateTransformations"][0]["scale"]]


@pytest.mark.parametrize(
    ("shape", "write", "expected"),
    [
        ((2, 3, 40, 50), {"metadata": {"axes": "CZYX"}}, "axes CZYX (C=2, Z=3, Y=40, X=50)"),
        ((2, 40, 50, 3), {"photometric": "rgb", "planarconfig": "contig"}, "(C=2, Y=40, X=50, C=3)"),
    ],
)
def test_tiff_axes_without_a_choice_are_named(
    tmp_path: Path, shape: tuple[int, ...], write: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "multi.ome.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint16), ome=True, **write)
    with pytest.raises(InputError, match=str(path)) as error:
        open_input(str(path))
    assert expected in str(error.value)


def test_a_damaged_tiff_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.zeros((2, 64, 64), np.uint16), photometric="minisblack")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match=f"cannot read {path} as TIFF"):
        open_input(str(path))


def test_read_amplification_counts_the_voxels_a_window_decodes() -> None:
    assert read_amplification((1, 4000, 4000), (1, 1, 1), (1, 572, 572)) == 1.0
    assert read_amplification((1, 4000, 4000), (1, 4000, 4000), (1, 572, 572)) == pytest.approx(
        (4000 / 572) ** 2
    )
    strips = read_amplification((1, 4000, 4000), (1, 16, 4000), (1, 572, 572))
    assert strips == pytest.approx((572 - 1 + 16) / 572 * 4000 / 572)
    assert read_amplification((1, 300, 300), (1, 300, 300), (1, 572, 572)) == 1.0  # the window is the plane


def test_a_plane_stored_as_one_strip_is_named_and_rechunk_fixes_it(
    tmp_path: Path, dask_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    one_strip = tmp_path / "one-strip.tif"
    plane = cell_image((1100, 1200), seed=5)
    tifffile.imwrite(
        one_strip,
        plane,
        rowsperstrip=plane.shape[0],
        photometric="minisblack",
        resolution=(20000.0, 20000.0),
        resolutionunit="CENTIMETER",
    )
    before = hashlib.sha256(one_strip.read_bytes()).hexdigest()
    # blocks of 2 x 2 tiles of 100 px read windows of 240 px: the one strip decodes 23x what a block
    # uses, 512 x 512 chunks under 10x; a tile of 100 px carries a quarter of the halo of 36 px tiles
    checkpoint, config_path = write_small_setup(
        tmp_path, {**SETTINGS, "tiling": {"tile": 100, "shard_tiles": 1, "block_tiles": [2, 2]}}, seed=8
    )
    config = load_config(config_path, overrides={"cluster.address": dask_address})
    with caplog.at_level(logging.WARNING, logger="pipeline.run_checks"):
        record = segment(
            SegmentRequest(
                str(one_strip), str(tmp_path / "a.ome.zarr"), checkpoint, config, show_progress=False
            )
        )
    assert record["input_layout"]["read_amplification"] > 4
    warning = next(r.getMessage() for r in caplog.records if "rechunk" in r.getMessage())
    assert str(one_strip) in warning and "1 x 1100 x 1200" in warning
    copy = tmp_path / "copy.ome.zarr"
    result = CliRunner().invoke(cli, ["rechunk", str(one_strip), str(copy), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(one_strip.read_bytes()).hexdigest() == before
    rechunked = open_input(str(copy))
    assert rechunked.array.chunks == (512, 512)
    sizes = open_input(str(one_strip)).pixel_sizes
    assert sizes == {"y": PixelSize(0.5, "micrometer"), "x": PixelSize(0.5, "micrometer")}
    assert {axis: rechunked.pixel_sizes[axis] for axis in "yx"} == sizes
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.run_checks"):
        again = segment(
            SegmentRequest(str(copy), str(tmp_path / "b.ome.zarr"), checkpoint, config, show_progress=False)
        )
    assert again["input_layout"]["read_amplification"] < record["input_layout"]["read_amplification"] / 2
    for level in ("s0", "labels/cells/s0"):
        assert np.array_equal(
            zarr.open_array(f"{tmp_path}/a.ome.zarr/{level}", mode="r")[...],
            zarr.open_array(f"{tmp_path}/b.ome.zarr/{level}", mode="r")[...],
        )
