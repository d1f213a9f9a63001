"""Synthetic microscopy: bright cells on a dim, noisy background.

Deterministic for a seed. Used by tests, benchmarks, the demo and training
data generation, so nothing ever needs to be downloaded.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import zarr


def cell_mask(
    shape: tuple[int, ...], *, seed: int, density: float = 0.03, radius: float = 9.0
) -> npt.NDArray[np.bool_]:
    """Foreground of roughly round cells, kept apart by at least one background pixel.

    ``shape`` is (H, W) or (Z, H, W); cells are ellipsoids whose z extent
    spans a few planes. ``density`` is cell centres per 100 pixels of a plane.
    """
    rng = np.random.default_rng(seed)
    volume = np.zeros((1, *shape) if len(shape) == 2 else shape, dtype=np.int32)
    depth, height, width = volume.shape
    n_cells = max(1, int(density * height * width / 100))
    for label in range(1, n_cells + 1):
        cz = rng.uniform(0, depth)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.6, 1.4, size=2) * radius
        rz = max(1.0, rng.uniform(0.5, 1.5) * radius / 4)
        z0, z1 = int(max(0, cz - rz)), int(min(depth, cz + rz + 1))
        y0, y1 = int(max(0, cy - ry)), int(min(height, cy + ry + 1))
        x0, x1 = int(max(0, cx - rx)), int(min(width, cx + rx + 1))
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        z, y, x = np.ogrid[z0:z1, y0:y1, x0:x1]
        inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        region = volume[z0:z1, y0:y1, x0:x1]
        region[inside & (region == 0)] = label
    foreground = volume > 0
    # erase pixels where two cells touch, as the paper's weighted loss teaches the net to
    touching = np.zeros_like(foreground)
    for axis in range(1, 3):
        a = np.swapaxes(volume, 0, axis)
        t = np.swapaxes(touching, 0, axis)
        border = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        t[1:] |= border
        t[:-1] |= border
    foreground &= ~touching
    return foreground[0] if len(shape) == 2 else foreground


def cell_image(
    shape: tuple[int, ...], *, seed: int, dtype: npt.DTypeLike = np.uint16, density: float = 0.03
) -> npt.NDArray[np.generic]:
    """An image of :func:`cell_mask`: cells ~4x brighter than background, Poisson-like noise."""
    rng = np.random.default_rng(seed + 1)
    mask = cell_mask(shape, seed=seed, density=density)
    full_scale = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    signal = np.where(mask, 0.5, 0.12) * full_scale
    noisy = signal + rng.normal(0.0, 0.04 * full_scale, size=mask.shape)
    return np.clip(noisy, 0, full_scale).astype(dtype)


def write_synthetic_volume(
    url: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    *,
    seed: int = 0,
    dtype: npt.DTypeLike = np.uint16,
    slab_bytes: int = 256 * 2**20,
) -> None:
    """Write a :func:`cell_image` volume of any size to a Zarr v3 array, slab by slab.

    Memory stays near ``slab_bytes`` times the float64 working factor; each
    slab of whole chunk-planes is generated from its own seed (cells do not
    continue across slab faces, which a benchmark does not mind).
    """
    array = zarr.open_array(url, mode="w", shape=shape, chunks=chunks, dtype=dtype, zarr_format=3)
    if len(shape) == 2:
        array[...] = cell_image(shape, seed=seed, dtype=dtype)
        return
    plane_bytes = shape[1] * shape[2] * np.dtype(dtype).itemsize
    slab = max(chunks[0], (slab_bytes // plane_bytes) // chunks[0] * chunks[0])
    for index, start in enumerate(range(0, shape[0], slab)):
        stop = min(start + slab, shape[0])
        array[start:stop] = cell_image(
            (stop - start, shape[1], shape[2]), seed=seed + 1000 * index, dtype=dtype
        )
