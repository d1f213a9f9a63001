"""CPU time of the per-block label kernels against what they replaced, on one GPU-run block.

    python benchmarks/label_kernels.py [--json out.json]

One 4 x 1552² block (the GPU run's blocks) of nuclei-like foreground (smoothed noise, 30 %
foreground) and of speckle (half the voxels, what an untrained network gives), median of 5 runs,
milliseconds of process CPU time:

- connected components: ``scipy.ndimage.label`` against :func:`pipeline.labels.components` (cc3d);
- relabel, :func:`pipeline.labels.relabel` (``mapping[local]``), for scale;
- 2x2 mean of a uint8 plane: the four strided sums against :func:`pipeline.omezarr.downsample_mean`.
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

from pipeline.labels import Connectivity, components, relabel
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
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
