"""Larger tiles (e.g. 1084 -> 900) against the paper's 572 -> 388: agreement and CPU speed.

    python benchmarks/tile_agreement.py --tile 900 --edge 1800

A different tile is a different tiling, so not bitwise equal; this measures how
far apart they are with the shipped demo model on a synthetic nuclei plane:
largest probability difference, fraction of foreground voxels equal, and
instance F1 of the two label images against the truth.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import scipy.ndimage

from pipeline.checkpoint import load_checkpoint
from pipeline.demo import DEMO_MODEL
from pipeline.metrics import score_volume
from pipeline.normalization import Normalization
from pipeline.predict import predict_plane
from pipeline.synthetic import write_synthetic_acquisition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=900)
    parser.add_argument("--edge", type=int, default=1800)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        image, truth = write_synthetic_acquisition(
            f"{folder}/plane.ome.zarr", (args.edge, args.edge), (512, 512), seed=2027
        )
    plane = Normalization("percentile", 1.0, 99.8).statistics(image.ravel()).apply(image.astype(np.float32))
    model = load_checkpoint(DEMO_MODEL).model
    report: dict[str, object] = {"edge": args.edge}
    results = {}
    for tile in (388, args.tile):
        started = time.perf_counter()
        results[tile] = predict_plane(model, plane, tile=tile, batch_size=1)[1]
        report[f"tile {tile} seconds"] = round(time.perf_counter() - started, 2)
        labels, _ = scipy.ndimage.label(results[tile] >= 0.5)
        report[f"tile {tile} instance F1"] = round(score_volume(labels[None], truth[None])["instance_f1"], 4)
    paper, large = results[388], results[args.tile]
    report["max |dp|"] = float(np.abs(paper - large).max())
    report["foreground voxels equal"] = float(np.mean((paper >= 0.5) == (large >= 0.5)))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
