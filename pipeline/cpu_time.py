"""Where a process's CPU time goes, by what its threads do.

A run's wall time on a saturated machine is its CPU time over the cores;
the bench splits a worker's CPU time into the network (the device batcher's
thread: the forward passes on CPU, their launches on a GPU), the block tasks
(reading, labelling, contacts, pyramids: Dask's task threads), Zarr's event
loop and codec threads, and Dask's own event loop.
"""

from __future__ import annotations

import threading

import psutil

ROLES = ("network", "block tasks", "zarr event loop", "zarr codecs", "dask event loop", "other")


def role(thread_name: str) -> str:
    if thread_name == "unet-device-batcher":
        return "network"
    if "Dask-Default-Threads" in thread_name:
        return "block tasks"
    if thread_name == "zarr_io":
        return "zarr event loop"
    if thread_name.startswith(("asyncio_", "zarr_pool")):
        # zarr's codec pipeline runs in asyncio.to_thread's pool: zarr's own when threading.max_workers is set
        return "zarr codecs"
    if thread_name == "MainThread":  # a worker process's main thread runs Dask's event loop
        return "dask event loop"
    return "other"


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds (user + system) this process's live threads have used, summed per role.

    Threads that ended are missed; a worker's threads live as long as it does.
    """
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    totals = dict.fromkeys(ROLES, 0.0)
    for thread in psutil.Process().threads():
        totals[role(names.get(thread.id, ""))] += thread.user_time + thread.system_time
    return totals
