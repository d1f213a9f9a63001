"""How fast one core of this host does the pipeline's host work: compare machines before comparing runs.

    python benchmarks/host_calibration.py [--json host.json]

One thread, fixed synthetic data (a 1552 x 1552 plane: one block's plane in
the paper tiling), median of 7 repeats, milliseconds: uint16 -> float32
normalisation, Zstd level 3 encode and decode of a uint32 label plane,
connected components of a speckled mask, a 2x2 mean of a uint8 plane.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import Zstd
from scipy import ndimage

EDGE = 1552


def median_ms(work: Callable[[], object], repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e3, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, (EDGE, EDGE), dtype=np.uint16)
    mask = ndimage.uniform_filter(rng.random((EDGE, EDGE), dtype=np.float32), 5) > 0.55
    labels = ndimage.label(mask)[0].astype(np.uint32)
    encoded = Zstd(3).encode(labels)
    probability = rng.integers(0, 256, (EDGE, EDGE), dtype=np.uint8)
    report: dict[str, Any] = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ms": {
            "normalise uint16 -> float32": median_ms(lambda: (raw.astype(np.float32) - 100.0) * 0.01),
            "zstd3 encode uint32 labels": median_ms(lambda: Zstd(3).encode(labels)),
            "zstd3 decode uint32 labels": median_ms(lambda: Zstd(3).decode(encoded)),
            "connected components (scipy)": median_ms(lambda: ndimage.label(mask)),
            "2x2 mean uint8": median_ms(
                lambda: probability.reshape(EDGE // 2, 2, EDGE // 2, 2).mean(axis=(1, 3), dtype=np.float32)
            ),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
