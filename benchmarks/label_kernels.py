"""CPU time of the per-block label kernels against what they replaced, on one GPU-run block.

    python benchmarks/label_kernels.py [--json out.json]

One 4 x 1552² block (the GPU run's blocks) of nuclei-like foreground (smoothed noise, 30 %
foreground) and of speckle (half the voxels, what an untrained network gives), median of 5 runs,
milliseconds of process CPU time:

- connected components: ``scipy.ndimage.label`` against :func:`pipeline.labels.components` (cc3d);
- relabel, :func:`pipeline.labels.relabel` (``mapping[local]``), for scale;
- 2x2 mean of a uint8 plane: the four strided sums against :func:`pipeline.omezarr.downsample_mean`;
- distinct values: ``np.unique`` (hashing, numpy 2.3+) against :func:`pipeline.labels.distinct` (a sort).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage

from pipeline.labels import Connectivity, components, distinct, relabel
from pipeline.omezarr import downsample_mean

SHAPE = (4, 1552, 1552)


def cpu_ms(work: Callable[[], object], repeats: int = 5) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return round(statistics.median(times) * 1e3, 1)


def strided_mean(values: np.ndarray) -> np.ndarray:
    """The 2x2 mean as it was: four strided quarter-size reads summed (integer, half to even)."""
    total = values[..., 0::2, 0::2].astype(np.uint16)
    total += values[..., 1::2, 0::2]
    total += values[..., 0::2, 1::2]
    total += values[..., 1::2, 1::2]
    up = (total & 3) + ((total >> 2) & 1) > 2
    total >>= 2
    total += up
    return total.astype(values.dtype)


def touching_keys_unsorted(foreground: np.ndarray, faces: Connectivity) -> np.ndarray:
    """The keys :func:`pipeline.labels.touching_keys` sorts, of the first two planes' labels, as it
    makes them (runs of one pair kept once)."""
    local, _ = components(foreground, faces)
    u, w = local[0].ravel(), local[1].ravel()
    starts = (u != 0) & (w != 0)
    starts[1:] &= (u[1:] != u[:-1]) | (w[1:] != w[:-1])
    at = np.flatnonzero(starts)
    return (u.take(at).astype(np.uint64) << np.uint64(32)) | w.take(at).astype(np.uint64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    smooth = scipy.ndimage.gaussian_filter(rng.random(SHAPE, dtype=np.float32), (0, 6, 6))
    foregrounds = {
        "nuclei": smooth > np.quantile(smooth, 0.7),
        "speckle": rng.random(SHAPE, dtype=np.float32) > 0.5,
    }
    faces = Connectivity()
    report: dict[str, Any] = {"block": list(SHAPE), "ms": {}}
    for name, foreground in foregrounds.items():
        local, count = components(foreground, faces)
        expected, _ = scipy.ndimage.label(foreground, structure=faces.structure(), output=np.uint32)
        assert np.array_equal(local, expected)
        mapping = np.zeros(count + 1, np.uint64)
        mapping[1:] = rng.permutation(count) + 1
        report["ms"][name] = {
            "objects": count,
            "components scipy": cpu_ms(
                lambda fg=foreground: scipy.ndimage.label(fg, structure=faces.structure(), output=np.uint32)
            ),
            "components now (cc3d)": cpu_ms(lambda fg=foreground: components(fg, faces)),
            "relabel": cpu_ms(lambda lab=local, m=mapping: relabel(lab, m, "uint32")),
        }
    probability = (smooth * 255).astype(np.uint8)
    assert np.array_equal(strided_mean(probability), downsample_mean(probability))
    report["ms"]["2x2 mean uint8"] = {
        "strided sums": cpu_ms(lambda: strided_mean(probability)),
        "now (rows, then columns)": cpu_ms(lambda: downsample_mean(probability)),
    }
    keys = rng.integers(0, 2**40, 400_000).astype(np.uint64)
    pairs = touching_keys_unsorted(foregrounds["speckle"], faces)
    assert np.array_equal(distinct(keys), np.unique(keys)) and np.array_equal(distinct(pairs), np.unique(pairs))
    report["ms"]["distinct values"] = {
        "400,000 random uint64: np.unique": cpu_ms(lambda: np.unique(keys)),
        "400,000 random uint64: distinct (a sort)": cpu_ms(lambda: distinct(keys)),
        f"{pairs.size:,} touching pairs of speckle planes: np.unique": cpu_ms(lambda: np.unique(pairs)),
        f"{pairs.size:,} touching pairs of speckle planes: distinct": cpu_ms(lambda: distinct(pairs)),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
