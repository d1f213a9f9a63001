"""Input volumes: Zarr v2/v3 arrays and groups, OME-Zarr (by path or URL), TIFF and OME-TIFF files.

Opened read-only (zarr's own stores, fsspec for URLs), never modified.
A block's window (tiles grown by the halo, mirror-padded at the volume
edge) is read with one read of its bounding box, then mirrored in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from pipeline.axes import Selection, channel_views, select_volume
from pipeline.errors import InputDataError, InputError
from pipeline.geometry import reflect_indices, spread_indices
from pipeline.resample import ResampledArray, SpatialArray
from pipeline.tiff import is_tiff, open_tiff, reopen_tiff

SUPPORTED_DTYPES = ("uint8", "uint16", "float32")
SAMPLE_EDGE = 256  # normalisation sample regions: SAMPLE_EDGE x SAMPLE_EDGE px of one plane
SAMPLE_READERS = 16  # normalisation sample regions read at once (Zarr inputs)
LABEL_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int32", "int64")


@dataclass(frozen=True, slots=True)
class PixelSize:
    value: float
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class InputRef:
    """Where an input array lives: enough for a worker to reopen it."""

    url: str  # the store: a local path or an fsspec URL
    path: str  # the array inside the store ("" for a bare array)
    axes: str  # "yx" or "zyx": the axes segmented
    fixed: tuple[tuple[int, int], ...] = ()  # the stored array's other axes, held at these (position, index)
    resample: tuple[float, float] | None = None  # seen resampled in Y, X by these factors (--rescale)
    merge_time: bool = False  # every timepoint kept: T and Z seen as one plane axis
    channels: tuple[int, ...] = ()  # a many-channel model's channels: C's position, then the indices


@dataclass(frozen=True)
class InputVolume:
    ref: InputRef
    array: SpatialArray
    description: str  # e.g. "OME-Zarr 0.5 image, level s0"
    pixel_sizes: dict[str, PixelSize] = field(default_factory=dict)
    source_axes: str = ""  # all axes of the stored array, e.g. "tczyx"
    selection: dict[str, int] = field(default_factory=dict)  # the index held on each of its other axes
    timepoints: int = 1  # > 1: every timepoint kept, each a run of planes along the plane axis
    output_axes: str = ""  # the output's axes ("tzyx" when timepoints are kept); default: ref.axes
    channel_arrays: tuple[SpatialArray, ...] = ()  # every channel a model of several reads; () for one

    @property
    def channels(self) -> list[InputVolume]:
        """The volume of each channel the model reads (this one, for a one-channel model)."""
        return [replace(self, array=array, channel_arrays=()) for array in self.channel_arrays] or [self]

    @property
    def planes_per_timepoint(self) -> int:
        """Planes of one timepoint: the run's plane axis holds ``timepoints`` runs of them."""
        return self.shape_zyx[0] // self.timepoints

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Shape with a leading plane axis of 1 for YX inputs."""
        shape = tuple(int(n) for n in self.array.shape)
        return (1, shape[0], shape[1]) if len(shape) == 2 else (shape[0], shape[1], shape[2])

    @property
    def chunks_zyx(self) -> tuple[int, int, int]:
        chunks = tuple(int(n) for n in self.array.chunks)
        return (1, chunks[0], chunks[1]) if len(chunks) == 2 else (chunks[0], chunks[1], chunks[2])

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)

    def read_window(self, planes: range, rows: tuple[int, int], cols: tuple[int, int]) -> npt.NDArray[Any]:
        """Planes x rows x cols in plane coordinates, mirror-padded where they leave the plane.

        Equals the same window cut from ``numpy.pad(plane, ..., mode="reflect")``.
        """
        return read_mirrored(self.array, planes, rows, cols)


def read_mirrored(
    array: SpatialArray, planes: range, rows: tuple[int, int], cols: tuple[int, int]
) -> npt.NDArray[Any]:
    """One read of the bounding box of the mirrored window, then the mirror in memory."""
    height, width = (int(n) for n in array.shape[-2:])
    ys = np.asarray(reflect_indices(rows[0], rows[1], height))
    xs = np.asarray(reflect_indices(cols[0], cols[1], width))
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    if array.ndim == 2:
        box = np.asarray(array[y0:y1, x0:x1])[np.newaxis]
    else:
        box = np.asarray(array[planes.start : planes.stop, y0:y1, x0:x1])
    if rows == (y0, y1) and cols == (x0, x1):
        return box
    if (y0, y1) == (max(rows[0], 0), min(rows[1], height)) and (x0, x1) == (
        max(cols[0], 0),
        min(cols[1], width),
    ):
        # the window is the box mirrored past the plane's edges: numpy.pad's "reflect", 10x faster than a gather
        widths = ((0, 0), (y0 - rows[0], rows[1] - y1), (x0 - cols[0], cols[1] - x1))
        return np.pad(box, widths, mode="reflect")
    return box.take(ys - y0, axis=1).take(xs - x0, axis=2)


def open_input(
    url: str,
    dtypes: tuple[str, ...] = SUPPORTED_DTYPES,
    *,
    channel: int | Sequence[int] | None = None,
    timepoint: int | None = None,
    channels: int = 1,
) -> InputVolume:
    """Open an input volume read-only; InputError names the path and the problem.

    ``dtypes``: the accepted data types (label maps for training pass integer ones).
    ``channel``, ``timepoint``: the index on those axes, where the input has them.
    ``channels``: how many channels the model reads (``channel`` then lists them).
    """
    choice: dict[str, Any] = {"channel": channel, "timepoint": timepoint, "channels": channels}
    if "://" not in url:
        if not Path(url).exists():
            raise InputError(f"no input at {url}: the path does not exist")
        url = str(Path(url).resolve())  # workers may run elsewhere; runs compare fingerprints by it
    volume = _open_tiff(url, **choice) if is_tiff(url) else _open_zarr(url, **choice)
    if volume.dtype.name not in dtypes:
        raise InputError(f"{url}: unsupported dtype {volume.dtype.name}; supported are {', '.join(dtypes)}")
    if min(volume.shape_zyx) < 1:
        raise InputError(f"{url}: the volume is empty (shape {volume.array.shape})")
    return volume


def _open_tiff(url: str, **choice: Any) -> InputVolume:
    image = open_tiff(url)
    selection = select_volume(url, image.axes, tuple(int(n) for n in image.array.shape), **choice)
    sizes = {name: PixelSize(value, unit) for name, (value, unit) in image.pixel_sizes.items()}
    return _selected(url, "", image.array, image.description, sizes, image.axes, selection)


def _selected(
    url: str,
    path: str,
    source: zarr.Array[Any],
    description: str,
    sizes: dict[str, PixelSize],
    axes: str,
    selection: Selection,
) -> InputVolume:
    """The volume ``selection`` takes out of ``source``, an array with ``axes``."""
    views = channel_views(source, selection.fixed, selection.channels, selection.merge_time)
    return InputVolume(
        InputRef(
            url,
            path,
            selection.spatial,
            selection.fixed,
            merge_time=selection.merge_time,
            channels=selection.channels,
        ),
        views[0],
        description,
        sizes,
        axes,
        selection.chosen,
        selection.timepoints,
        selection.output_axes,
        tuple(views) if selection.channels else (),
    )


def _open_zarr(url: str, **choice: Any) -> InputVolume:
    try:
        node = zarr.open(store=url, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        raise InputError(
            f"{url} is not a Zarr array or group: no zarr.json, .zarray or .zgroup there"
        ) from None
    except Exception as error:  # zarr and fsspec raise many kinds for unreadable stores
        raise InputError(f"cannot open {url} as Zarr: {type(error).__name__}: {error}") from error
    if isinstance(node, zarr.Array):
        axes = {2: "yx", 3: "zyx"}.get(node.ndim)
        if axes is None:
            raise InputError(
                f"{url}: a {node.ndim}-d array (shape {node.shape}); plain arrays must be YX or ZYX, "
                "or carry OME-Zarr axes metadata"
            )
        selection = select_volume(url, axes, tuple(int(n) for n in node.shape), **choice)
        return _selected(url, "", node, f"Zarr v{node.metadata.zarr_format} array", {}, axes, selection)
    return _open_group(url, node, **choice)


def _open_group(url: str, group: zarr.Group, **choice: Any) -> InputVolume:
    attrs: dict[str, Any] = dict(group.attrs)
    ome: Any = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales:
        arrays = sorted(name for name, _ in group.arrays())
        if len(arrays) == 1:
            array = group[arrays[0]]
            assert isinstance(array, zarr.Array)
            axes = {2: "yx", 3: "zyx"}.get(array.ndim)
            if axes is not None:
                selection = select_volume(url, axes, tuple(int(n) for n in array.shape), **choice)
                return _selected(url, arrays[0], array, f"Zarr group, array {arrays[0]}", {}, axes, selection)
        raise InputError(
            f"{url} is a Zarr group without OME-Zarr multiscales metadata and holding arrays {arrays}; "
            "point at one array (e.g. PATH/NAME) instead"
        )
    version = ome.get("version") or multiscales[0].get("version", "0.4")
    first = multiscales[0]
    level = first["datasets"][0]
    axes = "".join(_axis_letter(axis) for axis in first.get("axes", []))
    try:
        array = group[level["path"]]
    except KeyError:
        raise InputError(f"{url}: multiscales level 0 path '{level['path']}' does not exist") from None
    assert isinstance(array, zarr.Array)
    if array.ndim != len(axes):
        raise InputError(f"{url}: level {level['path']} has {array.ndim} dims but axes '{axes}'")
    scale = _scale(level.get("coordinateTransformations", []), len(axes))
    outer = _scale(first.get("coordinateTransformations", []), len(axes))
    units = [axis.get("unit") if isinstance(axis, dict) else None for axis in first.get("axes", [])]
    sizes = {
        name: PixelSize(s * o, unit) for name, s, o, unit in zip(axes, scale, outer, units) if name in "zyx"
    }
    selection = select_volume(url, axes, tuple(int(n) for n in array.shape), **choice)
    return _selected(
        url, level["path"], array, f"OME-Zarr {version} image, level {level['path']}", sizes, axes, selection
    )


def _axis_letter(axis: Any) -> str:
    """t, c, or the space axis' name: OME-NGFF 0.4+ axes carry a type, 0.3 only names."""
    if not isinstance(axis, dict):
        return str(axis)
    return {"time": "t", "channel": "c"}.get(str(axis.get("type")), str(axis.get("name")))


def _scale(transforms: list[dict[str, Any]], ndim: int) -> list[float]:
    for transform in transforms:
        if transform.get("type") == "scale":
            return [float(v) for v in transform["scale"]]
    return [1.0] * ndim


def reopen_input(ref: InputRef) -> list[SpatialArray]:
    """The input, reopened read-only in a worker: one array per channel the model reads.

    Not cached: see ``omezarr.output_array``.
    """
    source: Any
    if is_tiff(ref.url):
        source = reopen_tiff(ref.url)
    else:
        node = zarr.open(store=ref.url, mode="r")
        source = node[ref.path] if isinstance(node, zarr.Group) else node
    assert isinstance(source, zarr.Array)
    views: list[SpatialArray] = list(channel_views(source, ref.fixed, ref.channels, ref.merge_time))
    return views if ref.resample is None else [ResampledArray(view, ref.resample) for view in views]


def resampled_input(
    volume: InputVolume, factors: tuple[float, float], sizes: dict[str, PixelSize]
) -> InputVolume:
    """``volume`` seen at another pixel size (``sizes`` for Y and X): bilinear, window by window."""
    return replace(
        volume,
        ref=replace(volume.ref, resample=factors),
        array=ResampledArray(volume.array, factors),
        channel_arrays=tuple(ResampledArray(array, factors) for array in volume.channel_arrays),
        description=f"{volume.description}, resampled x{factors[0]:.4g} (y) x{factors[1]:.4g} (x)",
        pixel_sizes={**volume.pixel_sizes, **sizes},
    )


def sample_chunks(volume: InputVolume, count: int) -> list[npt.NDArray[Any]]:
    """The data of ``count`` input chunks spread evenly over the volume (deterministic)."""
    chunks = tuple(int(c) for c in volume.array.chunks)
    shape = tuple(int(n) for n in volume.array.shape)
    grid = tuple(math.ceil(n / c) for n, c in zip(shape, chunks))
    samples = []
    for flat in spread_indices(math.prod(grid), count):
        index = np.unravel_index(flat, grid)
        region = tuple(slice(int(i) * c, min((int(i) + 1) * c, n)) for i, c, n in zip(index, chunks, shape))
        planes = range(region[0].start, region[0].stop) if len(region) == 3 else range(1)
        with naming_damage(
            volume.ref,
            volume.array,
            planes,
            (region[-2].start, region[-2].stop),
            (region[-1].start, region[-1].stop),
        ):
            samples.append(np.asarray(volume.array[region]))
    return samples


@contextmanager
def naming_damage(
    ref: InputRef, array: SpatialArray, planes: range, rows: tuple[int, int], cols: tuple[int, int]
) -> Iterator[None]:
    """A failed read of this window becomes an InputDataError naming the input and its damaged chunks."""
    try:
        yield
    except Exception as error:  # codecs and stores raise many kinds for damaged data
        where = describe_chunks(array, planes, rows, cols, damaged_only=True, kind=_chunk_kind(ref, array))
        raise InputDataError(
            f"{ref.url}: cannot read {where}: {type(error).__name__}: {error}. The input is damaged there "
            "(a corrupt or truncated copy?): copy it again from its source"
        ) from error


def _chunk_kind(ref: InputRef, array: SpatialArray) -> str:
    """What the input's chunks are: a TIFF's are its strips (whole rows) or tiles."""
    if not is_tiff(ref.url):
        return "input chunk"
    return "TIFF strip" if int(array.chunks[-1]) >= int(array.shape[-1]) else "TIFF tile"


def describe_chunks(
    array: SpatialArray,
    planes: range,
    rows: tuple[int, int],
    cols: tuple[int, int],
    *,
    damaged_only: bool = False,
    kind: str = "input chunk",
) -> str:
    """The input chunks under a window (in the run's Z, Y, X), or only those that fail to read.

    ``kind``: what a chunk is called, e.g. "TIFF strip".
    """
    height, width = (int(n) for n in array.shape[-2:])
    rows, cols = (max(0, rows[0]), min(height, rows[1])), (max(0, cols[0]), min(width, cols[1]))
    sizes = tuple(int(n) for n in array.chunks)
    spans = [range(rows[0] // sizes[-2], (rows[1] - 1) // sizes[-2] + 1)]
    spans.append(range(cols[0] // sizes[-1], (cols[1] - 1) // sizes[-1] + 1))
    if array.ndim == 3:
        spans.insert(0, range(planes.start // sizes[0], (planes.stop - 1) // sizes[0] + 1))
    found = list(itertools.product(*spans))
    if damaged_only:
        found = [index for index in found if not _readable(array, index, sizes)] or found
    names = "zyx"[-len(spans) :]
    listed = "; ".join(", ".join(f"{name} {i}" for name, i in zip(names, index)) for index in found[:8])
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    return f"{kind}(s) {listed}{more} ({kind.split()[-1]}s of {' x '.join(map(str, sizes))})"


def _readable(array: SpatialArray, index: tuple[int, ...], sizes: tuple[int, ...]) -> bool:
    region = tuple(slice(i * size, min((i + 1) * size, n)) for i, size, n in zip(index, sizes, array.shape))
    try:
        np.asarray(array[region])
    except Exception:  # noqa: BLE001  # a damaged chunk, whatever the codec says
        return False
    return True


def normalization_sample(volume: InputVolume, regions: int, max_values: int) -> npt.NDArray[Any]:
    """Values for the run's normalisation statistics: sampled regions, evenly strided.

    Regions of one plane and ``SAMPLE_EDGE`` px on a grid fixed by the shape
    alone, so the same data gives the same statistics however it is chunked
    (Zarr v2 or v3, TIFF tiles or strips).
    """
    planes, height, width = volume.shape_zyx
    grid = (planes, math.ceil(height / SAMPLE_EDGE), math.ceil(width / SAMPLE_EDGE))

    def read(flat: int) -> npt.NDArray[Any]:
        plane, row, col = (int(i) for i in np.unravel_index(flat, grid))
        rows = (row * SAMPLE_EDGE, min(height, (row + 1) * SAMPLE_EDGE))
        cols = (col * SAMPLE_EDGE, min(width, (col + 1) * SAMPLE_EDGE))
        with naming_damage(volume.ref, volume.array, range(plane, plane + 1), rows, cols):
            return volume.read_window(range(plane, plane + 1), rows, cols).ravel()

    # Zarr reads side by side (in a bucket each waits on its own round trip); a TIFF's one file handle, in turn
    readers = 1 if is_tiff(volume.ref.url) else SAMPLE_READERS
    with ThreadPoolExecutor(readers, thread_name_prefix="normalisation-sample") as pool:
        values = np.concatenate(list(pool.map(read, spread_indices(math.prod(grid), regions))))
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputError(
            f"{volume.ref.url}: NaN or Inf values in the input (seen in the normalisation sample); "
            "replace them (e.g. with 0) before segmenting"
        )
    stride = max(1, math.ceil(values.size / max_values))
    return values[::stride]


def fingerprint(volume: InputVolume, chunks: int = 16) -> dict[str, Any]:
    """Identity of an input: where, what shape and type, and a hash of sampled chunks."""
    digest = hashlib.sha256()
    for chunk in sample_chunks(volume, chunks):
        digest.update(np.ascontiguousarray(chunk).tobytes())
    selected: dict[str, Any] = {}
    if volume.selection:
        selected = {"source_axes": volume.source_axes, "selection": volume.selection}
    if volume.timepoints > 1:
        selected = {**selected, "source_axes": volume.source_axes, "timepoints": volume.timepoints}
    return {
        "url": volume.ref.url,
        "path": volume.ref.path,
        "axes": volume.ref.axes,
        **selected,
        "shape": list(volume.array.shape),
        "dtype": volume.dtype.name,
        "chunks": list(volume.array.chunks),
        "sampled_chunks": min(chunks, _chunk_count(volume)),
        "content_sha256": digest.hexdigest(),
    }


def _chunk_count(volume: InputVolume) -> int:
    return math.prod(math.ceil(int(n) / int(c)) for n, c in zip(volume.array.shape, volume.array.chunks))
