"""Driver memory of the global label merge, per million objects.

The driver holds, per local label, its first voxel and size, and per
contact one pair; never voxels. This measures the peak of `merge_labels`
(tracemalloc sees numpy's allocations) for synthetic block summaries:

    .venv/bin/python benchmarks/labels_merge_memory.py --objects 1000000 --blocks 2000

With ``--slab-blocks N`` it measures the merge slab by slab instead
(`pipeline.label_stream`, slabs of N blocks, each block's table dropped once
it is final, as the run does once its jobs have it), with the summaries
held only until their slab is merged, as the run holds them.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from pipeline.label_stream import StreamingMerge
from pipeline.labels import BlockLabels, merge_labels


def synthetic_summaries(
    objects: int, blocks: int, touching: float, seed: int
) -> tuple[list[BlockLabels], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(objects, np.full(blocks, 1 / blocks))
    summaries, contacts = [], []
    span = 10**12 // blocks  # each block's voxels after the previous block's, as in raster order by slabs
    for block, count in enumerate(counts):
        first = block * span + np.sort(rng.choice(span, size=count, replace=False)).astype(np.int64)
        summaries.append(BlockLabels(int(count), first, rng.integers(1, 500, size=count).astype(np.int64)))
    for block in range(1, blocks):
        pairs = int(touching * min(counts[block], counts[block - 1]))
        if pairs:
            contacts.append(
                np.stack(
                    [
                        np.full(pairs, block),
                        rng.integers(1, counts[block] + 1, size=pairs),
                        np.full(pairs, block - 1),
                        rng.integers(1, counts[block - 1] + 1, size=pairs),
                    ],
                    axis=1,
                ).astype(np.int64)
            )
    return summaries, contacts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=1_000_000, help="local labels over all blocks")
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument(
        "--touching", type=float, default=0.1, help="share of labels touching a neighbour block"
    )
    parser.add_argument("--slab-blocks", type=int, help="merge slab by slab, slabs of this many blocks")
    args = parser.parse_args()
    summaries, contacts = synthetic_summaries(args.objects, args.blocks, args.touching, seed=0)
    if args.slab_blocks:
        stream(summaries, contacts, args.slab_blocks, args.objects)
        return
    held = sum(s.first_voxel.nbytes + s.sizes.nbytes for s in summaries) + sum(c.nbytes for c in contacts)
    tracemalloc.start()
    started = time.perf_counter()
    mapping = merge_labels(summaries, contacts, min_size=0)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    pairs = sum(len(c) for c in contacts)
    per_million = (held + peak) / args.objects * 1e6 / 2**20
    print(
        f"local labels {args.objects:,} in {args.blocks} blocks, {pairs:,} contacts -> {mapping.objects:,} objects"
    )
    print(
        f"summaries + contacts held: {held / 2**20:.1f} MiB; merge peak: {peak / 2**20:.1f} MiB; {seconds:.2f} s"
    )
    print(f"driver memory per million local labels: {per_million:.0f} MiB")


def stream(summaries: list[BlockLabels], contacts: list[np.ndarray], per_slab: int, objects: int) -> None:
    """The merge slab by slab; summaries and contacts are dropped once their slab is merged."""
    blocks = len(summaries)
    slabs = -(-blocks // per_slab)
    summaries += [BlockLabels(0, np.empty(0, np.int64), np.empty(0, np.int64))] * (slabs * per_slab - blocks)
    by_block = [np.empty((0, 4), np.int64) for _ in range(len(summaries))]
    for pairs in contacts:
        by_block[int(pairs[0, 0])] = (
            pairs  # each synthetic contact list is its block's, with the block before
        )
    tracemalloc.start()
    started = time.perf_counter()
    merge = StreamingMerge(slabs, per_slab, lambda slab: True)
    most_open = most_waiting = 0
    for slab in range(slabs):
        part = slice(slab * per_slab, (slab + 1) * per_slab)
        ready = merge.add_slab(summaries[part], by_block[part])
        summaries[part] = [None] * per_slab  # type: ignore[list-item]
        by_block[part] = [None] * per_slab  # type: ignore[list-item]
        for block in ready:
            merge.forget(block)
        most_open = max(most_open, merge._open_first.size)  # the working set, for the report
        most_waiting = max(most_waiting, merge._waiting.objects)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"local labels {objects:,} in {blocks} blocks, slabs of {per_slab} -> {merge.objects:,} objects; "
        f"at most {most_open:,} open and {most_waiting:,} waiting objects"
    )
    print(f"merge peak (the summaries come and go with their slab): {peak / 2**20:.1f} MiB; {seconds:.2f} s")


if __name__ == "__main__":
    main()
