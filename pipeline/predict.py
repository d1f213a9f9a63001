"""Batched overlap-tile inference on one device.

``predict_plane`` is the canonical definition (DESIGN.md) made fast: pad the
plane with numpy "reflect", cut the global tile grid into windows, run them
through the network in fixed-size batches, stitch, crop. Every window is the
same array the canonical loop would feed the network alone. Batches are cut
from the windows of one output shard at a time (raster order, the last batch
zero-padded), so a window's batch mates and position follow from the global
tiling: whatever the blocks, a window meets the same batch. On CPU a window's
result does not depend on its batch at all (tested); on a GPU in bf16 or fp16
it does (measured), which this grouping makes harmless.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipeline.batcher import DeviceBatcher, Pending
from pipeline.geometry import TileGrid
from pipeline.model import UNet

PAPER_TILE = 388  # output tile edge of the paper (572 -> 388)
SHARD_TILES = 4  # output shard edge in tiles, as the run's default tiling
GROUPS_AHEAD = 2  # shards of windows a task queues beyond the one it waits for
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}") from None


def prepare_model(
    model: UNet,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    channels_last: bool = False,
) -> UNet:
    """Put ``model`` in eval mode on ``device`` in ``dtype`` (in place; a no-op when already there)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, dtype=resolve_dtype(dtype))
    model.to(memory_format=memory_format)  # type: ignore[call-overload]  # accepted at run time, missing from the stubs
    return model.eval()


def predict_windows(
    model: UNet,
    windows: npt.NDArray[Any],
    *,
    batch_size: int = 8,
    channels_last: bool = False,
) -> npt.NDArray[np.float32]:
    """Softmax probabilities for a stack of input windows.

    ``windows`` is (N, C, S, S) with S a valid input size; the result is
    (N, n_classes, S - 2*halo, S - 2*halo) float32. The network runs in
    batches of exactly ``batch_size`` windows (zero-filled at the end) on
    the model's device and in its dtype.
    """
    with DeviceBatcher(model, batch_size=batch_size, channels_last=channels_last) as batcher:
        return batcher.predict(windows)


def shard_tiles_order(rows: int, cols: int, shard: int) -> list[list[tuple[int, int]]]:
    """The tiles (i, j) of a rows x cols grid, one list per shard of ``shard`` x ``shard`` tiles.

    Shards in raster order, tiles in raster order within each; shards at the
    grid's far edges hold fewer tiles.
    """
    return [
        [(i, j) for i in range(top, min(top + shard, rows)) for j in range(left, min(left + shard, cols))]
        for top in range(0, rows, shard)
        for left in range(0, cols, shard)
    ]


def predict_padded(
    batcher: DeviceBatcher, padded: npt.NDArray[Any], tile: int, *, shard_tiles: int = SHARD_TILES
) -> npt.NDArray[np.float32]:
    """Predict every tile of a stack of mirror-padded planes of whole tiles.

    ``padded`` is (P, C, rows*t + 2h, cols*t + 2h) with its first tile on a
    shard corner of the global grid (blocks are whole shards); returns (P, k,
    rows*t, cols*t) for the batcher's k classes, tile (i, j) of plane p at
    ``[p, :, i*t:(i+1)*t, j*t:(j+1)*t]``. Each shard's windows go to the
    batcher as one group, so a window's batch and its place in it follow from
    the global tiling alone. A few groups are queued ahead while earlier ones
    compute: memory stays at a few shards of windows plus the output.
    """
    model = batcher.model
    halo = model.geometry.halo
    if padded.ndim != 4:
        raise ValueError(f"padded input must be (P, C, H, W), got shape {padded.shape}")
    rows, cols = ((n - 2 * halo) // tile for n in padded.shape[2:])
    if rows < 1 or cols < 1 or padded.shape[2:] != (rows * tile + 2 * halo, cols * tile + 2 * halo):
        raise ValueError(
            f"padded input of shape {padded.shape} is not a whole number of {tile}-pixel tiles "
            f"plus a {halo}-pixel halo on each side"
        )
    size = tile + 2 * halo
    values = np.asarray(padded, dtype=np.float32)
    classes = len(range(model.config.n_classes)[batcher.classes])
    out = np.empty((padded.shape[0], classes, rows * tile, cols * tile), np.float32)
    queued: deque[tuple[int, list[tuple[int, int]], Pending]] = deque()

    def place_oldest() -> None:
        plane, tiles, pending = queued.popleft()
        for (i, j), probability in zip(tiles, pending.result(), strict=True):
            out[plane, :, i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] = probability

    for plane in range(values.shape[0]):
        for tiles in shard_tiles_order(rows, cols, shard_tiles):
            origins = [(i * tile, j * tile) for i, j in tiles]
            queued.append((plane, tiles, batcher.submit_cut(values[plane], origins, size)))
            if len(queued) > GROUPS_AHEAD:
                place_oldest()
    while queued:
        place_oldest()
    return out


def predict_plane(
    model: UNet,
    plane: npt.NDArray[Any],
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tile: int = PAPER_TILE,
    channels_last: bool = False,
    shard_tiles: int = SHARD_TILES,
) -> npt.NDArray[np.float32]:
    """Softmax probabilities (n_classes, H, W) of one plane, by the canonical tiling.

    Parameters
    ----------
    model
        The U-Net; moved to ``device`` / cast to ``dtype`` in place when given.
    plane
        (H, W) for a one-channel model, or (C, H, W); any size >= 1 x 1.
        Values are used as they are: normalise before calling.
    batch_size
        Windows per forward pass. On CPU the output does not depend on it;
        on a GPU in bf16 / fp16 it does, with the shard grouping.
    shard_tiles
        The output shard edge in tiles: a batch holds windows of one shard.
    tile
        Output tile edge; ``tile + 2*halo`` must be a valid input size.

    Examples
    --------
    >>> model = UNet(base_channels=4)
    >>> predict_plane(model, np.zeros((100, 700), np.float32)).shape
    (2, 100, 700)
    """
    prepare_model(model, device=device, dtype=dtype, channels_last=channels_last)
    model.geometry.input_size(tile)  # raises if the tile cannot be produced
    channels = np.asarray(plane)[np.newaxis] if np.ndim(plane) == 2 else np.asarray(plane)
    if channels.ndim != 3 or channels.shape[0] != model.config.in_channels or min(channels.shape) < 1:
        raise ValueError(
            f"plane must be (H, W) or ({model.config.in_channels}, H, W) with H, W >= 1, "
            f"got shape {np.shape(plane)}"
        )
    height, width = channels.shape[1:]
    grid = TileGrid((height, width), tile, model.geometry.halo)
    padded = np.pad(channels.astype(np.float32, copy=False), ((0, 0), *grid.pad_widths), mode="reflect")
    with DeviceBatcher(model, batch_size=batch_size, channels_last=channels_last) as batcher:
        out = predict_padded(batcher, padded[np.newaxis], tile, shard_tiles=shard_tiles)
    return out[0, :, :height, :width]
