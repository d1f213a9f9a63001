"""The label merge slab by slab when structures run through every slab and hold every ID back.

Two objects (label 1 and 2 of every slab's one block) run from the first slab to the last; every
other object closes in its own slab but must wait for its ID until they close, at the end. The
driver's time per slab should stay flat as the waiting objects pile up, the last slab paying for
them all:

    .venv/bin/python benchmarks/label_merge_hold_back.py --slabs 400,800 --labels 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.label_stream import StreamingMerge
from pipeline.labels import BlockLabels


def held_back_merge(slabs: int, labels: int) -> dict[str, float]:
    span = 10**9  # voxels a slab: its first voxels after every earlier slab's
    merge = StreamingMerge(slabs, 1, lambda slab: True)
    seconds = []
    for slab in range(slabs):
        first = slab * span + np.arange(labels, dtype=np.int64) * 10
        summary = BlockLabels(labels, first, np.full(labels, 5, np.int64))
        contacts = np.array([[slab, 1, slab - 1, 1], [slab, 2, slab - 1, 2]], np.int64)
        started = time.perf_counter()
        ready = merge.add_slab([summary], [contacts if slab else np.empty((0, 4), np.int64)])
        seconds.append(time.perf_counter() - started)
        for block in ready:
            merge.forget(block)
    assert merge.finished and merge.objects == slabs * (labels - 2) + 2
    return {
        "slabs": slabs,
        "labels_per_slab": labels,
        "seconds": round(sum(seconds), 3),
        "first_tenth_ms_per_slab": round(1e3 * np.mean(seconds[: slabs // 10]), 3),
        "last_tenth_but_one_ms_per_slab": round(1e3 * np.mean(seconds[-(slabs // 10) : -1]), 3),
        "last_slab_seconds": round(seconds[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slabs", default="200,400,800", help="comma separated")
    parser.add_argument("--labels", type=int, default=20000, help="local labels a slab")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for slabs in (int(n) for n in args.slabs.split(",")):
        rows.append(held_back_merge(slabs, args.labels))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
