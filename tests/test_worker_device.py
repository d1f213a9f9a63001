"""A worker's batchers: made once per checkpoint and profile, warmed up before the run's first block."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from pipeline import worker_device
from pipeline.checkpoint import load_checkpoint
from pipeline.config import ProfileConfig
from pipeline.cpu_time import count_ended_thread, cpu_seconds_by_role
from pipeline.model import UNet
from pipeline.worker_device import (
    CheckpointRef,
    device_statistics,
    start_warm_up,
    wait_for_warm_ups,
    warm_up_result,
    worker_batcher,
)


def wait_for_warm_up(name: str) -> float | str:
    asyncio.run(wait_for_warm_ups())
    result = warm_up_result(name)
    assert result is not None
    assert warm_up_result(name) is None  # read once
    return result


def test_a_warm_up_makes_the_batcher_the_blocks_then_share(
    narrow_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = CheckpointRef(str(narrow_checkpoint), load_checkpoint(narrow_checkpoint).sha256)
    profile = ProfileConfig(batch_size=5)  # a profile no other test's batcher has
    loads: list[str] = []
    load = worker_device._load_model

    def counted(ref: CheckpointRef, settings: ProfileConfig) -> UNet:
        loads.append(ref.path)
        return load(ref, settings)

    monkeypatch.setattr(worker_device, "_load_model", counted)
    start_warm_up("first", checkpoint, profile, 188)
    seconds = wait_for_warm_up("first")
    assert isinstance(seconds, float) and seconds > 0
    batcher = worker_batcher(checkpoint, profile)
    assert worker_batcher(checkpoint, profile) is batcher
    assert loads == [str(narrow_checkpoint)]


def test_statistics_answer_while_a_model_loads(
    narrow_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs read the statistics from Dask's event loop: a model loading must not hold them."""
    checkpoint = CheckpointRef(str(narrow_checkpoint), load_checkpoint(narrow_checkpoint).sha256)
    profile = ProfileConfig(batch_size=6)
    release = threading.Event()
    load = worker_device._load_model

    def slow(ref: CheckpointRef, settings: ProfileConfig) -> UNet:
        release.wait(timeout=30)
        return load(ref, settings)

    monkeypatch.setattr(worker_device, "_load_model", slow)
    start_warm_up("slow", checkpoint, profile, 188)
    answered = threading.Event()
    reader = threading.Thread(target=lambda: (device_statistics(), answered.set()))
    reader.start()
    reader.join(timeout=10)
    loading = warm_up_result("slow")
    release.set()
    assert answered.is_set()
    assert loading is None  # still loading when the statistics came back
    assert isinstance(wait_for_warm_up("slow"), float)


def test_waiting_for_the_warm_ups_outlasts_a_slow_one(
    narrow_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench's clock starts once every worker's warm-up (a compile: minutes) has ended, not before."""
    checkpoint = CheckpointRef(str(narrow_checkpoint), load_checkpoint(narrow_checkpoint).sha256)
    load = worker_device._load_model

    def slow(ref: CheckpointRef, settings: ProfileConfig) -> UNet:
        time.sleep(0.5)
        return load(ref, settings)

    monkeypatch.setattr(worker_device, "_load_model", slow)
    start_warm_up("slower", checkpoint, ProfileConfig(batch_size=9), 188)
    asyncio.run(wait_for_warm_ups())
    seconds = warm_up_result("slower")
    assert isinstance(seconds, float) and seconds >= 0.5


def test_ended_warm_ups_are_let_go_in_a_long_lived_worker(tmp_path: Path) -> None:
    """A worker serves a run a night for months: the warm-ups nobody waited for are not kept."""
    missing = CheckpointRef(str(tmp_path / "gone.safetensors"), "0" * 64)
    for night in range(5):
        start_warm_up(f"night-{night}", missing, ProfileConfig(batch_size=10), 188)
        for thread in list(worker_device._WARMING):
            thread.join(timeout=30)
        assert isinstance(warm_up_result(f"night-{night}"), str)
    start_warm_up("tonight", missing, ProfileConfig(batch_size=10), 188)
    assert len(worker_device._WARMING) == 1
    wait_for_warm_up("tonight")


def test_a_failed_warm_up_gives_its_error(tmp_path: Path) -> None:
    missing = CheckpointRef(str(tmp_path / "gone.safetensors"), "0" * 64)
    profile = ProfileConfig(batch_size=7)
    start_warm_up("missing", missing, profile, 188)
    result = wait_for_warm_up("missing")
    assert isinstance(result, str) and "gone.safetensors" in result


def test_an_ended_thread_counts_what_it_reported() -> None:
    before = cpu_seconds_by_role()["other"]
    count_ended_thread("other", 1.5)
    assert cpu_seconds_by_role()["other"] - before >= 1.5 - 1e-9  # sums of floats: not exact
