"""s3:// inputs and outputs end to end, against a real S3-compatible server (moto) on 127.0.0.1.

Credentials and the endpoint come from the standard AWS variables only, in
the driver and in the Dask workers (separate processes, as on other nodes);
neither the run records nor the logs may hold them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import s3fs
import torch
import yaml
import zarr
from click.testing import CliRunner
from prefect.testing.utilities import prefect_test_harness
from scipy import ndimage

from flows.nightly import nightly_segmentation
from pipeline.acquisitions import discover_acquisitions
from pipeline.checkpoint import load_checkpoint
from pipeline.cli import cli
from pipeline.locations import create_exclusive
from pipeline.lock import OutputLockedError, hold_lock, lock_location, read_lock
from pipeline.normalization import NormalizationStats
from pipeline.synthetic import cell_image
from tests.canonical import canonical_prediction
from tests.conftest import write_volume
from tests.processes import DaskProcesses, dask_cluster, moto_s3_server

KEY_ID = "AKIAUNETPIPELINETEST"
SECRET = "s3cr3t-that-must-never-be-written-anywhere"
SETTINGS: dict[str, Any] = {
    "tiling": {"shard_tiles": 1, "block_tiles": [1, 1]},  # 1 block per tile: 4 blocks a 500 x 500 plane
    "output": {"dtype": "float32"},
    "profile": {"batch_size": 1},
    "cluster": {"in_flight_per_worker": 1},
}


@pytest.fixture(scope="module")
def aws_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto server, its buckets, and the standard AWS variables pointing at it (this process and children)."""
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as endpoint, pytest.MonkeyPatch.context() as patch:
        variables = {
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        for name, value in variables.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        fs = fsspec.filesystem("s3")
        for bucket in ("microscope", "segmentations"):
            fs.mkdir(bucket)
        yield dict(os.environ)
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def workers(
    aws_environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaskProcesses]:
    """Two ``dask worker`` processes whose only credentials are their environment's."""
    with dask_cluster(tmp_path_factory.mktemp("dask"), workers=2, env=aws_environment) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """A throwaway Prefect API (temporary SQLite database) for flows called in-process."""
    with prefect_test_harness(server_startup_timeout=60):
        yield


def s3() -> Any:
    return fsspec.filesystem("s3", skip_instance_cache=True)


def markers_on_s3(output: str, stage: str) -> int:
    fs = s3()
    folder = f"{output.removeprefix('s3://')}/_markers/{stage}"
    return sum(name.endswith(".marker") for name in fs.ls(folder)) if fs.exists(folder) else 0


def segment_args(source: str, output: str, checkpoint: Path, config: Path, address: str) -> list[str]:
    return [
        "segment",
        source,
        output,
        "--model",
        str(checkpoint),
        "--config",
        str(config),
        "--cluster",
        address,
        "--no-progress",
    ]


def test_bucket_to_bucket_killed_and_resumed_gives_the_canonical_result(
    aws_environment: dict[str, str], workers: DaskProcesses, narrow_checkpoint: Path, tmp_path: Path
) -> None:
    source = write_volume(
        "s3://microscope/incoming/embryo.zarr", cell_image((6, 500, 500), seed=8), (1, 128, 128)
    )  # type: ignore[arg-type]  # 24 blocks: the kill lands while they are predicted
    output = "s3://segmentations/embryo.ome.zarr"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(SETTINGS))
    args = segment_args(source, output, narrow_checkpoint, config, workers.address)
    driver = subprocess.Popen(
        [str(Path(sys.executable).with_name("unet-pipeline")), "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=aws_environment,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while markers_on_s3(output, "predict") < 1:
        assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
        assert time.monotonic() < deadline, "no predict marker on S3 within 120 s"
        time.sleep(0.01)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    killed_output = driver.stdout.read().decode() if driver.stdout else ""
    done_at_kill = markers_on_s3(output, "predict")
    assert done_at_kill < 24, "the kill came after the predict stage had finished"
    assert s3().exists(lock_location(output).removeprefix("s3://"))  # the killed run's lock stayed

    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 0, result.output

    state = dict(zarr.open_group(output, mode="r").attrs)["unet_pipeline"]
    assert state["complete"] is True
    resumed = state["runs"][-1]
    assert resumed["resumed_from"] == state["runs"][0]["run_id"]
    assert resumed["stages"]["predict"]["skipped_done"] >= done_at_kill >= 1
    assert resumed["input"]["url"] == source
    stats = NormalizationStats.from_dict(resumed["normalization"])
    model = load_checkpoint(narrow_checkpoint).model
    data = zarr.open_array(source, mode="r")[...]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = np.stack([canonical_prediction(model, stats.apply(plane))[1] for plane in data])
    finally:
        torch.set_num_threads(previous)
    probability = zarr.open_array(f"{output}/s0", mode="r")[...]
    assert np.array_equal(probability, expected)
    labels = zarr.open_array(f"{output}/labels/cells/s0", mode="r")[...]
    assert np.array_equal(labels, ndimage.label(expected >= 0.5)[0])
    assert zarr.open_array(f"{output}/s1", mode="r").shape == (6, 250, 250)

    fs = s3()
    stored = fs.find("segmentations/embryo.ome.zarr")
    names = {path.rsplit("/", 1)[-1] for path in stored}
    assert "_run.lock" not in names and not any(
        "/_markers/" in path or "/_scratch/" in path for path in stored
    )
    log = fs.cat_file(f"segmentations/embryo.ome.zarr/logs/run-{resumed['run_id']}.log").decode()
    assert f"resuming run {state['runs'][0]['run_id']}" in log
    for path in stored:
        content = fs.cat_file(path)
        assert SECRET.encode() not in content and KEY_ID.encode() not in content, path
    for text in (result.output, killed_output, log):
        assert SECRET not in text and KEY_ID not in text


def test_the_lock_on_s3_is_a_conditional_create(aws_environment: dict[str, str]) -> None:
    output = "s3://segmentations/locked.ome.zarr"
    with hold_lock(output, "run-a", take_over_stale=False):
        assert read_lock(output) is not None and read_lock(output).run_id == "run-a"  # type: ignore[union-attr]
        with (
            pytest.raises(OutputLockedError, match="run-a"),
            hold_lock(output, "run-b", take_over_stale=False),
        ):
            pass
        # a writer that skipped the look still loses: the store refuses the second create itself
        with pytest.raises(FileExistsError):
            create_exclusive(lock_location(output), b"{}")
    assert read_lock(output) is None


def test_discovery_over_a_bucket_prefix(aws_environment: dict[str, str]) -> None:
    root = "s3://microscope/nightly"
    fs = s3()
    write_volume(f"{root}/day1/a.zarr", np.zeros((2, 8, 8), np.uint16), (1, 8, 8))  # type: ignore[arg-type]
    fs.pipe_file("microscope/nightly/day1/a.zarr.ready", b"")
    group = zarr.open_group(f"{root}/b.ome.zarr", mode="w")
    group.create_array("s0", shape=(8, 8), chunks=(4, 4), dtype="uint8")
    fs.pipe_file("microscope/nightly/b.ome.zarr/.ready", b"")
    write_volume(f"{root}/c.zarr", np.zeros((8, 8), np.uint8), (4, 4))  # type: ignore[arg-type]
    fs.pipe_file("microscope/nightly/half.zarr/c/0/0", b"a chunk before any metadata")
    fs.pipe_file("microscope/nightly/scan.ome.tif", b"II*\x00")
    fs.pipe_file("microscope/nightly/notes.txt", b"not an acquisition")

    def found(now: float) -> dict[str, tuple[str, bool, str]]:
        return {
            a.name: (str(a.path), a.ready, a.why)
            for a in discover_acquisitions(root, quiet_seconds=600, now=now)
        }

    today = found(time.time())
    assert sorted(today) == ["b", "c", "day1/a", "half", "scan"]
    assert today["day1/a"] == (f"{root}/day1/a.zarr", True, "ready marker a.zarr.ready")
    assert today["b"][1:] == (True, "ready marker b.ome.zarr/.ready")
    assert today["c"][1] is False and "waits for 10 min" in today["c"][2]
    assert today["half"][1:] == (False, "no Zarr metadata yet (still being written?)")
    assert today["scan"][1] is False
    later = found(time.time() + 3600)
    assert later["c"][1:] == (True, "unchanged for 60 min") and later["scan"][1] is True
    assert later["half"][1] is False


def test_nightly_flow_over_bucket_roots_segments_once_then_skips(
    aws_environment: dict[str, str],
    workers: DaskProcesses,
    prefect_api: None,
    narrow_checkpoint: Path,
    tmp_path: Path,
) -> None:
    input_root, output_root = "s3://microscope/flow", "s3://segmentations/flow/"
    source = write_volume(f"{input_root}/day1/embryo.zarr", cell_image((1, 300, 300), seed=5), (1, 128, 128))  # type: ignore[arg-type]
    s3().pipe_file("microscope/flow/day1/embryo.zarr.ready", b"")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**SETTINGS, "cluster": {"address": workers.address}}))
    parameters = {
        "input_root": input_root,
        "output_root": output_root,
        "model": str(narrow_checkpoint),
        "config": str(config),
    }
    output = "s3://segmentations/flow/day1/embryo.ome.zarr"

    first = nightly_segmentation(**parameters)
    assert [(row["acquisition"], row["status"], row["output"]) for row in first] == [
        ("day1/embryo", "segmented", output)
    ]
    state = dict(zarr.open_group(output, mode="r").attrs)["unet_pipeline"]
    assert state["complete"] is True and len(state["runs"]) == 1
    assert state["runs"][0]["input"]["url"] == source
    stats = NormalizationStats.from_dict(state["runs"][0]["normalization"])
    model = load_checkpoint(narrow_checkpoint).model
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = np.stack(
            [canonical_prediction(model, stats.apply(p))[1] for p in zarr.open_array(source, mode="r")[...]]
        )
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(zarr.open_array(f"{output}/s0", mode="r")[...], expected)
    labels = zarr.open_array(f"{output}/labels/cells/s0", mode="r")[...]
    assert np.array_equal(labels, ndimage.label(expected >= 0.5)[0])
    fs = s3()
    assert fs.cat_file("segmentations/flow/day1/embryo.ome.zarr/preview.png").startswith(b"\x89PNG")
    summary = json.loads(fs.cat_file("segmentations/flow/.unet-pipeline/nightly.json"))
    assert summary["input_root"] == input_root and summary["rows"][0]["status"] == "segmented"

    second = nightly_segmentation(**parameters)
    assert [(row["acquisition"], row["status"]) for row in second] == [("day1/embryo", "skipped")]
    again = dict(zarr.open_group(output, mode="r").attrs)["unet_pipeline"]
    assert again["runs"] == state["runs"]  # no new run record: nothing was written
    assert not any(
        path.startswith("microscope/flow/") and ".ome.zarr" in path for path in fs.find("microscope")
    )

    # the morning check over the bucket: the new acquisition waits (no .ready), the output is complete
    write_volume(f"{input_root}/day2/larva.zarr", cell_image((1, 64, 64), seed=6), (1, 64, 64))  # type: ignore[arg-type]
    checked = CliRunner().invoke(cli, ["status", output_root, "--json"])
    assert checked.exit_code == 0, checked.output
    rows = {row["name"]: row for row in json.loads(checked.output)["acquisitions"]}
    assert rows["day1/embryo"]["state"] == "complete" and rows["day1/embryo"]["output"] == output
    assert rows["day1/embryo"]["objects"] == int(labels.max())
    assert rows["day2/larva"]["state"] == "waiting"
    missing = CliRunner().invoke(cli, ["status", "s3://segmentations/nothing-here"])
    assert missing.exit_code == 2
    assert "output root s3://segmentations/nothing-here: nothing is stored there" in missing.output
