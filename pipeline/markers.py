"""Completion markers: one small file per finished block per stage.

Written after the block's shards, so a marker means the block is done.
Removed only once the run record says the output is complete: until then
a resumed run trusts them to skip blocks, and a partly removed set would
make it redo some stages from scratch labels that are gone.
Zarr does not store chunks equal to the fill value, so a missing shard says
nothing; only markers do. A predict marker also carries the block's label
summary, and a contacts marker its label pairs, so a resumed run can merge
labels without recomputing finished blocks. Paths go through fsspec; on
an object store a marker is one PUT (whole or absent) and every listing
asks the store (no cached listing).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.locations import filesystem, read_bytes, write_whole

MARKERS = "_markers"


def _stage_path(output_url: str, stage: str) -> str:
    return f"{output_url.rstrip('/')}/{MARKERS}/{stage.replace(' ', '-')}"


def write_marker(
    output_url: str, stage: str, block_id: int, payload: dict[str, npt.NDArray[Any]] | None = None
) -> None:
    """Mark ``block_id`` done in ``stage``; written whole or not at all."""
    buffer = io.BytesIO()
    np.savez(buffer, **(payload or {}))  # type: ignore[arg-type]  # numpy stubs misread **arrays
    write_whole(f"{_stage_path(output_url, stage)}/{block_id}.npz", buffer.getvalue())


def read_marker(output_url: str, stage: str, block_id: int) -> dict[str, npt.NDArray[Any]]:
    data = read_bytes(f"{_stage_path(output_url, stage)}/{block_id}.npz")
    with np.load(io.BytesIO(data)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def done_blocks(output_url: str, stage: str) -> set[int]:
    """Blocks marked done in ``stage`` (one listing, not one request per block)."""
    fs, folder = filesystem(_stage_path(output_url, stage))
    if not fs.exists(folder):
        return set()
    names = (path.rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False))
    return {int(name[: -len(".npz")]) for name in names if name.endswith(".npz")}


def remove_stage_markers(output_url: str, stage: str) -> None:
    """Drop one stage's markers: its blocks are to be done again."""
    fs, folder = filesystem(_stage_path(output_url, stage))
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


def remove_markers(output_url: str) -> None:
    """Drop every stage's markers: the output is complete and nothing will resume it."""
    fs, folder = filesystem(f"{output_url.rstrip('/')}/{MARKERS}")
    if fs.exists(folder):
        fs.rm(folder, recursive=True)
