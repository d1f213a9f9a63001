"""One run at a time per output: a lock file naming its owner.

The lock holds host, pid, run id and start time. A second run is refused
at start. A lock whose process is gone (same host, pid not running) is
stale: reported with how to clear it, and taken over by ``--resume``.
Created with O_EXCL, so two runs starting together cannot both win (local
outputs; object stores have no exclusive create and rely on the schedule).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from pipeline.errors import InputError
from pipeline.provenance import now

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


def _lock_path(output_url: str) -> Path:
    return Path(output_url) / LOCK_NAME


def read_lock(output_url: str) -> LockOwner | None:
    path = _lock_path(output_url)
    try:
        return LockOwner(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        raise OutputLockedError(f"unreadable lock file {path}: remove it if no run is active") from None


@contextmanager
def hold_lock(output_url: str, run_id: str, *, take_over_stale: bool) -> Iterator[LockOwner]:
    """Hold the output's lock for the duration of a run (local outputs only)."""
    if "://" in output_url:
        yield LockOwner(socket.gethostname(), os.getpid(), run_id, now())
        return
    path = _lock_path(output_url)
    owner = LockOwner(socket.gethostname(), os.getpid(), run_id, now())
    existing = read_lock(output_url)
    if existing is not None:
        alive = existing.is_alive()
        if alive is False and take_over_stale:
            path.unlink()
        elif alive is False:
            raise OutputLockedError(
                f"{output_url} has a stale lock from run {existing.run_id} (pid {existing.pid} on "
                f"{existing.host}, started {existing.started}), whose process is gone: continue it "
                f"with --resume, or remove {path} if you are sure no run is active"
            )
        else:
            raise OutputLockedError(
                f"{output_url} is being written by run {existing.run_id} (pid {existing.pid} on "
                f"{existing.host}, started {existing.started}); one run at a time per output"
            )
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise OutputLockedError(
            f"{output_url} was locked by another run a moment ago; one run at a time"
        ) from None
    with os.fdopen(descriptor, "w") as handle:
        json.dump(asdict(owner), handle)
    try:
        yield owner
    finally:
        path.unlink(missing_ok=True)
