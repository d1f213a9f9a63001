"""Small PNG pictures for reports and the demo: no imaging library needed."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


def to_uint8(
    values: npt.NDArray[Any], low: float | None = None, high: float | None = None
) -> npt.NDArray[np.uint8]:
    """Scale to 0..255 between ``low`` and ``high`` (default: the 1st and 99th percentiles)."""
    data = np.asarray(values, dtype=np.float64)
    lo = float(np.percentile(data, 1)) if low is None else low
    hi = float(np.percentile(data, 99)) if high is None else high
    scaled = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
    return np.asarray(np.clip(scaled * 255.0 + 0.5, 0, 255), dtype=np.uint8)


def png_bytes(image: npt.NDArray[np.uint8]) -> bytes:
    """An (H, W) grey or (H, W, 3) RGB uint8 image encoded as PNG."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        colour_type, rows = 0, pixels
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        colour_type, rows = 2, pixels.reshape(pixels.shape[0], -1)
    else:
        raise ValueError(f"PNG needs (H, W) or (H, W, 3) uint8, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | Path, image: npt.NDArray[np.uint8]) -> Path:
    """Write an (H, W) grey or (H, W, 3) RGB uint8 image as PNG."""
    target = Path(path)
    target.write_bytes(png_bytes(image))
    return target


def side_by_side(*panels: npt.NDArray[np.uint8], gap: int = 8) -> npt.NDArray[np.uint8]:
    """Grey panels of equal height joined left to right with a white gap."""
    height = panels[0].shape[0]
    spacer = np.full((height, gap), 255, np.uint8)
    parts: list[npt.NDArray[np.uint8]] = []
    for index, panel in enumerate(panels):
        if index:
            parts.append(spacer)
        parts.append(panel)
    return np.concatenate(parts, axis=1)
