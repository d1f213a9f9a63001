"""Contacts of every block read from the blocks' edge lines against whole planes (docs/benchmarks.md).

Writes the local labels of 8 blocks (8 x 3104 x 3104, blocks of 4 x 1552 x 1552, smoothed noise as
the foreground) into a scratch output, then times contact_block over all of them both ways and
checks they find the same pairs. Run: .venv/bin/python benchmarks/contacts_from_edges.py
"""

import os
import shutil
import tempfile
import time

import numpy as np
import scipy.ndimage as ndi

from pipeline.blocks import ContactTask, LabelRule, _label, contact_block
from pipeline.geometry import BlockGrid
from pipeline.labels import Connectivity
from pipeline.omezarr import OutputLayout, create_output


def cpu() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    folder = tempfile.mkdtemp()
    url = f"{folder}/contacts.ome.zarr"
    shape = (8, 3104, 3104)
    grid = BlockGrid(shape, 388, (4, 4), 4)
    layout = OutputLayout(shape, "zyx", tile=388, shard_tiles=4, dtype="uint8", levels=3)
    create_output(url, layout, label_blocks=grid.block_edges)
    rng = np.random.default_rng(0)
    try:
        for neighbours in ("faces", "full"):
            rule = LabelRule(0.5, Connectivity(neighbours), scratch_levels=2, edges=grid.block_edges[1:])
            for block in grid.blocks():
                roi = block.write_roi(shape, 388)
                foreground = ndi.gaussian_filter(rng.random(roi.shape).astype(np.float32), (0, 1.2, 1.2))
                _label(url, rule, foreground, roi, shape, {}, time.perf_counter())
            found = {}
            for edges in (False, True, False, True):
                started, used = time.perf_counter(), cpu()
                tasks = [ContactTask(b, grid, url, Connectivity(neighbours), edges) for b in grid.blocks()]
                pairs = [contact_block(task).payload["pairs"] for task in tasks]
                way = "edge lines" if edges else "whole planes"
                print(
                    f"{neighbours}: {way}: wall {time.perf_counter() - started:.3f} s, CPU {cpu() - used:.3f} s"
                )
                found[edges] = np.concatenate(pairs)
            assert np.array_equal(found[False], found[True])
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
