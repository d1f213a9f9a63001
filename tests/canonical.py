"""The canonical overlap-tile definition (DESIGN.md), written as plainly as possible.

Every exactness test compares against this: pad the whole plane with numpy
"reflect", run the network on each tile's window alone, place, crop.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

from pipeline.model import UNet


def canonical_prediction(
    model: UNet, plane: npt.NDArray[np.float32], tile: int = 388
) -> npt.NDArray[np.float32]:
    """``plane``: (H, W), or (C, H, W) for a model of C input channels."""
    h = model.geometry.halo
    channels = plane[np.newaxis] if plane.ndim == 2 else plane
    height, width = channels.shape[1:]
    rows, cols = math.ceil(height / tile), math.ceil(width / tile)
    padded = np.pad(
        channels.astype(np.float32),
        ((0, 0), (h, h + rows * tile - height), (h, h + cols * tile - width)),
        mode="reflect",
    )
    out = np.zeros((model.config.n_classes, rows * tile, cols * tile), np.float32)
    with torch.inference_mode():
        for i in range(rows):
            for j in range(cols):
                window = padded[:, i * tile : i * tile + tile + 2 * h, j * tile : j * tile + tile + 2 * h]
                logits = model(torch.from_numpy(np.ascontiguousarray(window))[None])
                out[:, i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] = torch.softmax(logits, 1)[
                    0
                ].numpy()
    return out[:, :height, :width]
