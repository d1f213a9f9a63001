"""Where data lives: a local path or an fsspec URL (``s3://bucket/key``, ...).

Small files (lock, markers, logs) are written whole: object stores replace
an object in one PUT, so a reader sees the old object or the new one, never
half of one; local files go through a temporary name and a rename.
Credentials come from each filesystem's own standard sources (for S3 the
AWS variables, profile or instance role) and never pass through here.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import fsspec


def is_url(location: str) -> bool:
    return "://" in location


def join(location: str, *names: str) -> str:
    """``location``/``names``: "/" for URLs, the OS's rules for local paths."""
    if is_url(location):
        return "/".join([location.rstrip("/"), *names])
    return str(Path(location, *names))


def filesystem(location: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``location`` and the path on it, with no stale listing of that path.

    fsspec reuses one filesystem object per process and s3fs caches listings in
    it: other processes (the workers) write here, so every look goes to the store.
    """
    fs, path = fsspec.core.url_to_fs(location)
    fs.invalidate_cache(path)
    return fs, path


def read_bytes(location: str) -> bytes:
    """The whole file; FileNotFoundError when there is none."""
    if not is_url(location):  # fsspec's URL handling cost more than the read of a small file
        return Path(location).read_bytes()
    fs, path = filesystem(location)
    data: bytes = fs.cat_file(path)
    return data


def write_whole(location: str, data: bytes) -> None:
    """Replace ``location`` with ``data``, seen by readers whole or not at all."""
    if is_url(location):
        fs, path = filesystem(location)
        fs.pipe_file(path, data)
        return
    target = Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")  # two writers never share one
    try:
        partial.write_bytes(data)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


# stores whose fsspec filesystem creates a file only if absent in one request (S3's If-None-Match);
# fsspec's default for the others checks, then writes
CONDITIONAL_CREATE_PROTOCOLS = ("s3", "s3a")


def create_exclusive(location: str, data: bytes) -> bool:
    """Create ``location`` holding ``data`` only if nothing is there; FileExistsError if something is.

    Returns whether the store guarantees it: local files (O_EXCL) and S3 (a
    conditional PUT) do; on other stores two writers starting together can both win.
    """
    if not is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(location, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return True
    fs, path = filesystem(location)
    fs.pipe_file(path, data, mode="create")
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(protocol in CONDITIONAL_CREATE_PROTOCOLS for protocol in protocols)


def remove(location: str, *, recursive: bool = False) -> None:
    """Delete a file (or a folder / prefix, ``recursive``); nothing there is not an error."""
    fs, path = filesystem(location)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)
