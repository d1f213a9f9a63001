"""Synthetic microscopy: bright cells on a dim, noisy background.

Deterministic for a seed. Used by tests, benchmarks, the demo and training
data generation, so nothing ever needs to be downloaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from scipy import ndimage


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
        _draw_ellipsoid(volume, label, (cz, cy, cx), (rz, ry, rx))
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


def nuclei_labels(
    shape: tuple[int, ...], *, seed: int, density: float = 0.04, radius: float = 10.0
) -> npt.NDArray[np.uint32]:
    """Instance labels of nuclei: ellipsoids of varying size, some touching, numbered 1..N.

    Where two nuclei touch, the pixels on their shared border are background:
    the paper's annotations leave that line, and its weighted loss teaches
    the network to predict it, so connected components keep them apart.
    """
    rng = np.random.default_rng(seed)
    volume = np.zeros((1, *shape) if len(shape) == 2 else shape, dtype=np.uint32)
    depth, height, width = volume.shape
    count = max(1, int(density * height * width / 100))
    centres: list[tuple[float, float, float]] = []
    for _ in range(count * 4):  # tries: a crowded field ends with fewer nuclei
        if len(centres) == count:
            break
        parent = int(rng.integers(len(centres))) if centres and rng.random() < 0.3 else None
        if parent is not None:  # a neighbour pressed against an existing nucleus, in its layer
            pz, py, px = centres[parent]
            angle = rng.uniform(0, 2 * np.pi)
            step = radius * rng.uniform(1.4, 1.9)
            candidate = (pz + rng.normal(0, 0.5), py + step * np.sin(angle), px + step * np.cos(angle))
        else:
            candidate = (rng.uniform(0, depth), rng.uniform(0, height), rng.uniform(0, width))
        if _stacks_on_others(candidate, centres, parent, 2.0 * radius):
            continue
        centres.append(candidate)
    for label, (cz, cy, cx) in enumerate(centres, start=1):
        ry, rx = rng.uniform(0.7, 1.3, size=2) * radius
        rz = max(1.0, rng.uniform(0.5, 1.5) * radius / 4)
        _draw_ellipsoid(volume, label, (cz, cy, cx), (rz, ry, rx))
    border = np.zeros(volume.shape, dtype=bool)
    for axis in (0, 1, 2):  # a background line (or plane) between touching nuclei
        a = np.swapaxes(volume, 0, axis)
        b = np.swapaxes(border, 0, axis)
        touching = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        b[1:] |= touching
    volume[border] = 0
    relabelled = _consecutive(volume)  # the image is drawn from these: the gaps are visible
    return relabelled[0] if len(shape) == 2 else relabelled


def _draw_ellipsoid(
    volume: npt.NDArray[Any],
    label: int,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> None:
    """Fill the ellipsoid's free voxels (still 0) of a ZYX ``volume`` with ``label``; earlier ones keep theirs."""
    (cz, cy, cx), (rz, ry, rx) = centre, radii
    depth, height, width = volume.shape
    z0, z1 = int(max(0, cz - rz)), int(min(depth, cz + rz + 1))
    y0, y1 = int(max(0, cy - ry)), int(min(height, cy + ry + 1))
    x0, x1 = int(max(0, cx - rx)), int(min(width, cx + rx + 1))
    if z0 >= z1 or y0 >= y1 or x0 >= x1:
        return
    z, y, x = np.ogrid[z0:z1, y0:y1, x0:x1]
    inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    region = volume[z0:z1, y0:y1, x0:x1]
    region[inside & (region == 0)] = label


def _stacks_on_others(
    candidate: tuple[float, float, float],
    centres: list[tuple[float, float, float]],
    parent: int | None,
    spacing: float,
) -> bool:
    """Whether ``candidate`` comes closer than ``spacing`` in y, x to a nucleus other than ``parent``.

    Nuclei above one another would touch through a z gap of one plane that a
    2D network cannot see through the z blur: the sample is a layer of
    nuclei that touch side by side (a cultured monolayer, a thin section).
    """
    if not centres:
        return False
    yx = np.asarray(centres)[:, 1:]
    near = np.hypot(yx[:, 0] - candidate[1], yx[:, 1] - candidate[2]) < spacing
    if parent is not None:
        near[parent] = False
    return bool(near.any())


def _consecutive(labels: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Labels renumbered 1..N in raster order of first voxel (planes of a 3D nucleus stay one)."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = ids[ids > 0][np.argsort(first[ids > 0])]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lookup[order] = np.arange(1, len(order) + 1, dtype=np.uint32)
    result: npt.NDArray[np.uint32] = lookup[labels]
    return result


def fluorescence_image(labels: npt.NDArray[np.uint32], *, seed: int) -> npt.NDArray[np.uint16]:
    """A uint16 widefield-like image of ``labels``: per-nucleus brightness, PSF blur,
    uneven illumination, background, Poisson shot noise and Gaussian read noise."""
    rng = np.random.default_rng(seed + 7919)
    volume = labels[np.newaxis] if labels.ndim == 2 else labels
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, size=int(volume.max()))])
    signal = brightness[volume] * (1.0 + 0.15 * rng.standard_normal(volume.shape))  # texture
    signal = ndimage.gaussian_filter(signal, sigma=(0.7, 1.3, 1.3))  # PSF
    _, height, width = volume.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    tilt = rng.uniform(-0.25, 0.25, size=2)
    illumination = 1.0 + tilt[0] * yy + tilt[1] * xx - 0.2 * (yy**2 + xx**2)
    photons = (signal * 900.0 + 120.0) * illumination  # expected photons per pixel
    counts = rng.poisson(np.clip(photons, 0, None)) + rng.normal(
        100.0, 6.0, size=volume.shape
    )  # offset + read noise
    image: npt.NDArray[np.uint16] = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    return image[0] if labels.ndim == 2 else image


def write_synthetic_acquisition(
    url: str, shape: tuple[int, ...], chunks: tuple[int, ...], *, seed: int, pixel_size: float | None = None
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint32]]:
    """An OME-Zarr 0.5 image of nuclei with its exact instance labels under ``labels/truth``.

    ``pixel_size``: um per pixel in Y and X (Z: 4x that), written with units; None: unit-less scale 1.
    """
    labels = nuclei_labels(shape, seed=seed)
    image = fluorescence_image(labels, seed=seed)
    names = "zyx" if len(shape) == 3 else "yx"
    unit = {} if pixel_size is None else {"unit": "micrometer"}
    axes: list[Any] = [{"name": name, "type": "space", **unit} for name in names]
    sizes = [1.0] * len(shape) if pixel_size is None else [pixel_size * (4 if n == "z" else 1) for n in names]
    scale: list[Any] = [{"type": "scale", "scale": sizes}]
    root = zarr.open_group(url, mode="w", zarr_format=3)
    root.create_array("s0", shape=shape, chunks=chunks, dtype="uint16")[...] = image
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {"name": "nuclei", "axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": scale}]}
        ],
    }
    group = root.require_group("labels")
    group.attrs["ome"] = {"version": "0.5", "labels": ["truth"]}
    truth = group.require_group("truth")
    truth.create_array("s0", shape=shape, chunks=chunks, dtype="uint32")[...] = labels
    truth.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {"name": "truth", "axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": scale}]}
        ],
        "image-label": {"version": "0.5", "source": {"image": "../../"}},
    }
    return image, labels
