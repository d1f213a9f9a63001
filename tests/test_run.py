"""Segment runs on a real Dask cluster: exactness, invariance, output format."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import load_config
from pipeline.model import UNet
from pipeline.normalization import Normalization, NormalizationStats
from pipeline.omezarr import downsample_mean, encode_probability
from pipeline.run import SegmentRequest, segment
from pipeline.synthetic import cell_image
from tests.canonical import canonical_prediction
from tests.conftest import write_volume

SHAPE = (3, 900, 1000)  # 3 x 3 tiles of 388 per plane, ragged on both axes
SMALL_SHAPE = (3, 250, 280)  # 3 x 3 tiles of 100 per plane, ragged on both axes
SMALL_TILE = 100  # a valid output size of a depth-3 U-Net (input 140)


@pytest.fixture(scope="module")
def ragged_volume(tmp_path_factory: pytest.TempPathFactory) -> str:
    data = cell_image(SHAPE, seed=11)
    return write_volume(
        tmp_path_factory.mktemp("in") / "ragged.zarr", data, (1, 300, 256)
    )  # not tile-aligned


def run_segment(
    input_url: str, output: Path, checkpoint: Path, address: str, **overrides: Any
) -> dict[str, Any]:
    config = load_config(overrides={"cluster.address": address, "profile.batch_size": 3, **overrides})
    return segment(SegmentRequest(input_url, str(output), checkpoint, config, show_progress=False))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def canonical_volume(
    input_url: str, checkpoint: Path, stats: NormalizationStats, tile: int = 388
) -> np.ndarray:
    """Plane by plane, the canonical tiling with the run's normalisation, 1 thread as the profile."""
    model = load_checkpoint(checkpoint).model
    data = zarr.open_array(input_url, mode="r")[...]
    with torch_threads(1):
        return np.stack([canonical_prediction(model, stats.apply(plane), tile)[1] for plane in data])


@pytest.fixture(scope="module")
def reference_run(
    ragged_volume: str, narrow_checkpoint: Path, dask_address: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    output = tmp_path_factory.mktemp("out") / "reference.ome.zarr"
    record = run_segment(
        ragged_volume,
        output,
        narrow_checkpoint,
        dask_address,
        **{"tiling.shard_tiles": 1, "tiling.block_tiles": [1, 1], "output.dtype": "float32"},
    )
    return output, record


def test_stitched_output_equals_canonical_tiling_bitwise(
    reference_run: tuple[Path, dict[str, Any]], ragged_volume: str, narrow_checkpoint: Path
) -> None:
    output, record = reference_run
    stats = NormalizationStats.from_dict(record["normalization"])
    expected = canonical_volume(ragged_volume, narrow_checkpoint, stats)
    stored = zarr.open_array(str(output / "s0"), mode="r")[...]
    assert stored.dtype == np.float32
    assert np.array_equal(stored, expected)


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A depth-3 U-Net and a volume tiled by 100 px as the paper's network tiles SHAPE by 388 px.

    Block sizes are arithmetic on the tile grid, whatever the network: with this one a run
    costs its tiling, not the paper's network.
    """
    folder = tmp_path_factory.mktemp("small")
    torch.manual_seed(7)
    checkpoint = folder / "small.safetensors"
    save_checkpoint(
        checkpoint, UNet(base_channels=2, depth=3), normalization=Normalization("percentile", 1.0, 99.8)
    )
    chunks = (1, 64, 96)  # not tile-aligned
    return write_volume(folder / "ragged.zarr", cell_image(SMALL_SHAPE, seed=11), chunks), checkpoint


def run_small(
    small_setup: tuple[str, Path], output: Path, address: str, block_tiles: tuple[int, int], planes: int = 1
) -> dict[str, Any]:
    volume, checkpoint = small_setup
    # one window a batch, as the canonical tiling runs it: this network's CPU kernels give other
    # bits (~1e-7) for batches of 3, another execution profile
    settings = {
        "tiling.tile": SMALL_TILE,
        "tiling.shard_tiles": 1,
        "output.dtype": "float32",
        "profile.batch_size": 1,
    }
    blocks = {"tiling.block_tiles": list(block_tiles), "tiling.block_planes": planes}
    return run_segment(volume, output, checkpoint, address, **settings, **blocks)


@pytest.fixture(scope="module")
def small_reference_run(
    small_setup: tuple[str, Path], dask_address: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    output = tmp_path_factory.mktemp("out") / "small-reference.ome.zarr"
    return output, run_small(small_setup, output, dask_address, (1, 1))


def test_small_reference_equals_canonical_tiling_bitwise(
    small_reference_run: tuple[Path, dict[str, Any]], small_setup: tuple[str, Path]
) -> None:
    output, record = small_reference_run
    stats = NormalizationStats.from_dict(record["normalization"])
    expected = canonical_volume(*small_setup, stats, tile=SMALL_TILE)
    assert np.array_equal(zarr.open_array(str(output / "s0"), mode="r")[...], expected)


@pytest.mark.parametrize(
    "block_tiles",
    [(1, 1), (2, 3), (4, 4)],  # one shard, 2 x 3 shards, more than a whole plane
)
def test_block_size_does_not_change_output(
    small_reference_run: tuple[Path, dict[str, Any]],
    small_setup: tuple[str, Path],
    dask_address: str,
    tmp_path: Path,
    block_tiles: tuple[int, int],
) -> None:
    output = tmp_path / "out.ome.zarr"
    planes = 2 if block_tiles == (2, 3) else 1
    record = run_small(small_setup, output, dask_address, block_tiles, planes)
    reference = zarr.open_array(str(small_reference_run[0] / "s0"), mode="r")[...]
    assert np.array_equal(zarr.open_array(str(output / "s0"), mode="r")[...], reference)
    assert record["normalization"] == small_reference_run[1]["normalization"]


def test_one_worker_gives_the_same_bits_as_two(
    reference_run: tuple[Path, dict[str, Any]], ragged_volume: str, narrow_checkpoint: Path, tmp_path: Path
) -> None:
    output = tmp_path / "one-worker.ome.zarr"
    config = load_config(
        overrides={
            "cluster.address": "local",
            "cluster.workers": 1,
            "profile.batch_size": 3,
            "tiling.shard_tiles": 1,
            "tiling.block_tiles": [2, 2],
            "output.dtype": "float32",
        }
    )
    record = segment(
        SegmentRequest(ragged_volume, str(output), narrow_checkpoint, config, show_progress=False)
    )
    assert record["cluster"]["workers"] == 1
    (warm_up,) = record["worker_warm_up_seconds"].values()  # the model loaded beside the run's set-up
    assert isinstance(warm_up, float) and warm_up > 0
    reference = zarr.open_array(str(reference_run[0] / "s0"), mode="r")[...]
    assert np.array_equal(zarr.open_array(str(output / "s0"), mode="r")[...], reference)


@pytest.fixture(scope="module")
def uint8_run(
    ragged_volume: str, narrow_checkpoint: Path, dask_address: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    output = tmp_path_factory.mktemp("out") / "probability.ome.zarr"
    record = run_segment(
        ragged_volume,
        output,
        narrow_checkpoint,
        dask_address,
        **{
            "tiling.shard_tiles": 2,
            "tiling.block_tiles": [2, 2],
            "output.pyramid_levels": 2,
            "profile.batch_size": "auto",
        },
    )
    return output, record


def test_uint8_output_is_the_encoded_reference(
    uint8_run: tuple[Path, dict[str, Any]], reference_run: tuple[Path, dict[str, Any]]
) -> None:
    stored = zarr.open_array(str(uint8_run[0] / "s0"), mode="r")
    assert stored.dtype == np.uint8
    assert stored.chunks == (1, 388, 388)
    assert stored.shards == (1, 776, 776)
    reference = zarr.open_array(str(reference_run[0] / "s0"), mode="r")[...]
    assert np.array_equal(stored[...], encode_probability(reference, "uint8"))


def test_pyramid_levels_are_means_of_the_level_above(uint8_run: tuple[Path, dict[str, Any]]) -> None:
    group = zarr.open_group(str(uint8_run[0]), mode="r")
    s0, s1, s2 = (group[f"s{level}"][...] for level in range(3))
    assert s1.shape == (3, 450, 500) and s2.shape == (3, 225, 250)
    assert np.array_equal(s1, downsample_mean(s0))
    assert np.array_equal(s2, downsample_mean(s1))


def test_run_record(
    uint8_run: tuple[Path, dict[str, Any]], narrow_checkpoint: Path, ragged_volume: str
) -> None:
    output, record = uint8_run
    attrs = zarr.open_group(str(output), mode="r").attrs.asdict()
    state = attrs["unet_pipeline"]
    assert state["complete"] is True
    (stored,) = state["runs"]
    assert stored["run_id"] == record["run_id"]
    assert stored["status"] == "complete"
    assert stored["checkpoint"]["sha256"] == load_checkpoint(narrow_checkpoint).sha256
    assert stored["input"]["url"] == ragged_volume
    assert stored["input"]["chunks"] == [1, 300, 256]
    assert stored["blocks"] == {"total": 3 * 2 * 2, "done": 3 * 2 * 2}
    assert set(stored["stages"]) == {
        "predict",
        "contacts",
        "relabel",
        "pyramid s1",
        "pyramid s2",
        "pyramid labels/cells/s1",
        "pyramid labels/cells/s2",
    }
    assert stored["stages"]["predict"]["computed"] == 12
    predict, contacts, pyramid = (stored["stages"][stage] for stage in ("predict", "contacts", "pyramid s1"))
    predict_ended = predict["started_after_seconds"] + predict["wall_seconds"]
    assert contacts["started_after_seconds"] < predict_ended  # streamed behind the network
    assert pyramid["started_after_seconds"] < predict_ended
    setup = stored["setup_seconds"]  # where the time before the first block went, in order
    assert list(setup) == [
        "plan",
        "cluster",
        "cluster checks",
        "input fingerprint",
        "normalisation sample",
        "output created",
        "run record, execution profile",
        "the previous run's blocks",  # none: no run shares the cluster before this one
    ]
    assert list(stored["finish_seconds"]) == ["worker readings", "scratch removed"]  # after the last block
    assert min(setup.values()) >= 0
    assert sum(setup.values()) <= predict["started_after_seconds"] + 0.002  # laps rounded to 1 ms
    assert stored["labels"]["objects"] > 0
    assert stored["execution_profile"]["threads"] == 1
    assert stored["config"]["profile"]["batch_size"] == "auto"
    assert stored["execution_profile"]["batch_size"] == 1  # auto on CPU, settled before any block ran
    assert stored["worker_warm_up_seconds"] == {}  # the size unknown while the driver sets up
    device = stored["stages"]["predict"]["device"]
    planes, height, width = SHAPE
    assert device["windows"] == device["batches"] == planes * math.ceil(height / 388) * math.ceil(width / 388)
    assert device["padding_windows"] == 0 and device["compute_seconds"] > 0
    assert stored["cluster"]["workers"] == 2
    assert stored["environment"]["packages"]["torch"] == importlib.metadata.version("torch")
    assert len(stored["worker_peak_rss_bytes"]) == 2
    assert (output / "logs" / f"run-{record['run_id']}.log").read_text().count("predict") >= 1


def test_run_record_holds_no_secrets(
    narrow_checkpoint: Path, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-record-me")
    monkeypatch.setenv("PREFECT_API_KEY", "nor-me")
    source = write_volume(tmp_path / "small.zarr", cell_image((2, 120, 100), seed=4), (1, 64, 64))
    output = tmp_path / "out.ome.zarr"
    run_segment(source, output, narrow_checkpoint, dask_address, **{"output.pyramid_levels": 0})
    text = (output / "zarr.json").read_text()
    assert "do-not-record-me" not in text and "nor-me" not in text


def test_batches_of_part_zeros_are_pointed_out(
    narrow_checkpoint: Path, dask_address: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch holds one output shard's windows: a batch size that does not divide them computes zeros,
    as many as the warning says."""
    source = write_volume(tmp_path / "small.zarr", cell_image((2, 500, 400), seed=4), (1, 256, 256))
    settings = {"output.pyramid_levels": 0, "tiling.shard_tiles": 1}  # a shard: one window
    padding, warnings = {}, {}
    for batch in (3, 1):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.run_checks"):
            record = run_segment(
                source,
                tmp_path / f"b{batch}.ome.zarr",
                narrow_checkpoint,
                dask_address,
                **{**settings, "profile.batch_size": batch},
            )
        padding[batch] = record["stages"]["predict"]["device"]["padding_windows"]
        warnings[batch] = [r.getMessage() for r in caplog.records if "are zeros" in r.getMessage()]
    assert padding == {3: 2 * 2 * 2 * 2, 1: 0}  # 2 planes of 2 x 2 one-window shards, 2 zeros each
    assert warnings[1] == []
    expected = (
        "batch_size 3: a batch holds the windows of one output shard (1 at tiling.shard_tiles 1), so 2 of "
        "every 3 windows the device computes are zeros; batch_size 1 computes none"
    )
    assert warnings[3] == [expected]


def test_output_opens_without_this_package(uint8_run: tuple[Path, dict[str, Any]]) -> None:
    """ome-zarr-models validates it; ome-zarr-py and dask read it in a process that never imports pipeline."""
    output = str(uint8_run[0])
    script = f"""
import json, sys
import zarr, dask.array as da
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image import Image
Image.from_zarr(zarr.open_group({output!r}, mode="r"))
nodes = list(Reader(parse_url({output!r}))())
pyramid = nodes[0].data
lazy = da.from_zarr({output!r}, component="s0")
print(json.dumps({{
    "levels": [list(level.shape) for level in pyramid],
    "dask_shape": list(lazy.shape),
    "dask_max": int(lazy.max().compute()),
    "imported_pipeline": "pipeline" in sys.modules,
}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["levels"] == [[3, 900, 1000], [3, 450, 500], [3, 225, 250]]
    assert report["dask_shape"] == [3, 900, 1000]
    assert 0 < report["dask_max"] <= 255
    assert report["imported_pipeline"] is False


def test_yx_input_gives_yx_output(narrow_checkpoint: Path, dask_address: str, tmp_path: Path) -> None:
    plane = cell_image((500, 420), seed=2, dtype=np.uint8)
    source = write_volume(tmp_path / "plane.zarr", plane, (128, 128))
    output = tmp_path / "plane.ome.zarr"
    record = run_segment(source, output, narrow_checkpoint, dask_address, **{"output.dtype": "float32"})
    stored = zarr.open_array(str(output / "s0"), mode="r")[...]
    stats = NormalizationStats.from_dict(record["normalization"])
    with torch_threads(1):
        expected = canonical_prediction(load_checkpoint(narrow_checkpoint).model, stats.apply(plane))[1]
    assert stored.shape == (500, 420)
    assert np.array_equal(stored, expected)


def test_physical_pixel_sizes_are_copied_from_an_ome_zarr_input(
    narrow_checkpoint: Path, dask_address: str, tmp_path: Path
) -> None:
    source = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(source), mode="w", zarr_format=3)
    group.create_array("0", shape=(2, 120, 100), chunks=(1, 64, 64), dtype="uint16")[...] = cell_image(
        (2, 120, 100), seed=8
    )
    units = [{"name": axis, "type": "space", "unit": "micrometer"} for axis in "zyx"]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": units,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.25, 0.25]}],
                    }
                ],
            }
        ],
    }
    output = tmp_path / "out.ome.zarr"
    run_segment(str(source), output, narrow_checkpoint, dask_address, **{"output.pyramid_levels": 1})
    written = zarr.open_group(str(output), mode="r").attrs["ome"]["multiscales"][0]
    assert written["axes"] == units
    assert written["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [2.0, 0.25, 0.25]}
    ]
    assert written["datasets"][1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [2.0, 0.5, 0.5]},
        {"type": "translation", "translation": [0.0, 0.125, 0.125]},
    ]
    labels = zarr.open_group(str(output / "labels" / "cells"), mode="r").attrs["ome"]["multiscales"][0]
    assert labels["datasets"][1]["coordinateTransformations"] == [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]
