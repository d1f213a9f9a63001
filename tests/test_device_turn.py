"""Runs sharing a cluster take turns at its devices; each writes what it would write alone."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.device_turn import DeviceTurn, device_turns
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.omezarr import open_output, read_state
from pipeline.plan import SegmentRequest
from pipeline.run import segment
from pipeline.synthetic import cell_image
from tests.conftest import write_volume

ARRAYS = ("s0", "s1", "labels/cells/s0", "labels/cells/s1")


def test_a_turn_waits_for_the_release_of_the_one_before() -> None:
    first, second, third = device_turns(3)
    assert second.previous is first and third.previous is second
    taker = threading.Thread(target=second.take)
    taker.start()
    taker.join(timeout=0.2)
    assert taker.is_alive() and not second.taken.is_set()  # the first run still predicts
    first.release()
    taker.join(timeout=10)
    assert second.taken.is_set() and not second.released.is_set()
    second.release()
    second.release()  # a run gives its turn up once predicted and again as it ends: no harm
    third.take()
    assert third.taken.is_set()


def test_a_run_that_ends_before_its_blocks_frees_the_next() -> None:
    first, second = device_turns(2)
    first.release()  # what segment() does however it ends, and a nightly run after each subflow
    assert first.taken.is_set()
    second.take()
    alone = DeviceTurn()
    alone.take()  # a run alone never waits
    assert alone.taken.is_set()


def test_an_interruption_reaches_every_run_of_the_chain() -> None:
    """A signal comes to the main thread only; the runs in other threads raise it themselves."""
    first, second = device_turns(2)
    raised: list[BaseException] = []

    def wait_for_turn() -> None:
        try:
            second.take()
        except KeyboardInterrupt as error:
            raised.append(error)

    waiting = threading.Thread(target=wait_for_turn)
    waiting.start()
    cause = KeyboardInterrupt("cancelled")
    first.interrupt(cause)
    waiting.join(timeout=10)
    assert [str(error) for error in raised] == ["cancelled"] and raised[0] is not cause
    assert not second.taken.is_set()
    with pytest.raises(KeyboardInterrupt, match="cancelled"):
        first.raise_if_interrupted()  # as a run does at each block result
    DeviceTurn().raise_if_interrupted()  # another chain: not interrupted


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    folder = tmp_path_factory.mktemp("turns")
    torch.manual_seed(5)
    checkpoint = folder / "small.safetensors"
    save_checkpoint(
        checkpoint, UNet(base_channels=2, depth=3), normalization=Normalization("percentile", 1.0, 99.8)
    )
    volumes = [
        write_volume(folder / f"in-{seed}.zarr", cell_image((3, 300, 260), seed=seed), (1, 64, 96))
        for seed in (1, 2)
    ]
    return volumes, checkpoint


def request(volume: str, output: Path, checkpoint: Path, address: str) -> SegmentRequest:
    config = load_config(
        overrides={
            "cluster.address": address,
            "tiling.tile": 36,
            "tiling.shard_tiles": 1,
            "tiling.block_tiles": [2, 2],
            "profile.batch_size": 2,
            "output.pyramid_levels": 1,
        }
    )
    return SegmentRequest(volume, str(output), checkpoint, config, show_progress=False)


def test_runs_taking_turns_write_what_each_writes_alone(
    two_inputs: tuple[list[str], Path], dask_address: str, tmp_path: Path
) -> None:
    volumes, checkpoint = two_inputs
    alone = [
        segment(request(volume, tmp_path / f"alone-{k}.ome.zarr", checkpoint, dask_address))
        for k, volume in enumerate(volumes)
    ]
    first, second = device_turns(2)
    complete_when_released: list[bool] = []
    release = first.release

    def released() -> None:  # the first run's tail goes on after this, beside the second's blocks
        if not first.released.is_set():
            complete_when_released.append(
                read_state(open_output(str(tmp_path / "turn-0.ome.zarr")))["complete"]
            )
        release()

    first.release = released  # type: ignore[method-assign]
    records: dict[int, dict[str, Any]] = {}

    def run(index: int, turn: DeviceTurn) -> None:
        output = tmp_path / f"turn-{index}.ome.zarr"
        records[index] = segment(request(volumes[index], output, checkpoint, dask_address), turn=turn)

    threads = [threading.Thread(target=run, args=(k, turn)) for k, turn in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(records) == [0, 1]
    assert complete_when_released == [False]
    assert records[1]["setup_seconds"]["the previous run's blocks"] >= 0
    for k in (0, 1):
        for name in ARRAYS:
            together = zarr.open_array(str(tmp_path / f"turn-{k}.ome.zarr" / name), mode="r")[...]
            by_itself = zarr.open_array(str(tmp_path / f"alone-{k}.ome.zarr" / name), mode="r")[...]
            assert np.array_equal(together, by_itself), (k, name)
        assert records[k]["labels"]["objects"] == alone[k]["labels"]["objects"]
        own, other = records[k]["run_id"], records[1 - k]["run_id"]
        log = (tmp_path / f"turn-{k}.ome.zarr" / "logs" / f"run-{own}.log").read_text()
        assert own in log and other not in log  # each run's log file holds its own records only
