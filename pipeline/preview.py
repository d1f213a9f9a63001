"""A preview of a finished output: the middle plane of the input with label outlines.

Small enough for a report (the longest edge at most ``max_pixels``): read
from the label pyramid level that fits, and the input at the same stride,
so the outlines sit exactly on the objects. Each object gets its own colour.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.omezarr import open_output, read_state
from pipeline.picture import to_uint8
from pipeline.store import open_input


def render_preview(output_url: str, max_pixels: int) -> npt.NDArray[np.uint8]:
    """(H, W, 3) picture of the middle plane: input in grey, each label's outline in its colour."""
    group = open_output(output_url)
    last_run = read_state(group)["runs"][-1]
    selection = last_run["input"].get("selection", {})
    channel = selection.get("c")  # a list for a many-channel model: the first is shown
    volume = open_input(
        last_run["input"]["url"],
        channel=channel[0] if isinstance(channel, list) else channel,
        timepoint=selection.get("t"),
    )
    _, height, width = volume.shape_zyx
    plane = volume.planes_per_timepoint // 2  # of the first timepoint, where there are several
    labels_config = last_run["config"]["labels"]
    label_levels = _levels(group, f"labels/{labels_config['name']}") if labels_config["enabled"] else 0
    level = min(label_levels, max(0, math.ceil(math.log2(max(height, width) / max_pixels))))
    level_edge = math.ceil(max(height, width) / 2**level)
    extra = max(1, math.ceil(level_edge / max_pixels))
    stride = 2**level * extra  # nearest levels keep every 2nd voxel, so level k = s0[::2**k, ::2**k]
    index: tuple[Any, ...] = (plane,) if volume.ref.axes == "zyx" else ()
    grey = to_uint8(np.asarray(volume.array[(*index, slice(None, None, stride), slice(None, None, stride))]))
    picture = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    if labels_config["enabled"]:
        labels = group[f"labels/{labels_config['name']}/s{level}"]
        at = (0, *index) if labels.ndim == 4 else index  # type: ignore[union-attr]
        plane_labels = np.asarray(labels[(*at, slice(None, None, extra), slice(None, None, extra))])  # type: ignore[index]
        edges = outline_mask(plane_labels)
        picture[edges] = label_colours(plane_labels[edges])
    return picture


def outline_mask(labels: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Pixels of an object that touch another label or the background (4-neighbourhood)."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    result: npt.NDArray[np.bool_] = edge & (labels != 0)
    return result


def label_colours(ids: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """A bright colour per label ID (golden-ratio hues), the same in every picture."""
    hue = (ids.astype(np.float64) * 0.618033988749895) % 1.0
    channels = [np.clip(np.abs((hue * 6 + shift) % 6 - 3) - 1, 0, 1) for shift in (0, 4, 2)]
    rgb = np.stack(channels, axis=-1) * 0.75 + 0.25
    return np.asarray(np.rint(rgb * 255), dtype=np.uint8)


def _levels(group: Any, path: str) -> int:
    """Pyramid levels below s0 of a multiscale image in the output."""
    image = group[path]
    attrs = dict(image.attrs)
    datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
    return len(datasets) - 1
