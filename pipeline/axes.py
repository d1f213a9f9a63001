"""Which part of a many-axis input is segmented: one channel, one timepoint or all of them.

Acquisitions come with up to five axes (t, c, z, y, x in OME-NGFF order; a
TIFF series in any order). The channel axis is held at a chosen index
(``--channel``, or 0 where it has one entry); the time axis too with
``--timepoint``, else every timepoint is kept: the run sees T * Z planes,
timepoint after timepoint, and objects never join across timepoints. Reads
go through :class:`VolumeArray`, which puts the indices in, so nothing is
copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import InputError
from pipeline.zarr_direct import read_region

SELECTABLE = {"t": "timepoint", "c": "channel"}
SPATIAL = ("yx", "zyx")


@dataclass(frozen=True, slots=True)
class VolumeArray:
    """The spatial axes of ``source`` (a Zarr array) at fixed indices of its other axes.

    ``merge_time``: the first free axis is time and the next one Z; they are
    seen as one plane axis of T * Z planes, plane ``p`` at (p // Z, p % Z).
    """

    source: Any
    fixed: tuple[tuple[int, int], ...] = ()  # (axis position in source, index on it)
    merge_time: bool = False

    @property
    def _free(self) -> list[int]:
        held = {position for position, _ in self.fixed}
        return [axis for axis in range(len(self.source.shape)) if axis not in held]

    @property
    def shape(self) -> tuple[int, ...]:
        sizes = [int(self.source.shape[axis]) for axis in self._free]
        return (sizes[0] * sizes[1], *sizes[2:]) if self.merge_time else tuple(sizes)

    @property
    def chunks(self) -> tuple[int, ...]:
        chunks = [int(self.source.chunks[axis]) for axis in self._free]
        return tuple(chunks[1:]) if self.merge_time else tuple(chunks)

    @property
    def ndim(self) -> int:
        return len(self._free) - (1 if self.merge_time else 0)

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.source.dtype)
        return dtype

    def __getitem__(self, index: Any) -> npt.NDArray[Any]:
        parts = list(index) if isinstance(index, tuple) else [index]
        if parts == [Ellipsis]:
            parts = []
        parts += [slice(None)] * (self.ndim - len(parts))
        if not self.merge_time:
            return self._read(parts)
        plane, rest = parts[0], parts[1:]
        depth = int(self.source.shape[self._free[1]])
        wanted = (
            np.array([plane]) if isinstance(plane, (int, np.integer)) else np.arange(self.shape[0])[plane]
        )
        pieces = []
        for timepoint in dict.fromkeys((wanted // depth).tolist()):
            planes = wanted[wanted // depth == timepoint] % depth
            low = int(planes.min())
            box = self._read([int(timepoint), slice(low, int(planes.max()) + 1), *rest])
            pieces.append(box[planes - low])
        values = np.concatenate(pieces) if pieces else self._read([0, slice(0, 0), *rest])
        return values[0] if isinstance(plane, (int, np.integer)) else values

    def _read(self, parts: list[Any]) -> npt.NDArray[Any]:
        held = dict(self.fixed)
        free = iter(parts)
        full = tuple(
            held[axis] if axis in held else next(free, slice(None)) for axis in range(len(self.source.shape))
        )
        return read_region(self.source, full)


@dataclass(frozen=True, slots=True)
class Selection:
    spatial: str  # "yx" or "zyx": the axes a run sees (every timepoint kept: "zyx" of T * Z planes)
    fixed: tuple[tuple[int, int], ...]
    chosen: dict[str, Any] = field(default_factory=dict)  # e.g. {"t": 0, "c": 1}, or {"c": [2, 0]}
    channels: tuple[
        int, ...
    ] = ()  # several channels for a many-channel model: C's position, then the indices
    timepoints: int = 1  # > 1: every timepoint kept, one after the other along the plane axis
    merge_time: bool = False  # T and Z seen as one plane axis (see VolumeArray)

    @property
    def output_axes(self) -> str:
        """The output's axes: the run's, with T in front when timepoints are kept ("tzyx", "tyx")."""
        if self.timepoints == 1:
            return self.spatial
        return "tzyx" if self.merge_time else "tyx"


def select_volume(
    url: str,
    axes: str,
    shape: tuple[int, ...],
    *,
    channel: int | Sequence[int] | None = None,
    timepoint: int | None = None,
    channels: int = 1,
) -> Selection:
    """The YX / ZYX volume of an input with ``axes`` (lower-case letters, e.g. "tczyx").

    ``channels``: how many the model takes; more than one are read side by
    side from the C axis (``channel`` lists them, default all of them when
    the axis has exactly that many). InputError names the input, lists its
    axes with their sizes, and says which flag picks what is missing.
    """
    listed = f"axes {axes.upper()} ({', '.join(f'{a.upper()}={n}' for a, n in zip(axes, shape))})"
    spatial = "".join(a for a in axes if a in "zyx")
    others = [a for a in axes if a not in "zyx"]
    if spatial not in SPATIAL or len(set(axes)) != len(axes) or any(a not in SELECTABLE for a in others):
        raise InputError(
            f"{url}: {listed}; a run needs Y and X, optionally Z, and at most one T and one C axis besides"
        )
    if channels > 1 or not isinstance(channel, int | None):
        return _several_channels(url, axes, shape, listed, channel, timepoint, channels)
    wanted = {"c": channel, "t": timepoint}
    for letter, value in wanted.items():
        if value is not None and letter not in axes and value != 0:
            raise InputError(
                f"{url}: --{SELECTABLE[letter]} {value} given, but the input has no such axis ({listed})"
            )
    fixed: list[tuple[int, int]] = []
    chosen: dict[str, int] = {}
    timepoints = 1
    for position, (letter, size) in enumerate(zip(axes, shape)):
        if letter not in SELECTABLE:
            continue
        name, value = SELECTABLE[letter], wanted[letter]
        if letter == "t" and value is None and size > 1:
            if position > axes.index(spatial[0]):
                raise InputError(
                    f"{url}: {listed}: T must come before the spatial axes to keep every timepoint"
                )
            timepoints = size  # every timepoint, in order
            continue
        if value is None and size > 1:
            raise InputError(f"{url}: {listed}: {size} {name}s; choose one with --{name} 0..{size - 1}")
        index = value or 0
        if index >= size:
            raise InputError(f"{url}: --{name} {index} is out of range: {listed}")
        fixed.append((position, index))
        chosen[letter] = index
    if timepoints == 1:
        return Selection(spatial, tuple(fixed), chosen)
    return Selection("zyx", tuple(fixed), chosen, timepoints=timepoints, merge_time=spatial == "zyx")


def _several_channels(
    url: str,
    axes: str,
    shape: tuple[int, ...],
    listed: str,
    channel: int | Sequence[int] | None,
    timepoint: int | None,
    channels: int,
) -> Selection:
    """C kept for a model of ``channels`` input channels: the listed ones, in that order."""
    wanted = [channel] if isinstance(channel, int) else list(channel) if channel is not None else None
    if "c" not in axes:
        raise InputError(
            f"{url}: the model takes {channels} channels but the input has no channel axis ({listed})"
        )
    size = shape[axes.index("c")]
    if wanted is None:
        if size != channels:
            raise InputError(
                f"{url}: {listed}: the model takes {channels} channels; choose them with "
                f"--channel {','.join(str(i) for i in range(channels))} (any of 0..{size - 1}, in the model's order)"
            )
        wanted = list(range(size))
    if len(wanted) != channels:
        raise InputError(f"{url}: --channel lists {len(wanted)} channels; the model takes {channels}")
    if any(not 0 <= index < size for index in wanted):
        raise InputError(f"{url}: --channel {','.join(map(str, wanted))} is out of range: {listed}")
    single = select_volume(url, axes, shape, channel=wanted[0], timepoint=timepoint)
    position = axes.index("c")
    held = tuple((axis, index) for axis, index in single.fixed if axis != position)
    chosen = {**single.chosen, "c": wanted}
    return Selection(single.spatial, held, chosen, (position, *wanted), single.timepoints, single.merge_time)


def channel_views(
    source: Any, fixed: tuple[tuple[int, int], ...], channels: tuple[int, ...], merge_time: bool
) -> list[VolumeArray]:
    """One view per selected channel (``channels``: C's position, then the indices); one view without."""
    if not channels:
        return [VolumeArray(source, fixed, merge_time)]
    position, *indices = channels
    return [VolumeArray(source, tuple(sorted((*fixed, (position, index)))), merge_time) for index in indices]
