"""One run at a time per output: a lock file naming its owner.

The lock holds host, pid, run id and start time. A second run is refused
at start. A lock whose process is gone (same host, pid not running) is
stale: reported with how to clear it, and taken over by ``--resume``.
Created only if absent, so two runs starting together cannot both win:
locally with O_EXCL, on S3 with a conditional PUT (If-None-Match). Other
object stores (and S3-compatible servers that ignore the condition) get a
check, then a write: two runs started in the same instant could both
proceed there, so schedule one writer per output. A lock left by a run
on another host cannot be judged stale from here: the message names it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import psutil

from pipeline.errors import InputError
from pipeline.locations import create_exclusive, join, read_bytes, remove
from pipeline.provenance import now

log = logging.getLogger(__name__)

LOCK_NAME = "_run.lock"


@dataclass(frozen=True, slots=True)
class LockOwner:
    host: str
    pid: int
    run_id: str
    started: str

    def is_alive(self) -> bool | None:
        """True/False on this host; None when the owner is on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        return psutil.pid_exists(self.pid) and self.pid != os.getpid()


class OutputLockedError(InputError):
    """Another run holds the output."""


def lock_location(output_url: str) -> str:
    return join(output_url, LOCK_NAME)


def read_lock(output_url: str) -> LockOwner | None:
    location = lock_location(output_url)
    try:
        return LockOwner(**json.loads(read_bytes(location)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        raise OutputLockedError(f"unreadable lock file {location}: remove it if no run is active") from None


def refuse_if_held(output_url: str) -> None:
    """OutputLockedError if a live run (or one on another host) holds the output: a quick look
    before a run starts its cluster; ``hold_lock`` decides for good."""
    existing = read_lock(output_url)
    if existing is not None and existing.is_alive() is not False:
        raise _held_error(output_url, existing)


def _held_error(output_url: str, existing: LockOwner) -> OutputLockedError:
    held = f"run {existing.run_id} (pid {existing.pid} on {existing.host}, started {existing.started})"
    if existing.is_alive() is False:
        return OutputLockedError(
            f"{output_url} has a stale lock from {held}, whose process is gone: continue it "
            f"with --resume, or remove {lock_location(output_url)} if you are sure no run is active"
        )
    elsewhere = (
        f"; if that run is gone, remove {lock_location(output_url)}" if existing.is_alive() is None else ""
    )
    return OutputLockedError(
        f"{output_url} is being written by {held}; one run at a time per output{elsewhere}"
    )


@contextmanager
def hold_lock(output_url: str, run_id: str, *, take_over_stale: bool) -> Iterator[LockOwner]:
    """Hold the output's lock for the duration of a run."""
    location = lock_location(output_url)
    owner = LockOwner(socket.gethostname(), os.getpid(), run_id, now())
    existing = read_lock(output_url)
    if existing is not None:
        if existing.is_alive() is False and take_over_stale:
            remove(location)
        else:
            raise _held_error(output_url, existing)
    try:
        guaranteed = create_exclusive(location, json.dumps(asdict(owner)).encode())
    except FileExistsError:
        raise OutputLockedError(
            f"{output_url} was locked by another run a moment ago; one run at a time"
        ) from None
    if not guaranteed:
        log.warning(
            "%s: this store cannot create a file only if it is absent, so the lock was checked, then "
            "written: a second run started at the same moment would not have been stopped",
            location,
        )
    try:
        yield owner
    finally:
        remove(location)
