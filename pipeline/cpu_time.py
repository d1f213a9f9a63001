"""Where a process's CPU time goes, by what its threads do.

A run's wall time on a saturated machine is its CPU time over the cores;
the bench splits a worker's CPU time into the network (the device batcher's
thread: the forward passes on CPU, their launches on a GPU), the block tasks
(reading, labelling, contacts, pyramids: Dask's task threads), the threads
that read and write the tasks' local files, Zarr's event loop and codec
threads, and Dask's own event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psutil

from pipeline.zarr_direct import FILE_THREADS

ROLES = (
    "network",
    "block tasks",
    "file threads",
    "zarr event loop",
    "zarr codecs",
    "dask event loop",
    "other",
)


def role(thread_name: str) -> str:
    if thread_name == "unet-device-batcher":
        return "network"
    if "Dask-Default-Threads" in thread_name:
        return "block tasks"
    if thread_name.startswith(FILE_THREADS):
        return "file threads"
    if thread_name == "zarr_io":
        return "zarr event loop"
    if thread_name.startswith(("asyncio_", "zarr_pool")):
        # zarr's codec pipeline runs in asyncio.to_thread's pool: zarr's own when threading.max_workers is set
        return "zarr codecs"
    if thread_name == "MainThread":  # a worker process's main thread runs Dask's event loop
        return "dask event loop"
    return "other"


_ENDED = dict.fromkeys(ROLES, 0.0)  # CPU seconds of threads that ended, as they reported them


def count_ended_thread(role: str, seconds: float) -> None:
    """A short-lived thread's own CPU seconds (``time.thread_time()``), reported as it ends."""
    _ENDED[role] += seconds


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds (user + system) this process's threads have used, summed per role.

    Live threads are read; of those that ended, only what they reported (:func:`count_ended_thread`)
    is known. A worker's Dask, Zarr and batcher threads live as long as it does.
    """
    totals = dict(_ENDED)
    for _, name, user, system in _live_threads():
        totals[role(name)] += user + system
    return totals


def system_seconds_by_role() -> dict[str, float]:
    """Of :func:`cpu_seconds_by_role`, the kernel's part (page faults, file IO, locks), live threads only."""
    totals = dict.fromkeys(ROLES, 0.0)
    for _, name, _, system in _live_threads():
        totals[role(name)] += system
    return totals


def _live_threads() -> Iterator[tuple[int, str, float, float]]:
    """This process's live threads: OS id, Python name ("" for threads started outside Python), user and
    system CPU seconds."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    for thread in psutil.Process().threads():
        yield thread.id, names.get(thread.id, ""), thread.user_time, thread.system_time


def other_threads_cpu_seconds() -> dict[str, float]:
    """CPU seconds of this process's live threads of role "other", by the name the OS has for them.

    Threads started outside Python (CUDA's, torch's, OpenMP's) have no Python name; on Linux their
    own name (``/proc/self/task/<id>/comm``) or the process's says what they are.
    """
    totals: dict[str, float] = {}
    for thread_id, name, user, system in _live_threads():
        if role(name) == "other":
            name = name or os_thread_name(thread_id)
            totals[name] = totals.get(name, 0.0) + user + system
    return totals


def os_thread_name(thread_id: int) -> str:
    try:
        with open(f"/proc/self/task/{thread_id}/comm") as comm:
            return comm.read().strip() or "?"
    except OSError:
        return "?"
