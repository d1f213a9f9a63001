"""Crashes, resumes, failing blocks and concurrent runs, with real processes."""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from distributed import Client, LocalCluster

from pipeline.checkpoint import save_checkpoint
from pipeline.cli import cli
from pipeline.cluster import BlockFailedError, open_client, run_jobs
from pipeline.config import ClusterConfig
from pipeline.lock import OutputLockedError, hold_lock
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.schedule import Job, JobGraph
from pipeline.synthetic import cell_image
from tests.conftest import write_small_setup, write_volume

SHAPE = (6, 180, 216)  # tiles of 36 px: 5 x 6 per plane, 180 one-tile blocks
SETTINGS = {
    "tiling": {"tile": 36, "shard_tiles": 1, "block_tiles": [1, 1]},
    "profile": {"batch_size": 2},
    "output": {"dtype": "float32", "pyramid_levels": 1},
    "normalization_sample": {"regions": 1},
    "retries": 1,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    checkpoint, config = write_small_setup(root, SETTINGS, seed=3)
    volume = Path(write_volume(root / "in.zarr", cell_image(SHAPE, seed=5), (1, 64, 64)))
    return {"root": root, "checkpoint": checkpoint, "config": config, "volume": volume}


def segment_args(setup: dict[str, Path], output: Path, *extra: str) -> list[str]:
    """`segment` of the small volume with the small model and config, plus ``extra``."""
    return [
        "segment",
        str(setup["volume"]),
        str(output),
        "--model",
        str(setup["checkpoint"]),
        "--config",
        str(setup["config"]),
        "--no-progress",
        *extra,
    ]


def cli_segment(setup: dict[str, Path], output: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, segment_args(setup, output, *extra))
    return result.exit_code, result.output


def start_driver(setup: dict[str, Path], output: Path, *extra: str) -> subprocess.Popen[str]:
    """A real driver process with its own local cluster, in its own process group."""
    script = Path(sys.executable).with_name("unet-pipeline")
    return subprocess.Popen(
        [
            str(script),
            "--quiet",
            *segment_args(setup, output, "--cluster", "local", "--workers", "2", *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def markers(output: Path, stage: str) -> int:
    folder = output / "_markers" / stage
    return len(list(folder.glob("*.marker"))) if folder.exists() else 0


def kill_when(
    process: subprocess.Popen[str], output: Path, wanted: dict[str, int], timeout: float = 240
) -> int:
    """SIGKILL the driver and its workers once every stage of ``wanted`` has that many markers;
    return the last stage's markers then."""
    deadline = time.monotonic() + timeout
    while any(markers(output, stage) < count for stage, count in wanted.items()):
        if process.poll() is not None:
            pytest.fail(
                f"driver ended before the kill point: {process.stdout.read() if process.stdout else ''}"
            )
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no {wanted} markers within {timeout} s")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return markers(output, list(wanted)[-1])


def arrays(output: Path) -> dict[str, np.ndarray]:
    paths = ["s0", "s1", "labels/cells/s0", "labels/cells/s1"]
    return {path: zarr.open_array(str(output / path), mode="r")[...] for path in paths}


def assert_same_arrays(output: Path, reference: dict[str, np.ndarray]) -> None:
    got = arrays(output)
    for path, expected in reference.items():
        assert np.array_equal(got[path], expected), path


def state(output: Path) -> dict[str, Any]:
    return dict(zarr.open_group(str(output), mode="r").attrs["unet_pipeline"])


@pytest.fixture(scope="module")
def reference(setup: dict[str, Path], dask_address: str) -> dict[str, np.ndarray]:
    output = setup["root"] / "reference.ome.zarr"
    code, text = cli_segment(setup, output, "--cluster", dask_address)
    assert code == 0, text
    return arrays(output)


RUN_RECORD = "run record"  # after the last block: the cluster closes, scratch goes, the record is written
# one phase: relabel and the label pyramid join slab by slab behind the blocks, so a kill in one
# stage leaves no other stage sure to be complete
STAGES = ["predict", "contacts", "pyramid s1", "relabel", "pyramid labels/cells/s1"]
LAST_STAGE_BLOCKS = 6 * 3 * 3  # shards of 36 px on level 1 (90 x 108 px): 3 x 3 per plane
BLOCKS = {"relabel": 6 * 5 * 6, "pyramid labels/cells/s1": LAST_STAGE_BLOCKS}


def marker_folder(stage: str) -> str:
    return stage.replace(" ", "-")


@pytest.fixture(scope="module")
def killed_in_pyramid(setup: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """An output whose driver was SIGKILLed mid-pyramid, and the markers it had; cases continue copies."""
    output = tmp_path_factory.mktemp("killed") / "out.ome.zarr"
    return output, kill_when(start_driver(setup, output), output, {"pyramid-s1": 20})


def killed_output(
    setup: dict[str, Path], killed_in_pyramid: tuple[Path, int], output: Path, stage: str, count: int
) -> int:
    """Leave ``output`` as a driver SIGKILLed in ``stage`` leaves it; return the stage's markers then.

    The run record stage continues a run killed mid-pyramid with a second driver, killed once the
    last stage has all its markers: it is then past its last block, before its record.
    """
    if stage not in ("pyramid s1", RUN_RECORD):
        return kill_when(start_driver(setup, output), output, {marker_folder(stage): count})
    shutil.copytree(killed_in_pyramid[0], output)
    if stage == "pyramid s1":
        return killed_in_pyramid[1]
    resumed = start_driver(setup, output, "--resume")
    # the probability pyramid, relabel and the label pyramid run side by side (the labels' chain first):
    # the run is past its last block once all three are done
    done = {marker_folder("pyramid s1"): LAST_STAGE_BLOCKS, "relabel": BLOCKS["relabel"]}
    return kill_when(resumed, output, {**done, marker_folder(STAGES[-1]): count})


@contextmanager
def watching_markers(output: Path) -> Iterator[list[bool]]:
    """Yields, after the block, the ``complete`` flag read the moment markers were first seen to go."""
    seen: list[bool] = []
    stop = threading.Event()

    folders = [output / "_markers" / marker_folder(stage) for stage in STAGES]

    def watch() -> None:
        known: set[Path] = set()
        while not stop.is_set() and not seen:
            present = {folder for folder in folders if folder.is_dir()}
            if known - present:
                seen.append(bool(state(output)["complete"]))
            known |= present
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join()


@pytest.mark.parametrize(
    ("stage", "count"),
    [("predict", 40), ("contacts", 60), ("relabel", 30), ("pyramid s1", 20), (RUN_RECORD, LAST_STAGE_BLOCKS)],
)
def test_killed_run_resumes_to_identical_output(
    setup: dict[str, Path],
    reference: dict[str, np.ndarray],
    killed_in_pyramid: tuple[Path, int],
    dask_address: str,
    tmp_path: Path,
    stage: str,
    count: int,
) -> None:
    output = tmp_path / "out.ome.zarr"
    done_at_kill = killed_output(setup, killed_in_pyramid, output, stage, count)
    killed = state(output)
    assert killed["complete"] is False
    assert killed["runs"][-1]["status"] == "running"  # it never got to say otherwise

    with watching_markers(output) as complete_when_markers_went:
        code, text = cli_segment(setup, output, "--resume", "--cluster", dask_address)
    assert code == 0, text
    assert complete_when_markers_went == [True]  # a run killed before its record keeps every marker
    resumed = state(output)
    assert resumed["complete"] is True
    previous, last = resumed["runs"][-2:]
    assert last["resumed_from"] == previous["run_id"]
    assert last["normalization"] == resumed["runs"][0]["normalization"]
    for done in STAGES if stage == RUN_RECORD else []:
        assert last["stages"][done]["computed"] == 0, done
    if stage != RUN_RECORD:
        figures = last["stages"][stage]
        assert done_at_kill < figures["blocks"], "the kill came after the stage had finished"
        assert figures["skipped_done"] >= done_at_kill
        assert figures["computed"] == figures["blocks"] - figures["skipped_done"] < figures["blocks"]
    else:
        assert done_at_kill == LAST_STAGE_BLOCKS == last["stages"][STAGES[-1]]["blocks"]
    assert not (output / "_markers").exists() and not (output / "_scratch").exists()
    assert_same_arrays(output, reference)


def test_a_killed_worker_is_replaced_and_the_output_is_identical(
    setup: dict[str, Path], reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    output = tmp_path / "out.ome.zarr"
    options = {"host": "127.0.0.1", "dashboard_address": None, "silence_logs": logging.CRITICAL}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, **options) as cluster:
        with Client(cluster) as client:
            victim = next(iter(client.run(os.getpid).values()))

        killed_at: list[int] = []

        def kill_one_worker() -> None:
            deadline = time.monotonic() + 240
            while markers(output, "predict") < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(victim, signal.SIGKILL)
            killed_at.append(markers(output, "predict"))

        killer = threading.Thread(target=kill_one_worker)
        killer.start()
        code, text = cli_segment(setup, output, "--cluster", cluster.scheduler_address)
        killer.join()
    assert code == 0, text
    assert killed_at and 40 <= killed_at[0] < 180, killed_at  # mid-predict
    record = state(output)
    assert record["complete"] is True and markers(output, "predict") == 0  # markers go with the finished run
    predict = record["runs"][0]["stages"]["predict"]
    assert predict["computed"] == predict["blocks"] == 180
    assert_same_arrays(output, reference)


def test_a_full_disk_fails_cleanly_and_resume_completes_after(
    setup: dict[str, Path], reference: dict[str, np.ndarray], dask_address: str, tmp_path: Path
) -> None:
    """Files may not grow past a little under the finished record (RLIMIT_FSIZE): a save mid-run fails."""
    limit = (setup["root"] / "reference.ome.zarr" / "zarr.json").stat().st_size - 800
    output = tmp_path / "out.ome.zarr"
    script = Path(sys.executable).with_name("unet-pipeline")
    failed = subprocess.run(
        [str(script), "--quiet", *segment_args(setup, output, "--cluster", "local", "--workers", "2")],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert failed.returncode == 1, failed.stderr
    assert (
        f"error: writing {output} failed: [Errno 27] File too large; the output is left incomplete"
        in failed.stderr
    )
    assert "Traceback" not in failed.stderr
    assert state(output)["complete"] is False
    code, text = cli_segment(setup, output, "--resume", "--cluster", dask_address)
    assert code == 0, text
    assert state(output)["complete"] is True
    assert_same_arrays(output, reference)


def test_resume_refused_after_model_or_config_change(
    setup: dict[str, Path], dask_address: str, tmp_path: Path
) -> None:
    output = tmp_path / "out.ome.zarr"
    kill_when(start_driver(setup, output), output, {"predict": 10})
    torch.manual_seed(4)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, UNet(base_channels=2, depth=3), normalization=Normalization())
    result = CliRunner().invoke(
        cli,
        [
            "segment",
            str(setup["volume"]),
            str(output),
            "--model",
            str(other),
            "--config",
            str(setup["config"]),
            "--resume",
            "--cluster",
            dask_address,
        ],
    )
    assert result.exit_code == 2
    assert "--resume refused" in result.output and "the model: checkpoint sha256" in result.output
    code, text = cli_segment(setup, output, "--resume", "--cluster", dask_address, "--batch-size", "4")
    assert code == 2
    assert "config section 'profile'" in text
    assert state(output)["complete"] is False


def test_block_that_always_fails(setup: dict[str, Path], dask_address: str, tmp_path: Path) -> None:
    volume = tmp_path / "corrupt.zarr"
    write_volume(volume, cell_image(SHAPE, seed=5), (1, 64, 64))
    (volume / "c" / "0" / "0" / "0").write_bytes(b"not a chunk")  # chunk (0, 0, 0): not in any sample
    output = tmp_path / "out.ome.zarr"
    result = CliRunner().invoke(
        cli,
        [
            "segment",
            str(volume),
            str(output),
            "--model",
            str(setup["checkpoint"]),
            "--config",
            str(setup["config"]),
            "--cluster",
            dask_address,
            "--no-progress",
        ],
    )
    assert result.exit_code == 2  # the input's data is at fault, as with any bad input
    assert f"{volume}: cannot read input chunk(s) z 0, y 0, x 0 (chunks of 1 x 64 x 64)" in result.output
    assert re.search(r"predict of block \d+ \(z, y, x from \(0, \d+, \d+\)", result.output), (
        result.output
    )  # halos share it
    assert "failed after 2 attempt(s)" in result.output
    after = state(output)
    assert after["complete"] is False
    assert after["runs"][0]["status"] == "failed"
    assert re.search(r"predict of block \d+ .* failed after 2 attempt", after["runs"][0]["error"])
    predicted = after["runs"][0]["stages"]["predict"]  # how far it got, for the morning's reader
    assert predicted["computed"] == predicted["blocks"] > 0
    assert not (output / "_run.lock").exists()


def test_second_run_on_a_locked_output_is_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out.ome.zarr"
    driver = start_driver(setup, output)
    try:
        deadline = time.monotonic() + 120
        while not (output / "_run.lock").exists():
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for flag, message in (
            ("--resume", "is being written by run"),
            ("--overwrite", "--overwrite refused"),
        ):
            code, text = cli_segment(setup, output, flag)
            assert code == 2, text
            assert message in text
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    code, text = cli_segment(setup, output, "--cluster", "local")
    assert code == 2 and "already exists; pass --resume" in text


def test_stale_lock_is_reported(setup: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out.ome.zarr"
    kill_when(start_driver(setup, output), output, {"predict": 5})
    stale = r"stale lock .* whose process is gone: continue it with --resume"
    with (
        pytest.raises(OutputLockedError, match=stale),
        hold_lock(str(output), "another-run", take_over_stale=False),
    ):
        pass


def test_a_cluster_left_without_workers_fails_its_blocks_instead_of_waiting() -> None:
    """A worker retired for good stands in for one whose nanny died with it (benchmarks/soak.py)."""
    failures: list[BlockFailedError] = []

    def run_one_block(client: Client) -> None:
        try:
            run_jobs(
                client,
                JobGraph([Job("predict", 7, abs, -7)]),
                in_flight=1,
                follow_ups_in_flight=0,
                retries=0,
                key=lambda job: f"block-{job.block_id}",
                describe=lambda job: f"block {job.block_id}",
                on_result=lambda job, result: None,
            )
        except BlockFailedError as error:
            failures.append(error)

    with open_client(ClusterConfig(workers=1, no_workers_timeout_seconds=1), forward_logs=False) as client:
        # the cluster's set-up results forgotten first: a worker holding one has nowhere to move it
        deadline = time.monotonic() + 10
        while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
            assert time.monotonic() < deadline, "the set-up's results were never released"
            time.sleep(0.05)
        client.retire_workers(close_workers=True)
        waiting = threading.Thread(target=run_one_block, args=(client,), daemon=True)
        waiting.start()
        waiting.join(60)
        assert failures, "still waiting for a worker after 60 s"
    message = str(failures[0])
    assert re.match(
        r"block 7 failed after 1 attempt\(s\): NoWorkerError: .* without any running workers", message
    )
