"""An input seen at another pixel size: bilinear resampling in Y and X, read window by window.

Model-grid pixel ``i`` of an axis with factor ``f`` (model pixels per input
pixel) sits at input coordinate ``(i + 0.5) / f - 0.5`` (pixel centres
aligned, clamped at the edges). Every value is computed from its four input
neighbours by the same arithmetic whatever window asks for it, so a block's
window equals the same window cut from the whole resampled volume, bit for
bit: the exactness invariant holds in the model's grid. Linear
interpolation does not low-pass: shrinking by more than 2x aliases fine
texture (nuclei-sized objects are unaffected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class SpatialArray(Protocol):
    """What a run reads an input through: a YX or ZYX array, indexed with slices and ints."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def chunks(self) -> tuple[int, ...]: ...

    @property
    def ndim(self) -> int: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __getitem__(self, index: Any) -> npt.NDArray[Any]: ...


def resampled_length(length: int, factor: float) -> int:
    return max(1, round(length * factor))


def source_coordinates(count: int, length: int, factor: float) -> npt.NDArray[np.float64]:
    """Input coordinates of the first ``count`` model-grid pixel centres, clamped into the axis."""
    centres = (np.arange(count, dtype=np.float64) + 0.5) / factor - 0.5
    clipped: npt.NDArray[np.float64] = np.clip(centres, 0.0, length - 1.0)
    return clipped


@dataclass(frozen=True, slots=True)
class ResampledArray:
    """``source`` (YX or ZYX) resampled in Y and X by ``factors`` (model pixels per input pixel); float32."""

    source: SpatialArray
    factors: tuple[float, float]
    plane_shape: tuple[int, int] | None = (
        None  # (height, width) seen; default: the source's times the factors
    )

    @property
    def shape(self) -> tuple[int, ...]:
        *planes, height, width = self.source.shape
        if self.plane_shape is not None:
            return (*planes, *self.plane_shape)
        return (*planes, resampled_length(height, self.factors[0]), resampled_length(width, self.factors[1]))

    @property
    def chunks(self) -> tuple[int, ...]:
        *planes, rows, cols = self.source.chunks
        return (*planes, resampled_length(rows, self.factors[0]), resampled_length(cols, self.factors[1]))

    @property
    def ndim(self) -> int:
        return self.source.ndim

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32)

    def __getitem__(self, index: Any) -> npt.NDArray[Any]:
        parts = list(index) if isinstance(index, tuple) else [index]
        if parts == [Ellipsis]:
            parts = []
        parts += [slice(None)] * (self.ndim - len(parts))
        *plane_index, row_index, col_index = parts
        rows, row_weights, row_span = self._axis(row_index, -2)
        cols, col_weights, col_span = self._axis(col_index, -1)
        box = self.source[(*plane_index, slice(*row_span), slice(*col_span))].astype(np.float64)
        top, bottom = box[..., rows[0], :], box[..., rows[1], :]
        by_rows = top + row_weights[:, np.newaxis] * (bottom - top)
        left, right = by_rows[..., cols[0]], by_rows[..., cols[1]]
        values = (left + col_weights * (right - left)).astype(np.float32)
        if _is_int(col_index):
            values = values[..., 0]
        if _is_int(row_index):
            values = values[..., 0] if _is_int(col_index) else values[..., 0, :]
        return values

    def _axis(
        self, index: Any, axis: int
    ) -> tuple[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]], npt.NDArray[np.float64], tuple[int, int]]:
        """Neighbour positions (relative to the span read), weights, and the span of input read."""
        length = int(self.source.shape[axis])
        count = self.shape[axis]
        wanted = np.array([index]) if _is_int(index) else np.arange(count)[index]
        coordinates = source_coordinates(count, length, self.factors[axis + 2])[wanted]
        low = np.floor(coordinates).astype(np.intp)
        high = np.minimum(low + 1, length - 1)
        start, stop = (int(low.min()), int(high.max()) + 1) if len(low) else (0, 0)
        return (low - start, high - start), coordinates - low, (start, stop)


def _is_int(index: Any) -> bool:
    return isinstance(index, (int, np.integer))
