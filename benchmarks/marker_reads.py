"""How long a resumed run reads the markers of the blocks an earlier attempt finished.

A resumed run merges the labels of every finished block from its markers
(its label summary and its contacts) before it sends the next block. This
writes ``--blocks`` blocks' markers with a nuclei block's payload sizes
(1,000 labels, 300 contact pairs) and reads them all back as the label
merge does, cold (the page cache dropped, where this process may) and warm.
From the repository root:

    .venv/bin/python benchmarks/marker_reads.py --blocks 20000

Writes the figures as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import markers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    blocks = list(range(args.blocks))
    results: dict[str, Any] = {"blocks": args.blocks, "labels": args.labels, "pairs": args.pairs}
    with tempfile.TemporaryDirectory(prefix="marker-reads-") as url:
        started = time.perf_counter()
        for block in blocks:
            summary = {
                "count": np.array(args.labels),
                "first_voxel": np.sort(rng.integers(0, 2**40, args.labels)),
                "sizes": rng.integers(1, 5000, args.labels),
            }
            markers.write_marker(url, "predict", block, summary)
            markers.write_marker(url, "contacts", block, {"pairs": rng.integers(0, 1000, (args.pairs, 4))})
        results["write_ms_per_block"] = round((time.perf_counter() - started) / len(blocks) * 1e3, 3)
        results["bytes_per_block"] = sum(
            os.path.getsize(path) for path in Path(url).rglob("*") if path.is_file()
        ) // len(blocks)
        for cache in ("cold", "warm"):
            if cache == "cold":
                subprocess.run(["sync"], check=False)
                results["cache_dropped"] = _drop_page_cache()
            started = time.perf_counter()
            for stage in ("predict", "contacts"):
                _read_all(url, stage, blocks)
            results[f"read_ms_per_block_{cache}"] = round(
                (time.perf_counter() - started) / len(blocks) * 1e3, 3
            )
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _read_all(url: str, stage: str, blocks: list[int]) -> None:
    """As the label merge reads them: together where this version can, else one after another."""
    if hasattr(markers, "read_markers"):
        for start in range(0, len(blocks), 1024):
            markers.read_markers(url, stage, blocks[start : start + 1024])
    else:
        for block in blocks:
            markers.read_marker(url, stage, block)


def _drop_page_cache() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


if __name__ == "__main__":
    main()
