"""The bad-input catalogue (docs/errors.md): each case exits 2 with one paragraph naming the problem
and the path, no traceback, the input's bytes unchanged and nothing marked complete."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
import zarr
from click.testing import CliRunner
from distributed import Client

from pipeline.checkpoint import save_checkpoint
from pipeline.cli import cli
from pipeline.cluster import check_workers_see
from pipeline.errors import InputError
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.synthetic import cell_image, write_synthetic_acquisition
from tests.conftest import write_volume

SETTINGS = {"tiling": {"tile": 36, "shard_tiles": 1, "block_tiles": [1, 1]}, "retries": 0}


@dataclass(frozen=True)
class Case:
    args: list[str]  # after "segment"
    named: Path | str  # the path (or address) the message must name
    says: str  # what the message must say


def model_file(folder: Path, in_channels: int = 1, pixel_size: float | None = None) -> Path:
    torch.manual_seed(0)
    path = folder / f"model-{in_channels}.safetensors"
    training = {"pixel_size_um": {"y": pixel_size, "x": pixel_size}} if pixel_size else {}
    save_checkpoint(path, UNet(in_channels, 2, 2, 3), normalization=Normalization(), training=training)
    return path


def config_file(folder: Path, settings: dict[str, object], name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(settings))
    return path


def volume(folder: Path, name: str = "in.zarr", data: np.ndarray | None = None) -> Path:
    values = cell_image((2, 70, 80), seed=1) if data is None else data
    return Path(write_volume(folder / name, values, (1, 32, 32)))


def run_args(folder: Path, source: Path, *extra: str, model: Path | None = None) -> list[str]:
    return [
        str(source),
        str(folder / "out.ome.zarr"),
        "--model",
        str(model or model_file(folder)),
        "--config",
        str(config_file(folder, SETTINGS)),
        *extra,
    ]


def missing_input(folder: Path) -> Case:
    source = folder / "absent.zarr"
    return Case(run_args(folder, source), source, "the path does not exist")


def not_an_array(folder: Path) -> Case:
    source = folder / "empty"
    source.mkdir()
    return Case(run_args(folder, source), source, "is not a Zarr array or group")


def unsupported_dtype(folder: Path) -> Case:
    source = volume(folder, data=np.ones((1, 40, 40), np.int64))
    return Case(run_args(folder, source), source, "unsupported dtype int64")


def nan_in_float_input(folder: Path) -> Case:
    data = cell_image((1, 70, 80), seed=1).astype(np.float32)
    data[0, 10, 10] = np.nan
    source = volume(folder, data=data)
    return Case(run_args(folder, source), source, "NaN or Inf values")


def many_axes_without_channel(folder: Path) -> Case:
    source = folder / "czyx.ome.tif"
    tifffile.imwrite(source, np.zeros((2, 3, 40, 40), np.uint16), ome=True, metadata={"axes": "CZYX"})
    return Case(run_args(folder, source), source, "2 channels; choose one with --channel 0..1")


def channel_out_of_range(folder: Path) -> Case:
    source = folder / "czyx.ome.tif"
    tifffile.imwrite(source, np.zeros((2, 3, 40, 40), np.uint16), ome=True, metadata={"axes": "CZYX"})
    return Case(run_args(folder, source, "--channel", "5"), source, "--channel 5 is out of range")


def zero_size_axis(folder: Path) -> Case:
    source = folder / "empty.zarr"
    zarr.open_array(str(source), mode="w", shape=(1, 0, 40), chunks=(1, 32, 32), dtype="uint16")
    return Case(run_args(folder, source), source, "the volume is empty")


def corrupt_chunk(folder: Path) -> Case:
    source = volume(folder)
    (source / "c" / "1" / "1" / "1").write_bytes(b"not a chunk")
    return Case(
        run_args(folder, source), source, "cannot read input chunk(s) z 1, y 1, x 1 (chunks of 1 x 32 x 32)"
    )


def pages_tiff(path: Path, data: np.ndarray) -> Path:
    """A TIFF written page by page, as a microscope writes one: each page's header, then its strips."""
    with tifffile.TiffWriter(path) as tiff:
        for plane in data:
            tiff.write(plane, rowsperstrip=12, photometric="minisblack", contiguous=False, metadata=None)
    return path


def tiff_missing_pages(folder: Path) -> Case:
    source = pages_tiff(folder / "cut.tif", cell_image((3, 70, 80), seed=1))
    with source.open("r+b") as handle:
        handle.truncate(source.stat().st_size * 2 // 3 - 300)  # into the second page: the third is gone
    return Case(run_args(folder, source), source, "is truncated: page 2 should start at byte")


def missing_checkpoint(folder: Path) -> Case:
    checkpoint = folder / "absent.safetensors"
    return Case(run_args(folder, volume(folder), model=checkpoint), checkpoint, "the file does not exist")


def pytorch_pickle(folder: Path) -> Case:
    checkpoint = folder / "old.pt"
    torch.save(UNet(1, 2, 2, 3).state_dict(), checkpoint)
    return Case(run_args(folder, volume(folder), model=checkpoint), checkpoint, "unet-pipeline model convert")


def truncated_checkpoint(folder: Path) -> Case:
    whole = model_file(folder)
    checkpoint = folder / "cut.safetensors"
    checkpoint.write_bytes(whole.read_bytes()[:300])
    return Case(run_args(folder, volume(folder), model=checkpoint), checkpoint, "is truncated")


def three_channel_model_on_one_channel(folder: Path) -> Case:
    source = volume(folder)
    model = model_file(folder, in_channels=3)
    return Case(run_args(folder, source, model=model), source, "the model takes 3 channels")


def unknown_config_key(folder: Path) -> Case:
    config = config_file(folder, {"tilling": {"tile": 36}}, "typo.yaml")
    args = [str(volume(folder)), str(folder / "out.ome.zarr"), "--model", str(model_file(folder))]
    return Case([*args, "--config", str(config)], config, "unknown key 'tilling'")


def invalid_config_values(folder: Path) -> Case:
    config = config_file(folder, {"profile": {"batch_size": -1}, "labels": {"threshold": 1.5}}, "bad.yaml")
    args = [str(volume(folder)), str(folder / "out.ome.zarr"), "--model", str(model_file(folder))]
    return Case([*args, "--config", str(config)], config, "'labels.threshold': Input should be less than 1")


def output_exists(folder: Path) -> Case:
    (folder / "out.ome.zarr").mkdir()
    (folder / "out.ome.zarr" / "notes.txt").write_text("someone's work")
    return Case(run_args(folder, volume(folder)), folder / "out.ome.zarr", "already exists")


def output_inside_input(folder: Path) -> Case:
    source = volume(folder)
    args = run_args(folder, source)
    args[1] = str(source / "out.ome.zarr")
    return Case(args, source, "overlaps input")


def output_parent_is_a_file(folder: Path) -> Case:
    (folder / "results").write_text("a file, not a folder")
    args = run_args(folder, volume(folder))
    args[1] = str(folder / "results" / "out.ome.zarr")
    return Case(args, folder / "results", "is not a folder")


def unreachable_cluster(folder: Path) -> Case:
    config = config_file(folder, {**SETTINGS, "cluster": {"connect_timeout_seconds": 1}}, "far.yaml")
    args = [str(volume(folder)), str(folder / "out.ome.zarr"), "--model", str(model_file(folder))]
    address = "tcp://127.0.0.1:9"
    return Case([*args, "--config", str(config), "--cluster", address], address, "cannot reach the Dask")


def pixel_size_mismatch(folder: Path) -> Case:
    source = folder / "fine.ome.zarr"
    write_synthetic_acquisition(str(source), (1, 80, 80), (1, 40, 40), seed=2, pixel_size=0.1)
    model = model_file(folder, pixel_size=0.5)
    return Case(run_args(folder, source, model=model), source, "differs from the model's training pixel size")


def timepoint_out_of_range(folder: Path) -> Case:
    source = folder / "tzyx.ome.tif"
    tifffile.imwrite(source, np.zeros((2, 3, 40, 40), np.uint16), ome=True, metadata={"axes": "TZYX"})
    return Case(run_args(folder, source, "--timepoint", "2"), source, "--timepoint 2 is out of range")


CASES: list[Callable[[Path], Case]] = [
    missing_input,
    not_an_array,
    unsupported_dtype,
    nan_in_float_input,
    many_axes_without_channel,
    channel_out_of_range,
    zero_size_axis,
    corrupt_chunk,
    tiff_missing_pages,
    missing_checkpoint,
    pytorch_pickle,
    truncated_checkpoint,
    three_channel_model_on_one_channel,
    unknown_config_key,
    invalid_config_values,
    output_exists,
    output_inside_input,
    output_parent_is_a_file,
    unreachable_cluster,
    pixel_size_mismatch,
    timepoint_out_of_range,
]


def checksums(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (and ``folder`` itself, if a file) by its sha256."""
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("make", CASES, ids=[make.__name__ for make in CASES])
def test_bad_input_is_named_and_nothing_is_lost(tmp_path: Path, make: Callable[[Path], Case]) -> None:
    case = make(tmp_path)
    before = checksums(tmp_path)
    result = CliRunner().invoke(cli, ["segment", *case.args, "--no-progress"])
    assert result.exit_code == 2, (result.output, result.exception)
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and case.says in message, message
    assert str(case.named) in message, message
    assert "Traceback" not in result.output
    after = checksums(tmp_path)
    assert {name: digest for name, digest in after.items() if name in before} == before  # nothing changed
    output = tmp_path / "out.ome.zarr"
    if (output / "zarr.json").exists():
        assert dict(zarr.open_group(str(output), mode="r").attrs)["unet_pipeline"]["complete"] is False


def test_a_damaged_chunk_outside_the_sample_fails_its_block_naming_the_chunk(
    tmp_path: Path, dask_address: str
) -> None:
    source = volume(tmp_path, data=cell_image((8, 160, 160), seed=3))  # 200 chunks; the sample reads few
    (source / "c" / "3" / "2" / "4").write_bytes(b"not a chunk")
    config = config_file(tmp_path, {**SETTINGS, "normalization_sample": {"regions": 2}}, "sparse.yaml")
    args = [str(source), str(tmp_path / "out.ome.zarr"), "--model", str(model_file(tmp_path))]
    result = CliRunner().invoke(cli, ["segment", *args, "--config", str(config), "--cluster", dask_address])
    assert result.exit_code == 2, result.output
    assert f"{source}: cannot read input chunk(s) z 3, y 2" in result.output
    assert "predict of block" in result.output
    state = dict(zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r").attrs)["unet_pipeline"]
    assert state["complete"] is False and state["runs"][-1]["status"] == "failed"


def test_a_truncated_tiff_fails_the_blocks_it_cuts_naming_the_strip(
    tmp_path: Path, dask_address: str
) -> None:
    source = pages_tiff(tmp_path / "cut.tif", cell_image((3, 180, 216), seed=3))  # 90 one-tile blocks
    with source.open("r+b") as handle:
        handle.truncate(source.stat().st_size - 3000)  # the copy stopped inside the last strip
    before = checksums(source)
    config = config_file(tmp_path, {**SETTINGS, "normalization_sample": {"regions": 1}}, "sparse.yaml")
    output = tmp_path / "out.ome.zarr"
    args = [str(source), str(output), "--model", str(model_file(tmp_path)), "--config", str(config)]
    result = CliRunner().invoke(cli, ["segment", *args, "--cluster", dask_address, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert f"{source}: cannot read TIFF strip(s) z 2, y 14, x 0 (strips of 1 x 12 x 216)" in result.output
    assert re.search(r"predict of block \d+ \(z, y, x from \(2, 1(08|44), \d+\)", result.output), (
        result.output
    )
    assert "copy it again from its source" in result.output and "Traceback" not in result.output
    assert checksums(source) == before
    state = dict(zarr.open_group(str(output), mode="r").attrs)["unet_pipeline"]
    assert state["complete"] is False and state["runs"][-1]["status"] == "failed"
    assert "TIFF strip(s) z 2, y 14" in state["runs"][-1]["error"]
    kept = {int(path.stem) for path in (output / "_markers" / "predict").glob("*.marker")}
    assert set(range(60)) <= kept < set(range(90))  # planes 0 and 1 came before the cut one: kept


def test_the_catalogue_lists_every_case(tmp_path: Path) -> None:
    catalogue = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    for make in CASES:
        folder = tmp_path / make.__name__
        folder.mkdir()
        assert make(folder).says in catalogue, make.__name__


def test_too_little_free_space_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = type("Usage", (), {"total": 10**12, "used": 10**12 - 1000, "free": 1000})
    monkeypatch.setattr("pipeline.plan.shutil.disk_usage", lambda _folder: usage)
    case = Case(
        run_args(tmp_path, volume(tmp_path)), tmp_path / "out.ome.zarr", "not enough space for output"
    )
    result = CliRunner().invoke(cli, ["segment", *case.args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert f"error: not enough space for output {case.named}: 0.00 GB free on {tmp_path}" in result.output
    assert not case.named.exists()


def test_paths_the_workers_cannot_see_are_named(tmp_path: Path, dask_address: str) -> None:
    with Client(dask_address) as client:
        check_workers_see(client, [str(tmp_path)])
        with pytest.raises(InputError, match=r"/nowhere/in\.zarr is not visible to 2 of 2 Dask workers"):
            check_workers_see(client, ["/nowhere/in.zarr"])
