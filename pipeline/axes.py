"""Which volume of a many-axis input is segmented: one timepoint, one channel.

Acquisitions come with up to five axes (t, c, z, y, x in OME-NGFF order; a
TIFF series in any order). A run segments one YX or ZYX volume: every other
axis is held at a chosen index (``--channel``, ``--timepoint``, or 0 where
the axis has one entry), and reads go through :class:`VolumeArray`, which
puts those indices in, so nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import InputError

SELECTABLE = {"t": "timepoint", "c": "channel"}
SPATIAL = ("yx", "zyx")


@dataclass(frozen=True, slots=True)
class VolumeArray:
    """The spatial axes of ``source`` (a Zarr array) at fixed indices of its other axes."""

    source: Any
    fixed: tuple[tuple[int, int], ...] = ()  # (axis position in source, index on it)

    @property
    def _free(self) -> list[int]:
        held = {position for position, _ in self.fixed}
        return [axis for axis in range(len(self.source.shape)) if axis not in held]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(self.source.shape[axis]) for axis in self._free)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(int(self.source.chunks[axis]) for axis in self._free)

    @property
    def ndim(self) -> int:
        return len(self._free)

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.source.dtype)
        return dtype

    def __getitem__(self, index: Any) -> npt.NDArray[Any]:
        parts = list(index) if isinstance(index, tuple) else [index]
        if parts == [Ellipsis]:
            parts = []
        held = dict(self.fixed)
        free = iter(parts)
        full = tuple(
            held[axis] if axis in held else next(free, slice(None)) for axis in range(len(self.source.shape))
        )
        return np.asarray(self.source[full])


@dataclass(frozen=True, slots=True)
class Selection:
    spatial: str  # "yx" or "zyx"
    fixed: tuple[tuple[int, int], ...]
    chosen: dict[str, int] = field(default_factory=dict)  # e.g. {"t": 0, "c": 1}: the input's other axes


def select_volume(
    url: str, axes: str, shape: tuple[int, ...], *, channel: int | None = None, timepoint: int | None = None
) -> Selection:
    """The YX / ZYX volume of an input with ``axes`` (lower-case letters, e.g. "tczyx").

    InputError names the input, lists its axes with their sizes, and says
    which flag picks the missing index.
    """
    listed = f"axes {axes.upper()} ({', '.join(f'{a.upper()}={n}' for a, n in zip(axes, shape))})"
    spatial = "".join(a for a in axes if a in "zyx")
    others = [a for a in axes if a not in "zyx"]
    if spatial not in SPATIAL or len(set(axes)) != len(axes) or any(a not in SELECTABLE for a in others):
        raise InputError(
            f"{url}: {listed}; a run needs Y and X, optionally Z, and at most one T and one C axis besides"
        )
    wanted = {"c": channel, "t": timepoint}
    for letter, value in wanted.items():
        if value is not None and letter not in axes and value != 0:
            raise InputError(
                f"{url}: --{SELECTABLE[letter]} {value} given, but the input has no such axis ({listed})"
            )
    fixed: list[tuple[int, int]] = []
    chosen: dict[str, int] = {}
    for position, (letter, size) in enumerate(zip(axes, shape)):
        if letter not in SELECTABLE:
            continue
        name, value = SELECTABLE[letter], wanted[letter]
        if value is None and size > 1:
            later = " (every timepoint into one TZYX output is not built yet)" if letter == "t" else ""
            raise InputError(
                f"{url}: {listed}: {size} {name}s; choose one with --{name} 0..{size - 1}{later}"
            )
        index = value or 0
        if index >= size:
            raise InputError(f"{url}: --{name} {index} is out of range: {listed}")
        fixed.append((position, index))
        chosen[letter] = index
    return Selection(spatial, tuple(fixed), chosen)
