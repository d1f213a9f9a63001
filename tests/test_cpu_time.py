"""CPU time by thread role: what the bench's end-to-end accounting rests on."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline import zarr_direct
from pipeline.cpu_time import ROLES, cpu_seconds_by_role, role


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("unet-device-batcher", "network"),
        ("Dask-Default-Threads-1234-0", "block tasks"),
        ("0-Dask-Default-Threads-1234-1", "block tasks"),
        ("zarr_io", "zarr event loop"),
        ("asyncio_3", "zarr codecs"),
        ("zarr_pool_1", "zarr codecs"),  # threading.max_workers set
        ("MainThread", "dask event loop"),
        ("Profile", "other"),
    ],
)
def test_thread_names_map_to_roles(name: str, expected: str) -> None:
    assert role(name) == expected


def test_the_threads_of_local_files_count_as_block_tasks() -> None:
    """zarr_direct reads and writes a block's local files in threads of its own: the block's work."""
    name = zarr_direct._file_threads().submit(lambda: threading.current_thread().name).result()
    assert role(name) == "block tasks"


def test_a_busy_thread_is_counted_in_its_role() -> None:
    def spin(stop: threading.Event, done: threading.Event) -> None:
        until = time.thread_time() + 0.2
        while time.thread_time() < until:
            pass
        done.set()
        stop.wait()  # alive while measured: ended threads are not counted

    stop, done = threading.Event(), threading.Event()
    worker = threading.Thread(target=spin, args=(stop, done), name="unet-device-batcher")
    before = cpu_seconds_by_role()
    worker.start()
    try:
        done.wait(10)
        after = cpu_seconds_by_role()
    finally:
        stop.set()
        worker.join()
    assert set(after) == set(ROLES)
    assert after["network"] - before["network"] >= 0.15
