"""Driver memory of the global label merge, per million objects.

The driver holds, per local label, its first voxel and size, and per
contact one pair; never voxels. This measures the peak of `merge_labels`
(tracemalloc sees numpy's allocations) for synthetic block summaries:

    .venv/bin/python benchmarks/labels_merge_memory.py --objects 1000000 --blocks 2000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from pipeline.labels import BlockLabels, merge_labels


def synthetic_summaries(
    objects: int, blocks: int, touching: float, seed: int
) -> tuple[list[BlockLabels], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(objects, np.full(blocks, 1 / blocks))
    summaries, contacts = [], []
    for block, count in enumerate(counts):
        first = np.sort(rng.choice(10**12, size=count, replace=False)).astype(np.int64)
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
    args = parser.parse_args()
    summaries, contacts = synthetic_summaries(args.objects, args.blocks, args.touching, seed=0)
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


if __name__ == "__main__":
    main()
