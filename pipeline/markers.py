"""Completion markers: one small file per finished block per stage.

Written after the block's shards, so a marker means the block is done.
Removed only once the run record says the output is complete: until then
a resumed run trusts them to skip blocks, and a partly removed set would
make it redo some stages from scratch labels that are gone.
Zarr does not store chunks equal to the fill value, so a missing shard says
nothing; only markers do. A predict marker also carries the block's label
summary, and a contacts marker its label pairs, so a resumed run can merge
labels without recomputing finished blocks. Paths go through fsspec.
"""

from __future__ import annotations

import io
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt

MARKERS = "_markers"


def _stage_path(output_url: str, stage: str) -> str:
    return f"{output_url.rstrip('/')}/{MARKERS}/{stage.replace(' ', '-')}"


def write_marker(
    output_url: str, stage: str, block_id: int, payload: dict[str, npt.NDArray[Any]] | None = None
) -> None:
    """Mark ``block_id`` done in ``stage``; written whole or not at all (temporary name, then rename)."""
    fs, folder = fsspec.core.url_to_fs(_stage_path(output_url, stage))
    fs.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **(payload or {}))  # type: ignore[arg-type]  # numpy stubs misread **arrays
    final = f"{folder}/{block_id}.npz"
    partial = f"{final}.partial"
    with fs.open(partial, "wb") as handle:
        handle.write(buffer.getvalue())
    fs.mv(partial, final)


def read_marker(output_url: str, stage: str, block_id: int) -> dict[str, npt.NDArray[Any]]:
    fs, folder = fsspec.core.url_to_fs(_stage_path(output_url, stage))
    with fs.open(f"{folder}/{block_id}.npz", "rb") as handle, np.load(io.BytesIO(handle.read())) as data:
        return {name: data[name] for name in data.files}


def done_blocks(output_url: str, stage: str) -> set[int]:
    """Blocks marked done in ``stage`` (one listing, not one request per block)."""
    fs, folder = fsspec.core.url_to_fs(_stage_path(output_url, stage))
    if not fs.exists(folder):
        return set()
    names = (path.rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False))
    return {int(name[: -len(".npz")]) for name in names if name.endswith(".npz")}


def remove_markers(output_url: str) -> None:
    """Drop every stage's markers: the output is complete and nothing will resume it."""
    fs, folder = fsspec.core.url_to_fs(f"{output_url.rstrip('/')}/{MARKERS}")
    if fs.exists(folder):
        fs.rm(folder, recursive=True)
