"""The blocks' side of the label merge in one process: what each block of a run reports."""

from __future__ import annotations

import numpy as np

from pipeline.geometry import BlockGrid
from pipeline.labels import BlockLabels, Connectivity, face_slab, label_block, slab_contacts


def block_reports(
    foreground: np.ndarray, grid: BlockGrid, connectivity: Connectivity
) -> tuple[np.ndarray, list[BlockLabels], list[np.ndarray]]:
    """Every block's local labels (in one volume), label summary, and contact pairs across its faces."""
    shape = foreground.shape
    local = np.zeros(shape, np.uint32)
    summaries = []
    rois = [block.write_roi(shape, grid.tile) for block in grid.blocks()]
    for roi in rois:
        local[roi.slices()], summary = label_block(foreground[roi.slices()], roi.start, shape, connectivity)
        summaries.append(summary)
    contacts = []
    for roi in rois:
        pairs = [np.empty((0, 4), np.int64)]
        for axis in range(3):
            for side in (-1, 1):
                box = face_slab(grid, roi.start, roi.stop, axis, side, connectivity)
                if box is not None:
                    slab = local[tuple(slice(a, b) for a, b in zip(*box))]
                    pairs.append(
                        slab_contacts(slab, box[0], roi.start, roi.stop, axis, side, grid, connectivity)
                    )
        contacts.append(np.concatenate(pairs))
    return local, summaries, contacts
