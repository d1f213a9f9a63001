"""The 2x2 mean of the probability pyramid: numpy's rounding, whatever the dtype's path."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.omezarr import downsample_mean


def reference_mean(values: np.ndarray) -> np.ndarray:
    """The definition: edges padded with their last row / column, the float64 mean, np.rint."""
    height, width = values.shape[-2:]
    padded = np.pad(values.astype(np.float64), [(0, 0), (0, height % 2), (0, width % 2)], mode="edge")
    blocks = padded.reshape(padded.shape[0], padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    return np.rint(blocks.mean(axis=(2, 4))).astype(values.dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("shape", [(2, 64, 96), (1, 33, 7), (3, 1, 1)])
def test_integer_means_round_half_to_even(dtype: type, shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(5).integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    assert np.array_equal(downsample_mean(values), reference_mean(values))


def test_halves_go_to_the_even_neighbour() -> None:
    values = np.array([[[0, 1, 1, 2, 2, 3, 254, 255]] * 2], np.uint8)  # sums 2, 6, 10, 1018 over 4
    assert downsample_mean(values).tolist() == [[[0, 2, 2, 254]]]


def test_float_means_are_not_rounded() -> None:
    values = np.array([[[0.0, 1.0], [0.0, 0.0]]], np.float32)
    assert downsample_mean(values).tolist() == [[[0.25]]]
