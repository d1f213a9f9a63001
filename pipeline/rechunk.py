"""Copy an input into an OME-Zarr image chunked for tile reads.

For inputs whose storage makes every block decode far more than it uses
(a TIFF stored as one strip per plane, Zarr chunks of whole planes): one
pass over the input in bands of whole input chunks, written as 1 x 512 x
512 chunks, with the input's axes and pixel sizes. The input is only read.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import zarr

from pipeline.errors import InputError
from pipeline.geometry import read_amplification
from pipeline.progress import stage_progress
from pipeline.store import InputVolume, open_input

log = logging.getLogger(__name__)

RECHUNK_EDGE = 512
READ_AMPLIFICATION_WARNING = 4.0  # a block decoding 4x what it uses: IO, not the GPU, sets the pace


def block_read_amplification(volume: InputVolume, window_zyx: tuple[int, int, int]) -> float:
    return read_amplification(volume.shape_zyx, volume.chunks_zyx, window_zyx)


def rechunk(
    input_url: str,
    output: Path,
    *,
    channel: int | None = None,
    timepoint: int | None = None,
    show_progress: bool = True,
) -> InputVolume:
    """Write ``input_url`` (one channel and timepoint of it) to ``output``, an OME-Zarr 0.5 image, band by band."""
    volume = open_input(input_url, channel=channel, timepoint=timepoint)
    if output.exists():
        raise InputError(f"{output} exists: rechunk writes a new store")
    planes, height, width = volume.shape_zyx
    _, chunk_rows, _ = volume.chunks_zyx
    band = chunk_rows * math.ceil(RECHUNK_EDGE / chunk_rows)  # whole input chunks, whole output chunks
    group = zarr.open_group(str(output), mode="w", zarr_format=3)
    shape = tuple(int(n) for n in volume.array.shape)
    chunks = (RECHUNK_EDGE, RECHUNK_EDGE) if volume.ref.axes == "yx" else (1, RECHUNK_EDGE, RECHUNK_EDGE)
    target = group.create_array("s0", shape=shape, chunks=chunks, dtype=volume.dtype, fill_value=0)
    group.attrs["ome"] = _multiscales(volume)
    bands = math.ceil(height / band)
    with stage_progress("rechunk", planes * bands, enabled=show_progress, unit="bands") as advance:
        for plane in range(planes):
            for start in range(0, height, band):
                stop = min(height, start + band)
                rows = volume.read_window(range(plane, plane + 1), (start, stop), (0, width))
                index: tuple[Any, ...] = (
                    (slice(start, stop),) if volume.ref.axes == "yx" else (plane, slice(start, stop))
                )
                target[index] = rows[0] if volume.ref.axes == "yx" else rows
                advance((stop - start) * width)
    log.info("rechunked %s (%s) -> %s, chunks %s", input_url, volume.description, output, chunks)
    return open_input(str(output))


def _multiscales(volume: InputVolume) -> dict[str, Any]:
    axes = list(volume.ref.axes)
    sizes = volume.pixel_sizes
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": Path(volume.ref.url).name,
                "axes": [
                    {
                        "name": name,
                        "type": "space",
                        **({"unit": sizes[name].unit} if name in sizes and sizes[name].unit else {}),
                    }
                    for name in axes
                ],
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [
                            {
                                "type": "scale",
                                "scale": [sizes[name].value if name in sizes else 1.0 for name in axes],
                            }
                        ],
                    }
                ],
            }
        ],
    }


def ratio_text(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"
