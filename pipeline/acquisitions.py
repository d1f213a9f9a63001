"""Find the acquisitions under an input folder and decide which are ready.

An acquisition is a Zarr / OME-Zarr folder or a TIFF / OME-TIFF file. It
is ready when the microscope says so with a ready marker (``NAME.ready``
next to it, or ``.ready`` inside a Zarr folder), or when nothing we watch
has changed for a quiet period. What we watch is cheap to stat and never
means listing chunks: the metadata files of the store and of its direct
children, and the modification times of those folders (a folder's time
changes when an entry is created in it). A writer that fills existing
chunk folders for hours without touching those should write a marker.

Output names mirror the input tree: ``day1/embryo.zarr`` ->
``OUTPUT_ROOT/day1/embryo.ome.zarr``.

The input root may be a bucket prefix (``s3://bucket/incoming``). Object
stores have no folder times, so there the quiet period watches only the
modification times of the metadata objects (the store's and its direct
children's), read one HEAD request each; a writer that adds chunks to
existing arrays for longer than the quiet period should write a marker.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import InputError
from pipeline.locations import filesystem, is_url

log = logging.getLogger(__name__)

ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
OUTPUT_SUFFIX = ".ome.zarr"
MAX_DEPTH = 4  # plain folders (e.g. one per day or per instrument) nested under the input root


@dataclass(frozen=True, slots=True)
class Acquisition:
    name: str  # path under the input root without the format suffix, "/"-separated
    path: Path | str  # a local path, or a URL under a bucket prefix
    kind: Literal["zarr", "tiff"]
    ready: bool
    why: str  # what made it ready or what it waits for

    @property
    def output_name(self) -> str:
        return self.name + OUTPUT_SUFFIX

    @property
    def file_name(self) -> str:
        return self.path.name if isinstance(self.path, Path) else self.path.rstrip("/").rsplit("/", 1)[-1]


def discover_acquisitions(
    input_root: Path | str,
    *,
    quiet_seconds: float,
    ready_marker: str = ".ready",
    now: float | None = None,
) -> list[Acquisition]:
    """Every acquisition under ``input_root`` (a folder or a bucket prefix), sorted by name, ready or waiting."""
    clock = time.time() if now is None else now
    found: list[Acquisition] = []
    if isinstance(input_root, str) and is_url(input_root):
        _walk_bucket(input_root, quiet_seconds, ready_marker, clock, found)
    else:
        root = Path(input_root)
        if not root.is_dir():
            raise InputError(f"input root {root} is not a folder")
        _walk(root, root, 0, quiet_seconds, ready_marker, clock, found)
    return _refuse_shared_outputs(sorted(found, key=lambda acquisition: acquisition.name))


def _walk(
    root: Path,
    folder: Path,
    depth: int,
    quiet_seconds: float,
    ready_marker: str,
    now: float,
    found: list[Acquisition],
) -> None:
    with os.scandir(folder) as entries:
        listed = sorted(entries, key=lambda entry: entry.name)
    for entry in listed:
        if entry.name.startswith(".") or entry.name.endswith(ready_marker):
            continue
        path = Path(entry.path)
        if entry.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
            log.warning(
                "%s links to %s, outside the input root %s: not segmented", path, path.resolve(), root
            )
            continue
        lower = entry.name.lower()
        if entry.is_dir(follow_symlinks=True):
            if _is_zarr(path) or lower.endswith(ZARR_SUFFIXES):
                found.append(_zarr_acquisition(root, path, quiet_seconds, ready_marker, now))
            elif depth + 1 < MAX_DEPTH:
                _walk(root, path, depth + 1, quiet_seconds, ready_marker, now, found)
        elif lower.endswith(TIFF_SUFFIXES):
            marker = _marker(path, ready_marker, inside=False)
            changed = path.stat().st_mtime
            ready, why = _readiness(marker, changed, quiet_seconds, now)
            found.append(Acquisition(_name(root, path, TIFF_SUFFIXES), path, "tiff", ready, why))


def _zarr_acquisition(
    root: Path, path: Path, quiet_seconds: float, ready_marker: str, now: float
) -> Acquisition:
    name = _name(root, path, ZARR_SUFFIXES)
    if not _is_zarr(path):
        return Acquisition(name, path, "zarr", False, "no Zarr metadata yet (still being written?)")
    marker = _marker(path, ready_marker, inside=True)
    ready, why = _readiness(marker, _newest_change(path), quiet_seconds, now)
    return Acquisition(name, path, "zarr", ready, why)


def _readiness(
    marker: Path | str | None, changed: float, quiet_seconds: float, now: float
) -> tuple[bool, str]:
    if marker is not None:
        return True, f"ready marker {marker.name if isinstance(marker, Path) else marker}"
    quiet = now - changed
    if quiet >= quiet_seconds:
        return True, f"unchanged for {_duration(quiet)}"
    return False, (
        f"changed {_duration(max(quiet, 0.0))} ago: waits for {_duration(quiet_seconds)} without "
        "changes or a ready marker"
    )


def _marker(path: Path, ready_marker: str, *, inside: bool) -> Path | None:
    candidates = [path.with_name(path.name + ready_marker)]
    if inside:
        candidates.append(path / ready_marker)
    return next((candidate for candidate in candidates if candidate.exists()), None)


def _is_zarr(path: Path) -> bool:
    return any((path / name).is_file() for name in ZARR_METADATA)


def _newest_change(path: Path) -> float:
    """Newest modification among the store's folder, metadata files and direct children (no chunk listing)."""
    times = [path.stat().st_mtime, *_metadata_times(path)]
    if not (path / ".zarray").exists() and not _is_v3_array(path):
        # a group: its folder holds only children and metadata, so listing it is cheap
        with os.scandir(path) as entries:
            children = [Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=True)]
        for child in children:
            times.append(child.stat().st_mtime)
            times.extend(_metadata_times(child))
            if (child / "c").is_dir():
                times.append((child / "c").stat().st_mtime)
    elif (path / "c").is_dir():
        times.append((path / "c").stat().st_mtime)
    return max(times)


def _metadata_times(path: Path) -> list[float]:
    times = []
    for name in ZARR_METADATA:
        try:
            times.append((path / name).stat().st_mtime)
        except FileNotFoundError:
            continue  # each Zarr format has only some of these files
    return times


def _is_v3_array(path: Path) -> bool:
    metadata = path / "zarr.json"
    try:
        head = metadata.read_bytes()[:4096]
    except FileNotFoundError:
        return False
    return b'"node_type": "array"' in head or b'"node_type":"array"' in head


def _name(root: Path, path: Path, suffixes: tuple[str, ...]) -> str:
    relative = path.relative_to(root).as_posix()
    for suffix in suffixes:
        if relative.lower().endswith(suffix):
            return relative[: -len(suffix)]
    return relative


def _refuse_shared_outputs(found: list[Acquisition]) -> list[Acquisition]:
    """Two acquisitions that would write one output (``a.zarr`` and ``a.tif``): neither is segmented."""
    by_output: dict[str, list[Acquisition]] = {}
    for acquisition in found:
        by_output.setdefault(acquisition.output_name, []).append(acquisition)
    result = []
    for acquisition in found:
        clashing = [
            other.file_name for other in by_output[acquisition.output_name] if other is not acquisition
        ]
        if clashing:
            acquisition = Acquisition(
                acquisition.name,
                acquisition.path,
                acquisition.kind,
                False,
                f"its output {acquisition.output_name} would also be written by {', '.join(clashing)}: rename one",
            )
        result.append(acquisition)
    return result


def _walk_bucket(
    root_url: str, quiet_seconds: float, ready_marker: str, now: float, found: list[Acquisition]
) -> None:
    """``_walk`` for a bucket prefix: one listing per plain folder, HEAD requests for the rest."""
    fs, root = filesystem(root_url)
    fs.invalidate_cache()  # the microscope writes from elsewhere: list afresh
    if not fs.isdir(root):
        raise InputError(f"input root {root_url} is not a bucket prefix holding anything")
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        entries = {
            entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in fs.ls(folder, detail=True)
        }
        for name, entry in sorted(entries.items()):
            if name.startswith(".") or name.endswith(ready_marker):
                continue
            path = f"{folder}/{name}"
            relative = path[len(root) + 1 :]
            lower = name.lower()
            beside = name + ready_marker in entries
            if entry["type"] == "directory":
                metadata = _object_times(fs, path, ZARR_METADATA)
                if metadata or lower.endswith(ZARR_SUFFIXES):
                    url = fs.unstrip_protocol(path)
                    acquisition_name = _strip_suffix(relative, ZARR_SUFFIXES)
                    if not metadata:
                        why = "no Zarr metadata yet (still being written?)"
                        found.append(Acquisition(acquisition_name, url, "zarr", False, why))
                        continue
                    marker = name + ready_marker if beside else None
                    if marker is None and fs.exists(f"{path}/{ready_marker}"):
                        marker = f"{name}/{ready_marker}"
                    changed = max([*metadata, *_children_metadata_times(fs, path)])
                    ready, why = _readiness(marker, changed, quiet_seconds, now)
                    found.append(Acquisition(acquisition_name, url, "zarr", ready, why))
                elif depth + 1 < MAX_DEPTH:
                    pending.append((path, depth + 1))
            elif lower.endswith(TIFF_SUFFIXES):
                marker = name + ready_marker if beside else None
                ready, why = _readiness(marker, _modified(entry), quiet_seconds, now)
                url = fs.unstrip_protocol(path)
                found.append(Acquisition(_strip_suffix(relative, TIFF_SUFFIXES), url, "tiff", ready, why))


def _object_times(fs: Any, folder: str, names: tuple[str, ...]) -> list[float]:
    """Modification times of those of ``names`` that exist in ``folder`` (one HEAD request each)."""
    times = []
    for name in names:
        try:
            times.append(_modified(fs.info(f"{folder}/{name}")))
        except FileNotFoundError:
            continue  # each Zarr format has only some of these files
    return times


def _children_metadata_times(fs: Any, store: str) -> list[float]:
    """A group's children's metadata times; an array's chunks are never listed."""
    if _object_times(fs, store, (".zarray",)) or _is_v3_array_object(fs, store):
        return []
    times = []
    for entry in fs.ls(store, detail=True):
        if entry["type"] == "directory":
            times.extend(_object_times(fs, entry["name"].rstrip("/"), ("zarr.json", ".zarray", ".zattrs")))
    return times


def _is_v3_array_object(fs: Any, store: str) -> bool:
    try:
        head: bytes = fs.cat_file(f"{store}/zarr.json", start=0, end=4096)
    except FileNotFoundError:
        return False
    return b'"node_type": "array"' in head or b'"node_type":"array"' in head


def _modified(entry: dict[str, Any]) -> float:
    stamp = entry.get("LastModified") or entry.get("mtime") or entry.get("updated")
    if isinstance(stamp, datetime.datetime):
        return stamp.timestamp()
    if isinstance(stamp, int | float):
        return float(stamp)
    raise InputError(f"{entry.get('name')}: the store gives no modification time ({stamp!r})")


def _strip_suffix(relative: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if relative.lower().endswith(suffix):
            return relative[: -len(suffix)]
    return relative


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_roots(input_root: Path | str, output_root: Path | str) -> None:
    """Outputs inside the input root would be found as acquisitions the next night.

    Local folders are compared resolved (links and ``..`` followed). Bucket
    prefixes (``s3://bucket/prefix``) are compared as written: on one bucket
    neither prefix may hold the other; two buckets, or a bucket and a local
    folder, never overlap. Two URLs that name one store differently (an
    alias, another endpoint) cannot be told apart here.
    """
    if isinstance(input_root, Path) and isinstance(output_root, Path):
        source, target = input_root.resolve(), output_root.resolve()
        overlap = target == source or source in target.parents or target in source.parents
    elif isinstance(input_root, Path) or isinstance(output_root, Path):
        overlap = False  # one local folder, one bucket prefix
    else:
        source_key, target_key = _prefix_key(input_root), _prefix_key(output_root)
        overlap = (
            source_key == target_key
            or target_key.startswith(source_key + "/")
            or source_key.startswith(target_key + "/")
        )
    if overlap:
        raise InputError(
            f"output root {output_root} and input root {input_root} overlap: keep the outputs in a "
            "separate folder or bucket prefix (inputs are never modified, and outputs would be found "
            "as acquisitions)"
        )


def _prefix_key(url: str) -> str:
    """``s3://bucket/a/b/`` -> ``s3://bucket/a/b``, for comparing prefixes (``s3a`` is ``s3``)."""
    protocol, _, rest = url.partition("://")
    protocol = "s3" if protocol.lower() == "s3a" else protocol.lower()
    return f"{protocol}://{rest.strip('/')}"
