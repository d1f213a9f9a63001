"""CPU time by thread role: what the bench's end-to-end accounting rests on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from pipeline import zarr_direct
from pipeline.cpu_time import (
    ROLES,
    cpu_seconds_by_role,
    os_thread_name,
    other_threads_cpu_seconds,
    role,
    system_seconds_by_role,
)


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


def test_a_threads_page_faults_are_the_kernels_part_of_its_role() -> None:
    """Fresh memory is the kernel's to map and zero: a task thread touching 1 GiB of it, 64 MiB at a
    time (each an mmap of its own), spends system time that the role's kernel tally shows."""

    def touch() -> None:
        for _ in range(16):
            np.ones(1 << 26, np.uint8)
        touched.set()
        stop.wait()  # alive when read: ended threads are not counted

    before_system, before = system_seconds_by_role(), cpu_seconds_by_role()
    touched, stop = threading.Event(), threading.Event()
    worker = threading.Thread(target=touch, name="Dask-Default-Threads-9-0")
    worker.start()
    try:
        assert touched.wait(60)
        system, total = system_seconds_by_role(), cpu_seconds_by_role()
    finally:
        stop.set()
        worker.join()
    assert set(system) == set(ROLES)
    kernel = system["block tasks"] - before_system["block tasks"]
    assert 0.01 <= kernel <= total["block tasks"] - before["block tasks"] + 0.011


def test_threads_of_no_known_role_are_counted_by_name() -> None:
    """What the bench lists under "other": a thread named by nobody we know, under its name."""
    with busy_thread("spinner-for-the-test"):
        seconds = other_threads_cpu_seconds()
    assert seconds["spinner-for-the-test"] >= 0.15
    assert "MainThread" not in seconds  # Dask's event loop in a worker
    assert os_thread_name(threading.get_native_id()) != "?"  # Linux names every thread
