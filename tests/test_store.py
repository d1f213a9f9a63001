from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.store import PixelSize, fingerprint, normalization_sample, open_input, read_mirrored
from tests.conftest import write_volume


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_arrays_of_both_formats(tmp_path: Path, rng: np.random.Generator, zarr_format: int) -> None:
    data = rng.integers(0, 4000, size=(2, 50, 60), dtype=np.uint16)
    volume = open_input(write_volume(tmp_path / "v.zarr", data, (1, 16, 16), zarr_format))
    assert volume.ref.axes == "zyx"
    assert volume.shape_zyx == (2, 50, 60)
    assert volume.description == f"Zarr v{zarr_format} array"
    assert np.array_equal(volume.read_window(range(2), (0, 50), (0, 60)), data)


def test_yx_array_gets_a_plane_axis(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.random((30, 40), dtype=np.float32)
    volume = open_input(write_volume(tmp_path / "v.zarr", data, (16, 16)))
    assert volume.ref.axes == "yx"
    assert volume.shape_zyx == (1, 30, 40)
    assert np.array_equal(volume.read_window(range(1), (0, 30), (0, 40))[0], data)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_level_0_axes_and_pixel_sizes(tmp_path: Path, version: str) -> None:
    path = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    group.create_array("0", shape=(3, 40, 50), chunks=(1, 20, 20), dtype="uint8")
    group.create_array("1", shape=(3, 20, 25), chunks=(1, 20, 20), dtype="uint8")
    multiscale = {
        "axes": [
            {"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"},
        ],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.25, 0.25]}]},
            {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]},
        ],
    }
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    volume = open_input(str(path))
    assert volume.ref.path == "0"
    assert volume.shape_zyx == (3, 40, 50)
    assert volume.pixel_sizes["y"] == PixelSize(0.25, "micrometer")
    assert volume.pixel_sizes["z"] == PixelSize(2.0, "micrometer")
    assert volume.description == f"OME-Zarr {version} image, level 0"


def test_group_with_one_array_is_used(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(10, 10), chunks=(5, 5), dtype="uint16")
    assert open_input(str(tmp_path / "g.zarr")).ref.path == "raw"


def test_group_with_several_arrays_asks_for_one(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for name in ("a", "b"):
        group.create_array(name, shape=(10, 10), chunks=(5, 5), dtype="uint16")
    with pytest.raises(InputError, match=r"holding arrays \['a', 'b'\]; point at one array"):
        open_input(str(tmp_path / "g.zarr"))


def test_unsupported_axes(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
    group.create_array("0", shape=(2, 10, 10), chunks=(1, 5, 5), dtype="uint8")
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": [{"name": "a"}, {"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}],
    }
    with pytest.raises(InputError, match=r"t\.zarr: axes AYX \(A=2, Y=10, X=10\); a run needs Y and X"):
        open_input(str(tmp_path / "t.zarr"))


def test_missing_path_and_not_zarr(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no input at .*absent\.zarr"):
        open_input(str(tmp_path / "absent.zarr"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is not a Zarr array or group"):
        open_input(str(tmp_path / "empty"))
    (tmp_path / "scan.ome.tif").write_bytes(b"II*\x00")
    with pytest.raises(InputError, match=r"cannot read .*scan\.ome\.tif as TIFF"):
        open_input(str(tmp_path / "scan.ome.tif"))


@pytest.mark.parametrize("dtype", ["int32", "float64", "bool"])
def test_unsupported_dtypes(tmp_path: Path, dtype: str) -> None:
    path = write_volume(tmp_path / "v.zarr", np.zeros((4, 4), dtype=dtype), (4, 4))
    with pytest.raises(InputError, match=f"unsupported dtype {dtype}; supported are uint8, uint16, float32"):
        open_input(path)


@pytest.mark.parametrize("ndim", [1, 4])
def test_plain_arrays_must_be_yx_or_zyx(tmp_path: Path, ndim: int) -> None:
    path = write_volume(tmp_path / "v.zarr", np.zeros((3,) * ndim, np.uint8), (3,) * ndim)
    with pytest.raises(InputError, match=f"a {ndim}-d array"):
        open_input(path)


@settings(max_examples=40)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    chunk=st.integers(1, 17),
    data=st.data(),
)
def test_mirrored_window_equals_numpy_pad(height: int, width: int, chunk: int, data: st.DataObject) -> None:
    plane = np.arange(height * width, dtype=np.uint16).reshape(1, height, width)
    array = zarr.create_array(
        zarr.storage.MemoryStore(), shape=plane.shape, chunks=(1, chunk, chunk), dtype="uint16"
    )
    array[...] = plane
    pad = 50
    padded = np.pad(plane[0], pad, mode="reflect")
    y0 = data.draw(st.integers(-pad, height + pad - 1))
    y1 = data.draw(st.integers(y0 + 1, height + pad))
    x0 = data.draw(st.integers(-pad, width + pad - 1))
    x1 = data.draw(st.integers(x0 + 1, width + pad))
    window = read_mirrored(array, range(1), (y0, y1), (x0, x1))
    assert np.array_equal(window[0], padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad])


def test_sample_is_deterministic_and_fingerprint_sees_content(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = rng.integers(0, 60000, size=(4, 64, 64), dtype=np.uint16)
    first = open_input(write_volume(tmp_path / "a.zarr", data, (1, 16, 16)))
    assert np.array_equal(normalization_sample(first, 8, 10_000), normalization_sample(first, 8, 10_000))
    assert normalization_sample(first, 8, 1000).size <= 1000
    changed = data.copy()
    changed[...] += 1
    second = open_input(write_volume(tmp_path / "b.zarr", changed, (1, 16, 16)))
    assert fingerprint(first)["content_sha256"] != fingerprint(second)["content_sha256"]
    assert fingerprint(first)["shape"] == [4, 64, 64]
