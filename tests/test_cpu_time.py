"""CPU time by thread role: what the bench's end-to-end accounting rests on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pipeline import zarr_direct
from pipeline.cpu_time import ROLES, cpu_seconds_by_role, os_thread_name, other_threads_cpu_seconds, role


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


def test_the_threads_of_local_files_have_a_role_of_their_own() -> None:
    """zarr_direct reads and writes a block's local files in threads of its own, counted apart from the
    task threads: a task's file IO beside its computing."""
    name = zarr_direct._file_threads().submit(lambda: threading.current_thread().name).result()
    assert role(name) == "file threads"


@contextmanager
def busy_thread(name: str, seconds: float = 0.2) -> Iterator[None]:
    """A thread called ``name`` that has used ``seconds`` of CPU on entry and is still alive (ended
    threads are not counted) until the `with` ends."""

    def spin() -> None:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass
        done.set()
        stop.wait()

    stop, done = threading.Event(), threading.Event()
    worker = threading.Thread(target=spin, name=name)
    worker.start()
    try:
        done.wait(10)
        yield
    finally:
        stop.set()
        worker.join()


def test_a_busy_thread_is_counted_in_its_role() -> None:
    before = cpu_seconds_by_role()
    with busy_thread("unet-device-batcher"):
        after = cpu_seconds_by_role()
    assert set(after) == set(ROLES)
    assert after["network"] - before["network"] >= 0.15


def test_threads_of_no_known_role_are_counted_by_name() -> None:
    """What the bench lists under "other": a thread named by nobody we know, under its name."""
    with busy_thread("spinner-for-the-test"):
        seconds = other_threads_cpu_seconds()
    assert seconds["spinner-for-the-test"] >= 0.15
    assert "MainThread" not in seconds  # Dask's event loop in a worker
    assert os_thread_name(threading.get_native_id()) != "?"  # Linux names every thread
