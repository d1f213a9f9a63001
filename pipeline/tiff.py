"""TIFF and OME-TIFF inputs, read lazily through tifffile's Zarr store.

tifffile exposes an image series (tiled, striped, compressed, or spread over
several files of an OME series) as a read-only Zarr 3 store whose chunks are
the file's tiles or strips, so zarr reads only what a window touches: never
the whole file. Axes come from the series (OME-XML or ImageJ metadata when
present); pixel sizes from OME-XML, ImageJ metadata or the resolution tags.

A file cut short (a copy that stopped early) is refused at open when pages
are missing: tifffile would quietly show fewer planes. Strips or tiles cut
off inside the pages it has fail the blocks that read them, named.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import tifffile
import zarr

from pipeline.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
LETTERS = {"T": "t", "C": "c", "S": "c", "Z": "z", "Q": "z", "I": "z", "Y": "y", "X": "x"}
MICROMETRES_PER_UNIT = {3: 10000.0}  # ResolutionUnit centimetre; inch is print DPI (72 dpi), not optics
OME_UNITS = {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter"}


@dataclass(frozen=True)
class TiffImage:
    array: zarr.Array[Any]
    axes: str  # ours, lower case, one per array axis: e.g. "tczyx", "zyx", "yxc" (RGB)
    description: str  # e.g. "OME-TIFF, series 0, tiled 256 x 256, zlib"
    pixel_sizes: dict[str, tuple[float, str | None]] = field(default_factory=dict)


def is_tiff(url: str) -> bool:
    return url.lower().endswith(TIFF_SUFFIXES)


def open_tiff(path: str) -> TiffImage:
    """Series 0, level 0 of a TIFF / OME-TIFF file as a lazily read Zarr array."""
    if "://" in path:
        raise InputError(f"{path}: TIFF inputs are read from local or mounted paths only, not URLs")
    try:
        with tifffile.TiffFile(path) as tiff:
            _check_page_chain(tiff, path)
            series = tiff.series[0]
            letters = series.axes.upper()
            description = _describe(tiff, series)
            sizes = _pixel_sizes(tiff, letters)
        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        array = zarr.open_array(store=store, mode="r")
    except InputError:
        raise
    except Exception as error:  # tifffile raises many kinds for damaged files
        raise InputError(f"cannot read {path} as TIFF: {type(error).__name__}: {error}") from error
    named = {letter.lower(): size for letter, size in sizes.items()}
    return TiffImage(array, _axes(letters), description, named)


def _check_page_chain(tiff: tifffile.TiffFile, path: str) -> None:
    """InputError when the last page tifffile could reach points past the end of the file."""
    pages = len(tiff.pages)  # follows the chain of page headers as far as it goes
    handle, layout = tiff.filehandle, tiff.tiff
    position = tiff.pages.next_page_offset  # where the last page keeps the offset of the next one
    if position is None:  # no chain of page headers to follow
        return
    handle.seek(position)
    pointer = handle.read(layout.offsetsize)
    following = struct.unpack(layout.offsetformat, pointer)[0] if len(pointer) == layout.offsetsize else None
    if following is None or following >= handle.size:
        missing = (
            f"page {pages - 1} is cut inside its header"
            if following is None
            else f"page {pages} should start at byte {following}"
        )
        raise InputError(
            f"{path} is truncated: {missing}, but the file ends at byte {handle.size}; later pages are "
            "missing: copy it again from its source"
        )


def reopen_tiff(path: str) -> zarr.Array[Any]:
    """The array again, in a worker: one open file per process, chunks read on demand."""
    return zarr.open_array(store=tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")


def _axes(letters: str) -> str:
    """tifffile's axis letters as ours: t, c (RGB samples too), z (depth, pages, unknown), y, x."""
    return "".join(LETTERS.get(letter, letter.lower()) for letter in letters)


def _describe(tiff: tifffile.TiffFile, series: Any) -> str:
    page = series.keyframe
    kind = "OME-TIFF" if tiff.is_ome else "ImageJ TIFF" if tiff.is_imagej else "TIFF"
    layout = (
        f"tiled {page.tilelength} x {page.tilewidth}"
        if page.is_tiled
        else f"strips of {page.rowsperstrip} rows"
    )
    files = " (multi-file)" if getattr(series, "is_multifile", False) else ""
    return f"{kind}{files}, series 0, {layout}, {page.compression.name.lower()}"


def _pixel_sizes(tiff: tifffile.TiffFile, letters: str) -> dict[str, tuple[float, str | None]]:
    """Pixel sizes by tifffile axis letter, from OME-XML, ImageJ metadata or resolution tags."""
    if tiff.is_ome and tiff.ome_metadata:
        return _ome_sizes(tiff.ome_metadata)
    page = tiff.series[0].keyframe
    resolution = page.tags.get("XResolution"), page.tags.get("YResolution")
    sizes: dict[str, tuple[float, str | None]] = {}
    if tiff.is_imagej and tiff.imagej_metadata:
        unit = _unit(str(tiff.imagej_metadata.get("unit", "")))
        if all(tag is not None for tag in resolution):
            for letter, tag in zip("XY", resolution):
                numerator, denominator = tag.value  # type: ignore[union-attr]
                if numerator:
                    sizes[letter] = (denominator / numerator, unit)
        if "spacing" in tiff.imagej_metadata and "Z" in letters:
            sizes["Z"] = (float(tiff.imagej_metadata["spacing"]), unit)
        return sizes
    unit_tag = page.tags.get("ResolutionUnit")
    per_unit = MICROMETRES_PER_UNIT.get(int(unit_tag.value)) if unit_tag is not None else None
    if per_unit is not None and all(tag is not None for tag in resolution):
        for letter, tag in zip("XY", resolution):
            numerator, denominator = tag.value  # type: ignore[union-attr]
            if numerator:
                sizes[letter] = (per_unit * denominator / numerator, "micrometer")
    return sizes


def _ome_sizes(xml: str) -> dict[str, tuple[float, str | None]]:
    pixels = next(
        (element for element in ElementTree.fromstring(xml).iter() if element.tag.endswith("Pixels")), None
    )
    sizes: dict[str, tuple[float, str | None]] = {}
    if pixels is None:
        return sizes
    for letter in "XYZ":
        value = pixels.get(f"PhysicalSize{letter}")
        if value is not None:
            sizes[letter] = (float(value), _unit(pixels.get(f"PhysicalSize{letter}Unit", "µm")))
    return sizes


def _unit(name: str) -> str | None:
    """An OME-NGFF unit name for a TIFF's unit string (micron, um, µm, ...), None if unknown."""
    cleaned = name.strip().replace("\\u00B5", "µ")
    if cleaned.lower() in ("micron", "microns", "micrometer", "micrometre"):
        return "micrometer"
    return OME_UNITS.get(cleaned)
