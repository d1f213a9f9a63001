"""The output store: an OME-Zarr image of the foreground probability, NGFF 0.5 or 0.4.

Layout, for a ZYX input::

    OUT/zarr.json        group: "ome" multiscales + "unet_pipeline" run records
    OUT/s0 .. OUT/sN     probability pyramid, 2x2 mean in YX per level
                         chunk = one output tile (1 x t x t), shard = k x k tiles

NGFF 0.4 (for viewers that read only Zarr v2: Fiji/MoBIE, ilastik) holds
the same arrays in Zarr v2: no shards (chunks of one tile, "/" separated
keys), the metadata at the top of ``.zattrs`` with a version in each entry.

Readers need nothing of this package: napari, ome-zarr-py, dask and zarr
open it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.errors import InputError
from pipeline.geometry import ceil_div
from pipeline.locations import filesystem, is_url
from pipeline.store import PixelSize

RECORD_KEY = "unet_pipeline"  # our key in the root attributes
NGFF_VERSION = "0.5"
NGFF_VERSIONS = ("0.5", "0.4")


@dataclass(frozen=True, slots=True)
class OutputLayout:
    shape: tuple[int, ...]  # as the input: (Y, X) or (Z, Y, X)
    axes: str  # "yx" or "zyx"
    tile: int
    shard_tiles: int
    dtype: str  # "uint8" or "float32"
    zstd_level: int = 3
    levels: int = 0  # pyramid levels below full resolution
    pixel_sizes: dict[str, PixelSize] = field(default_factory=dict)
    ngff: str = NGFF_VERSION  # "0.5" (Zarr v3, sharded) or "0.4" (Zarr v2)

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.axes):
            raise ValueError(f"shape {self.shape} does not match axes '{self.axes}'")
        if self.ngff not in NGFF_VERSIONS:
            raise ValueError(f"NGFF version {self.ngff} is not one of {', '.join(NGFF_VERSIONS)}")

    @property
    def zarr_format(self) -> int:
        return 3 if self.ngff == "0.5" else 2

    def level_shape(self, level: int) -> tuple[int, ...]:
        """Shape at pyramid ``level``: YX halved (rounding up) per level, Z kept."""
        factor = 2**level
        *planes, height, width = self.shape
        return (*planes, ceil_div(height, factor), ceil_div(width, factor))

    @property
    def chunks(self) -> tuple[int, ...]:
        return (1,) * (len(self.shape) - 2) + (self.tile, self.tile)

    @property
    def shards(self) -> tuple[int, ...]:
        edge = self.tile * self.shard_tiles
        return (1,) * (len(self.shape) - 2) + (edge, edge)


def auto_levels(height: int, width: int, tile: int) -> int:
    """Halvings until a plane fits one tile."""
    levels = 0
    while max(ceil_div(height, 2**levels), ceil_div(width, 2**levels)) > tile:
        levels += 1
    return levels


def multiscales(layout: OutputLayout, name: str, method: str = "mean") -> dict[str, Any]:
    """NGFF 0.5 ``multiscales`` entry: one dataset per level.

    ``mean`` levels (2x2 averages) are shifted by half a pixel of the finer
    level; ``nearest`` levels (every second pixel) are not.
    """
    axes = []
    for axis in layout.axes:
        entry: dict[str, Any] = {"name": axis, "type": "time" if axis == "t" else "space"}
        unit = layout.pixel_sizes.get(axis, PixelSize(1.0)).unit
        if unit:
            entry["unit"] = unit
        axes.append(entry)
    base = [layout.pixel_sizes.get(axis, PixelSize(1.0)).value for axis in layout.axes]
    datasets = []
    for level in range(layout.levels + 1):
        factor = [1.0] * (len(base) - 2) + [2.0**level] * 2
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [b * f for b, f in zip(base, factor)]}]
        if level and method == "mean":
            # a 2x2 mean's pixel centre sits half a (coarse - fine) pixel from the origin
            transforms.append(
                {"type": "translation", "translation": [b * (f - 1) / 2 for b, f in zip(base, factor)]}
            )
        datasets.append({"path": f"s{level}", "coordinateTransformations": transforms})
    return {
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": method,
        "metadata": {"description": f"2x2 {method} in YX per level", "method": "unet-pipeline pyramid"},
    }


SCRATCH = "_scratch"  # the pipeline's own working arrays, removed when the run completes
SCRATCH_LABELS = "_scratch/local_labels"  # per-block labels before the global merge; removed at the end
SCRATCH_LABEL_LEVELS = 2  # label pyramid levels kept beside the local labels (see _create_scratch_labels)
SCRATCH_PROBABILITY = "_scratch/model_grid_probability"  # --rescale: foreground on the model's grid
SCRATCH_LABEL_EDGES = "_scratch/local_label_edges"  # each block plane's first and last rows and columns


LZ4 = (
    Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
    BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
)


def _create_pyramid(group: zarr.Group, prefix: str, layout: OutputLayout, dtype: str) -> None:
    for level in range(layout.levels + 1):
        _create_array(group, f"{prefix}s{level}", layout, layout.level_shape(level), dtype)


def _create_scratch_labels(
    group: zarr.Group, layout: OutputLayout, block_edges: tuple[int, int, int]
) -> None:
    """Local labels, one chunk per block and plane, LZ4-compressed, and every 2^k-th voxel of them
    in Y and X for the first label pyramid levels (one chunk per block and plane too); the edge
    lines of each block plane (:mod:`pipeline.label_edges`), a chunk each.

    Only this pipeline reads them, a block at a time, and soon: a block's
    write, a contact slab or a relabel is one chunk per plane, and LZ4 (with a
    byte shuffle) encodes labels 3x and decodes them 4x faster than Zstd,
    at 11x instead of 19x smaller (measured on speckle labels). A label
    pyramid level then decodes its own voxels instead of all of them.
    """
    _, rows, cols = block_edges
    planes = (1,) * (len(layout.shape) - 2)
    height, width = layout.shape[-2:]
    length = max(rows, cols)
    _new_array(
        group,
        SCRATCH_LABEL_EDGES,
        layout,
        (int(np.prod(layout.shape[:-2])), ceil_div(height, rows), ceil_div(width, cols), 4, length),
        "uint32",
        chunks=(1, 1, 1, 4, length),
        shards=None,
        codec=LZ4,
        dimensions=("plane", "block_y", "block_x", "line", "voxel"),
    )
    for level in range(min(SCRATCH_LABEL_LEVELS, layout.levels) + 1):
        step = 2**level
        if rows % step or cols % step:  # a block's voxels at this level would not fill whole chunks
            break
        _new_array(
            group,
            scratch_labels_path(level),
            layout,
            layout.level_shape(level),
            "uint32",
            chunks=(*planes, rows // step, cols // step),
            shards=None,
            codec=LZ4,
        )


def scratch_labels_path(level: int) -> str:
    """The scratch local labels at a level: every ``2**level``-th voxel in Y and X."""
    return SCRATCH_LABELS if level == 0 else f"{SCRATCH_LABELS}_s{level}"


def scratch_label_edges(url: str) -> bool:
    """Whether the output keeps the edge lines of the local labels (outputs of older runs do not)."""
    return SCRATCH_LABEL_EDGES in zarr.open_group(store=url, mode="r")


def scratch_label_levels(url: str) -> int:
    """How many subsampled levels of the local labels the output keeps (none in outputs of older runs)."""
    group = zarr.open_group(store=url, mode="r")
    levels = 0
    while levels < SCRATCH_LABEL_LEVELS and scratch_labels_path(levels + 1) in group:
        levels += 1
    return levels


def _create_array(
    group: zarr.Group, path: str, layout: OutputLayout, shape: tuple[int, ...], dtype: str
) -> None:
    zstd = (Zstd(level=layout.zstd_level), ZstdCodec(level=layout.zstd_level))
    _new_array(group, path, layout, shape, dtype, chunks=layout.chunks, shards=layout.shards, codec=zstd)


def _new_array(
    group: zarr.Group,
    path: str,
    layout: OutputLayout,
    shape: tuple[int, ...],
    dtype: str,
    *,
    chunks: tuple[int, ...],
    shards: tuple[int, ...] | None,
    codec: tuple[Any, Any],
    dimensions: tuple[str, ...] | None = None,
) -> None:
    """An empty array in the output's Zarr format; ``codec``: its compressor for Zarr v2 and for v3.

    Zarr v2 has no shards: chunks of ``chunks``, keys "/"-separated (as NGFF 0.4 readers expect).
    """
    common: dict[str, Any] = {
        "shape": shape,
        "dtype": dtype,
        "chunks": chunks,
        "fill_value": 0,
        "overwrite": True,
    }
    if layout.zarr_format == 2:
        group.create_array(
            path, compressors=codec[0], chunk_key_encoding={"name": "v2", "separator": "/"}, **common
        )
        return
    group.create_array(
        path, compressors=codec[1], shards=shards, dimension_names=dimensions or tuple(layout.axes), **common
    )


def create_output(
    url: str,
    layout: OutputLayout,
    *,
    name: str = "foreground probability",
    label_blocks: tuple[int, int, int] | None = None,
    model_grid: tuple[int, int] | None = None,
) -> zarr.Group:
    """Create the store with empty arrays and OME metadata; refuses an existing one.

    ``label_blocks``: the block edges (ZYX voxels) of a run that labels: scratch local labels in
    chunks of one block's plane.
    ``model_grid``: (height, width) of the model's grid (--rescale): a float32 scratch array of that
    plane size holds the foreground there until it is resampled to the output's grid.
    """
    try:
        group = zarr.open_group(store=url, mode="w-", zarr_format=layout.zarr_format)  # type: ignore[arg-type]
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
        raise InputError(f"output {url} already exists") from None
    _create_pyramid(group, "", layout, layout.dtype)
    if label_blocks is not None:
        _create_scratch_labels(group, layout, label_blocks)
    if model_grid is not None:
        _create_array(group, SCRATCH_PROBABILITY, layout, (*layout.shape[:-2], *model_grid), "float32")
    window_end = 255 if layout.dtype == "uint8" else 1.0
    omero = {
        "channels": [
            {
                "label": name,
                "color": "FFFFFF",
                "active": True,
                "window": {"min": 0, "max": window_end, "start": 0, "end": window_end},
            }
        ]
    }
    group.attrs.update(
        {
            **ome_attributes(layout.ngff, multiscales=[multiscales(layout, name)], omero=omero),
            RECORD_KEY: {"complete": False, "runs": []},
        }
    )
    return group


def ome_attributes(ngff: str, **content: Any) -> dict[str, Any]:
    """NGFF metadata where the version keeps it: under "ome" (0.5), or at the top with a version
    in each multiscale and image-label entry (0.4)."""
    if ngff == "0.5":
        return {"ome": {"version": ngff, **content}}
    legacy = dict(content)
    if "multiscales" in legacy:
        legacy["multiscales"] = [{"version": ngff, **entry} for entry in legacy["multiscales"]]
    if "image-label" in legacy:
        legacy["image-label"] = {**legacy["image-label"], "version": ngff}
    return legacy


def create_labels(url: str, layout: OutputLayout, name: str, dtype: str) -> None:
    """``labels/<name>``: an image-label multiscale (nearest levels) with its ``labels`` group.

    Keeps an existing one of the same dtype (a resumed run's relabel pass).
    """
    group = zarr.open_group(store=url, mode="r+")
    try:
        existing = group[f"labels/{name}/s0"]
    except KeyError:
        existing = None
    if isinstance(existing, zarr.Array) and existing.dtype == np.dtype(dtype):
        return
    labels = group.require_group("labels")
    labels.attrs.update(ome_attributes(layout.ngff, labels=[name]))
    image = labels.require_group(name)
    _create_pyramid(image, "", layout, dtype)
    image.attrs.update(
        ome_attributes(
            layout.ngff,
            multiscales=[multiscales(layout, name, method="nearest")],
            **{"image-label": {"version": layout.ngff, "source": {"image": "../../"}}},
        )
    )


def labels_dtype(url: str, name: str) -> str | None:
    """The dtype of ``labels/<name>`` where an earlier attempt created it, else None."""
    try:
        existing = zarr.open_group(store=url, mode="r")[f"labels/{name}/s0"]
    except (KeyError, FileNotFoundError):
        return None
    return str(existing.dtype) if isinstance(existing, zarr.Array) else None


def ensure_scratch_labels(url: str, layout: OutputLayout, block_edges: tuple[int, int, int]) -> None:
    group = zarr.open_group(store=url, mode="r+")
    if SCRATCH_LABELS not in group:
        _create_scratch_labels(group, layout, block_edges)


def remove_scratch(url: str) -> None:
    """Drop the per-block scratch labels (and --rescale's scratch probability) once every stage is done."""
    fs, path = filesystem(url)
    if fs.exists(f"{path}/{SCRATCH}"):
        fs.rm(f"{path}/{SCRATCH}", recursive=True)


def open_output(url: str, mode: str = "r") -> zarr.Group:
    try:
        group = zarr.open_group(store=url, mode=mode)  # type: ignore[arg-type]
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.GroupNotFoundError):
        raise InputError(f"no unet-pipeline output at {url}") from None
    if RECORD_KEY not in group.attrs:
        raise InputError(
            f"{url} is a Zarr group but not a unet-pipeline output (no '{RECORD_KEY}' attributes)"
        )
    return group


def output_exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def is_pipeline_output(url: str) -> bool:
    try:
        open_output(url)
    except InputError:
        return False
    return True


def remove_output(url: str) -> None:
    """Delete a previous output, only if it is one of ours (``--overwrite``)."""
    open_output(url)
    fs, path = filesystem(url)
    fs.rm(path, recursive=True)


def output_array(url: str, path: str) -> zarr.Array[Any]:
    """An array of the output (``s0``, ``labels/cells/s1``, ...), opened for writing.

    Scratch arrays store every chunk as written: they are read back whole and
    soon deleted, so checking each chunk for emptiness first (a pass over its
    voxels) buys nothing. An array in a local folder is opened once per
    process while its metadata reads the same (a block's tasks open a dozen,
    0.65 CPU-ms each; reading the metadata file takes 0.02).
    """
    identity = None if is_url(url) else _metadata(Path(url) / path)
    array = _OPENED.get((url, path, identity)) if identity else None
    if array is None:
        array = zarr.open_array(store=url, path=path, mode="r+")  # its own metadata only, not the group's
        if path.startswith(f"{SCRATCH}/"):
            array = array.with_config({"write_empty_chunks": True})
        if identity:
            if len(_OPENED) >= _OPENED_KEPT:
                _OPENED.clear()
            _OPENED[(url, path, identity)] = array
    return array


_OPENED: dict[tuple[str, str, bytes], zarr.Array[Any]] = {}
_OPENED_KEPT = 256


def _metadata(folder: Path) -> bytes | None:
    """An array's metadata file as stored (Zarr v3, else v2); None if there is none."""
    for name in ("zarr.json", ".zarray"):
        try:
            return (folder / name).read_bytes()
        except OSError:
            continue
    return None


def encode_probability(probability: npt.NDArray[np.float32], dtype: str) -> npt.NDArray[Any]:
    """Stored form of a probability: uint8 ``round(p * 255)``, or float32 as it is."""
    if dtype == "float32":
        return probability.astype(np.float32, copy=False)
    scaled: npt.NDArray[np.float32] = probability * np.float32(255)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


def downsample_mean(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """2x2 mean over the last two axes (odd edges average what is there), same dtype; integers
    rounded half to even (as ``np.rint``)."""
    height, width = values.shape[-2:]
    if height % 2 or width % 2:
        pad = [(0, 0)] * (values.ndim - 2) + [(0, height % 2), (0, width % 2)]
        values = np.pad(values, pad, mode="edge")
    if values.dtype.kind == "u" and values.itemsize <= 4:
        return _mean_of_four_unsigned(values)
    even = values.astype(np.float32)
    mean = (even[..., 0::2, 0::2] + even[..., 1::2, 0::2] + even[..., 0::2, 1::2] + even[..., 1::2, 1::2]) / 4
    rounded = np.rint(mean) if np.issubdtype(values.dtype, np.integer) else mean
    result: npt.NDArray[Any] = rounded.astype(values.dtype)
    return result


def _mean_of_four_unsigned(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``np.rint`` of the 2x2 means in integers: 10x faster than through float32 for uint8 (pairs of
    rows summed first, then pairs of columns of those: contiguous reads, half the strided ones)."""
    wide = {1: np.uint16, 2: np.uint32}.get(values.itemsize, np.uint64)
    rows = values[..., 0::2, :].astype(wide)
    rows += values[..., 1::2, :]
    total = rows[..., 0::2] + rows[..., 1::2]
    up = (total & 3) + ((total >> 2) & 1) > 2  # remainder 3, or 2 with an odd quotient (half to even)
    total >>= 2
    total += up
    result: npt.NDArray[Any] = total.astype(values.dtype)
    return result


def read_state(group: zarr.Group) -> dict[str, Any]:
    """Our part of the root attributes: ``complete`` and the list of run records."""
    state: dict[str, Any] = dict(group.attrs[RECORD_KEY])  # type: ignore[arg-type]
    return state


def write_state(group: zarr.Group, state: dict[str, Any]) -> None:
    group.attrs[RECORD_KEY] = state
