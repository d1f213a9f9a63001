"""Multi-node Dask: ``--cluster tcp://HOST:PORT`` against a scheduler and workers started apart from the run.

The test starts ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1
as an operator starts them on several nodes; the run only gets the address.
"""

from __future__ import annotations

import ast
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
import zarr
from click.testing import CliRunner
from distributed import Client

from pipeline import cluster
from pipeline.checkpoint import load_checkpoint
from pipeline.cli import cli
from pipeline.cluster import check_workers_have_gpus, on_each_worker, open_client
from pipeline.config import ClusterConfig
from pipeline.errors import InputError
from pipeline.normalization import NormalizationStats
from pipeline.omezarr import open_output, read_state
from pipeline.synthetic import cell_image
from pipeline.worker_environment import ZARR_CODEC_POOL, zarr_pool_environment
from tests.canonical import canonical_prediction
from tests.conftest import write_small_setup, write_volume
from tests.processes import DaskProcesses, dask_cluster, start_worker, wait_until

SETTINGS: dict[str, Any] = {
    "tiling": {"shard_tiles": 1, "block_tiles": [1, 1]},  # 2 planes x 1 x 2 tiles: 4 blocks for 2 workers
    "output": {"dtype": "float32", "pyramid_levels": 0},
    "profile": {"batch_size": 2},
}


@pytest.fixture(scope="module")
def separate_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    with dask_cluster(tmp_path_factory.mktemp("dask"), workers=2) as cluster:
        with Client(cluster.address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        yield cluster


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("data")
    return write_volume(folder / "in.zarr", cell_image((2, 300, 400), seed=4), (1, 128, 128))


def segment(*args: str, settings: dict[str, Any] = SETTINGS, folder: Path) -> tuple[int, str]:
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(cli, ["segment", *args, "--config", str(config), "--no-progress"])
    return result.exit_code, result.output


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_workers_started_apart_give_the_canonical_tiling_bitwise(
    separate_cluster: DaskProcesses, volume: str, narrow_checkpoint: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.ome.zarr"
    code, text = segment(
        volume,
        str(output),
        "--model",
        str(narrow_checkpoint),
        "--cluster",
        separate_cluster.address,
        folder=tmp_path,
    )
    assert code == 0, text
    record = dict(zarr.open_group(str(output), mode="r").attrs)["unet_pipeline"]["runs"][-1]
    assert record["status"] == "complete"
    assert record["cluster"]["scheduler"] == separate_cluster.address
    assert record["cluster"]["workers"] == 2 and record["cluster"]["hosts"] == ["127.0.0.1"]
    assert record["stages"]["predict"]["computed"] == 4
    with Client(separate_cluster.address, timeout="30s") as client:
        nannies = set(client.run(lambda: __import__("os").getppid()).values())
    assert nannies == {worker.pid for worker in separate_cluster.workers}  # the processes this test started
    stats = NormalizationStats.from_dict(record["normalization"])
    model = load_checkpoint(narrow_checkpoint).model
    data = zarr.open_array(volume, mode="r")[...]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the profile's threads
    try:
        expected = np.stack([canonical_prediction(model, stats.apply(plane))[1] for plane in data])
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(zarr.open_array(str(output / "s0"), mode="r")[...], expected)


def test_a_scheduler_lost_mid_run_is_named_and_the_output_resumes_on_a_new_one(tmp_path: Path) -> None:
    settings = {
        "tiling": {"tile": 36, "shard_tiles": 1, "block_tiles": [1, 1]},  # 240 blocks of one tile
        "output": {"dtype": "float32", "pyramid_levels": 1},
        "normalization_sample": {"regions": 1},
    }
    checkpoint, _ = write_small_setup(tmp_path, settings, seed=3)
    volume = write_volume(tmp_path / "in.zarr", cell_image((8, 180, 216), seed=5), (1, 64, 64))
    output, clean = tmp_path / "out.ome.zarr", tmp_path / "clean.ome.zarr"
    markers = output / "_markers" / "predict"

    def run(target: Path, address: str, *extra: str) -> tuple[int, str]:
        return segment(
            volume, str(target), "--model", str(checkpoint), "--cluster", address, *extra,
            settings=settings, folder=tmp_path,
        )  # fmt: skip

    with dask_cluster(tmp_path / "first", workers=1) as first:
        waiting = threading.Thread(target=lambda: results.append(run(output, first.address)))
        results: list[tuple[int, str]] = []
        waiting.start()
        wait_until(
            lambda: markers.is_dir() and any(markers.iterdir()), "a first block", tmp_path / "run.yaml"
        )
        os.killpg(first.scheduler.pid, signal.SIGKILL)
        waiting.join(120)
    ((code, text),) = results
    assert code == 1, text
    assert last_line(text).startswith(
        f"error: lost the connection to the Dask scheduler during the run of {output} ("
    )
    assert last_line(text).endswith("run again (with --resume to continue the output)")
    assert not read_state(open_output(str(output)))["complete"]
    with dask_cluster(tmp_path / "second", workers=1) as second:
        code, text = run(output, second.address, "--resume")
        assert code == 0, text
        code, text = run(clean, second.address)
        assert code == 0, text
    for array in ("s0", "labels/cells/s0"):
        assert np.array_equal(
            zarr.open_array(str(output / array), mode="r")[...],
            zarr.open_array(str(clean / array), mode="r")[...],
        )


def test_device_cuda_without_a_gpu_worker_is_refused_before_writing(
    separate_cluster: DaskProcesses, volume: str, narrow_checkpoint: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.ome.zarr"
    code, text = segment(
        volume,
        str(output),
        "--model",
        str(narrow_checkpoint),
        "--cluster",
        separate_cluster.address,
        "--device",
        "cuda",
        folder=tmp_path,
    )
    assert code == 2, text
    assert last_line(text).startswith(
        "error: --device cuda (profile.device), but 2 of 2 Dask workers see no CUDA"
    )
    assert "--device cpu" in last_line(text)
    assert not output.exists()


def test_on_each_worker_runs_once_in_every_worker(separate_cluster: DaskProcesses) -> None:
    with Client(separate_cluster.address) as client:
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        processes = on_each_worker(client, os.getpid)
    assert set(processes) == workers and len(workers) == 2
    assert len(set(processes.values())) == 2 and os.getpid() not in processes.values()


def exit_if_first(claim: str) -> int:
    """The first worker to run it exits (as one SIGKILLed would); the others give their pid."""
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return os.getpid()
    os._exit(1)


def test_a_worker_that_leaves_before_its_turn_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    timeout = 20  # the scheduler fails a task bound to a worker that is gone after this long
    config = ClusterConfig(workers=2, threads_per_worker=1, no_workers_timeout_seconds=timeout)
    with open_client(config, forward_logs=False) as client:
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
            processes = on_each_worker(client, partial(exit_if_first, str(tmp_path / "claimed")))
        seconds = time.perf_counter() - started
    assert len(processes) == 1 and set(processes) < workers
    (left,) = workers - set(processes)
    assert f"Dask worker {left} left before it ran exit_if_first: left out" in caplog.text
    assert seconds < timeout


def test_local_workers_get_a_zarr_codec_pool_for_their_share_of_cores_and_reused_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ZARR_CODEC_POOL, raising=False)
    with open_client(ClusterConfig(workers=2, threads_per_worker=1), forward_logs=False) as client:
        pools = client.run(lambda: zarr.config.get("threading.max_workers"))
        memory = client.run(
            lambda: (os.environ.get("MALLOC_ARENA_MAX"), np._core.multiarray._get_madvise_hugepage())
        )
    assert [int(pool) for pool in pools.values()] == [max(2, (os.cpu_count() or 1))] * 2
    assert set(memory.values()) == {("1", False)}  # one malloc arena, no huge pages asked for by NumPy
    monkeypatch.setenv(ZARR_CODEC_POOL, "3")
    assert zarr_pool_environment(2, 16) == {}  # the operator's setting stands


def test_workers_per_gpu_are_pinned_each_to_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """--cluster cuda --workers-per-gpu 2 on GPUs 3 and 5 (CPU torch ignores the variable; the pinning
    and the cluster's shape are what is checked)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.delenv(ZARR_CODEC_POOL, raising=False)
    config = ClusterConfig(address="cuda", workers_per_gpu=2, threads_per_worker=1, memory_limit="1GiB")
    with open_client(config, forward_logs=False) as client:
        seen = client.run(
            lambda: (os.environ["CUDA_VISIBLE_DEVICES"], zarr.config.get("threading.max_workers"))
        )
        limits = {
            worker["memory_limit"] for worker in client.scheduler_info(n_workers=-1)["workers"].values()
        }
    assert sorted(gpu for gpu, _ in seen.values()) == ["3", "3", "5", "5"]
    assert {int(pool) for _, pool in seen.values()} == {max(2, 2 * (os.cpu_count() or 1) // 4)}
    assert limits == {2**30}


def test_workers_that_see_several_gpus_are_told_they_use_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A local cluster on a node of 4 GPUs: every worker would predict on the first."""
    monkeypatch.setattr(cluster, "on_each_worker", lambda client, function: {"tcp://a": 4, "tcp://b": 4})
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
        check_workers_have_gpus(None)  # type: ignore[arg-type]
    assert "2 of 2 Dask workers see 4 GPUs each and use only the first" in caplog.text
    assert "--workers-per-gpu" in caplog.text


def test_a_cuda_cluster_without_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config = ClusterConfig(address="cuda", workers_per_gpu=4)
    with pytest.raises(InputError, match="found no GPU"), open_client(config, forward_logs=False):
        pass


def test_a_scheduler_without_workers_is_refused_in_time(
    volume: str, narrow_checkpoint: Path, tmp_path: Path
) -> None:
    with dask_cluster(tmp_path / "dask", workers=0) as bare:
        started = time.monotonic()
        code, text = segment(
            volume,
            str(tmp_path / "out.ome.zarr"),
            "--model",
            str(narrow_checkpoint),
            "--cluster",
            bare.address,
            settings={**SETTINGS, "cluster": {"connect_timeout_seconds": 1}},
            folder=tmp_path,
        )
        waited = time.monotonic() - started
    assert code == 2, text
    assert f"error: no Dask worker joined the scheduler at {bare.address} within 1 s" in text
    assert waited < 30
    assert not (tmp_path / "out.ome.zarr").exists()


def can_hide_folders() -> bool:
    """Root with unshare: a process can get a private mount namespace (a node without the shared mount)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not can_hide_folders(), reason="needs root and unshare for a worker without the data mount"
)
def test_a_worker_that_cannot_see_the_input_is_named(
    separate_cluster: DaskProcesses, narrow_checkpoint: Path, tmp_path: Path
) -> None:
    data = tmp_path / "shared"
    source = write_volume(data / "in.zarr", cell_image((1, 100, 100), seed=5), (1, 100, 100))
    hide = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs tmpfs "$1" && shift && exec "$@"',
        "sh",
        str(data),
    ]
    with Client(separate_cluster.address, timeout="30s") as client:
        with start_worker(tmp_path, separate_cluster.address, "blind", prefix=hide):
            client.wait_for_workers(3, timeout=60)
            code, text = segment(
                source,
                str(tmp_path / "out.ome.zarr"),
                "--model",
                str(narrow_checkpoint),
                "--cluster",
                separate_cluster.address,
                folder=tmp_path,
            )
        deadline = time.monotonic() + 30
        while len(client.scheduler_info(n_workers=-1)["workers"]) > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert code == 2, text
    assert f"error: {source} is not visible to 1 of 3 Dask workers" in text
    assert "mount it at the same path on every node" in text
    assert not (tmp_path / "out.ome.zarr").exists()


SIGNALLED_DRIVER = """
import os, signal, sys, time
from pipeline.cluster import open_client
from pipeline.config import ClusterConfig

def block(seconds):
    time.sleep(seconds)
    return os.getpid()

if __name__ == "__main__":
    signalled = []
    signal.signal(signal.SIGTERM, lambda *_: signalled.append(True))
    with open_client(ClusterConfig(workers=2, threads_per_worker=1), forward_logs=False) as client:
        groups = client.run(lambda: (os.getpid(), os.getpgrp()))
        print("groups", sorted(groups.values()), os.getpgrp(), flush=True)
        futures = [client.submit(block, 1.5, pure=False) for _ in range(2)]
        print("running", flush=True)
        ran_in = sorted(client.gather(futures))
        print("ran in", ran_in, "signalled", signalled, flush=True)
"""


def test_a_signal_to_the_drivers_process_group_reaches_the_driver_only() -> None:
    """Prefect cancels a flow run with SIGTERM to its process group (a terminal's Ctrl-C goes to the
    foreground group): the driver ends the run; the workers it started are in groups of their own,
    so the blocks in flight finish in the processes that ran them, not again in new ones."""
    driver = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED_DRIVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # a group of its own, as Prefect starts a flow run
    )
    lines = []
    assert driver.stdout is not None
    for line in driver.stdout:
        lines.append(line.strip())
        if line.startswith("running"):
            time.sleep(0.3)
            os.killpg(driver.pid, signal.SIGTERM)
    assert driver.wait(timeout=60) == 0, lines
    groups = ast.literal_eval(lines[0].split(" ", 1)[1].rsplit(" ", 1)[0])
    assert all(pid == group != driver.pid for pid, group in groups), lines  # each worker leads its own
    ran_in = ast.literal_eval(lines[-1].split("ran in ", 1)[1].split(" signalled", 1)[0])
    assert ran_in == sorted(pid for pid, _ in groups) and lines[-1].endswith("signalled [True]"), lines
