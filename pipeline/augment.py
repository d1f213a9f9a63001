"""Training augmentation: the paper's elastic deformation, flips, rotations, intensity jitter.

Elastic deformation (Ronneberger et al. 2015, sec. 3.1): random
displacements on a coarse 3 x 3 grid, drawn from a Gaussian with a 10 px
standard deviation, interpolated smoothly (bicubic) to a displacement per
pixel. The same field moves the image (linear interpolation), the labels
(nearest: they stay integer) and the weights (linear).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

GRID = 3
SIGMA_PX = 10.0


def elastic_field(
    shape: tuple[int, int], rng: np.random.Generator, grid: int = GRID, sigma: float = SIGMA_PX
) -> npt.NDArray[np.float64]:
    """Sampling coordinates (2, H, W): identity plus a smooth random displacement."""
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    displacement = np.stack([_upsample(coarse[axis], shape) for axis in range(2)])
    identity = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")).astype(
        np.float64
    )
    coordinates: npt.NDArray[np.float64] = identity + displacement
    return coordinates


def _upsample(coarse: npt.NDArray[np.float64], shape: tuple[int, int]) -> npt.NDArray[Any]:
    """Bicubic interpolation of grid values whose corners sit on the image corners."""
    rows = np.linspace(0, coarse.shape[0] - 1, shape[0])
    cols = np.linspace(0, coarse.shape[1] - 1, shape[1])
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    values: npt.NDArray[Any] = ndimage.map_coordinates(
        coarse, [grid_rows, grid_cols], order=3, mode="nearest"
    )
    return values


def deform(values: npt.NDArray[Any], coordinates: npt.NDArray[np.float64], order: int) -> npt.NDArray[Any]:
    """``values`` sampled at ``coordinates`` (mirror outside): order 0 for labels, 1 for the rest."""
    result: npt.NDArray[Any] = ndimage.map_coordinates(values, coordinates, order=order, mode="mirror")
    return result.astype(values.dtype, copy=False)


def flip_rotate(arrays: list[npt.NDArray[Any]], rng: np.random.Generator) -> list[npt.NDArray[Any]]:
    """One of the 8 flips and quarter turns, the same for every array."""
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for array in arrays:
        moved = np.rot90(array, turns)
        out.append(np.ascontiguousarray(moved[:, ::-1] if flip else moved))
    return out


def jitter_intensity(image: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """A random gain (0.8 to 1.2) and offset (+-0.1) on a normalised image."""
    gain = np.float32(rng.uniform(0.8, 1.2))
    offset = np.float32(rng.uniform(-0.1, 0.1))
    result: npt.NDArray[np.float32] = image * gain + offset
    return result
