"""The nightly flow over synthetic acquisitions: its wall time, and how long each run waited.

Writes N synthetic nuclei acquisitions (with their ready markers), runs
``nightly-segmentation`` over them once under Prefect's test server (a
temporary one on 127.0.0.1) with the shipped demo model and a local
cluster, and prints the flow's wall time and each run's start, end and
predict stage. To compare with another commit, run this file from this
checkout with PYTHONPATH pointing at the other one. From the repository
root:

    .venv/bin/python benchmarks/nightly_wall.py --acquisitions 4 --shape 8x1164x1164
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

from prefect.testing.utilities import prefect_test_harness

from flows.nightly import nightly_segmentation
from pipeline.demo import DEMO_MODEL
from pipeline.outputs import read_output_status
from pipeline.synthetic import write_synthetic_acquisition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acquisitions", type=int, default=4)
    parser.add_argument("--shape", default="8x1164x1164", help="ZYX of each acquisition")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    with tempfile.TemporaryDirectory(prefix="nightly-wall-") as folder:
        root = Path(folder)
        incoming, out = root / "incoming", root / "out"
        incoming.mkdir()
        for k in range(args.acquisitions):
            write_synthetic_acquisition(str(incoming / f"a{k}.zarr"), shape, (1, 512, 512), seed=k)
            (incoming / f"a{k}.zarr" / ".ready").touch()
        with prefect_test_harness():
            started = time.perf_counter()
            nightly_segmentation(input_root=str(incoming), output_root=str(out), model=str(DEMO_MODEL))
            wall = time.perf_counter() - started
        print(f"nightly flow: {wall:.1f} s for {args.acquisitions} acquisitions of {args.shape}")
        spans = []
        for k in range(args.acquisitions):
            record = read_output_status(str(out / f"a{k}.ome.zarr")).last_run
            assert record is not None
            begun = datetime.datetime.fromisoformat(record["ended"]).timestamp() - record["wall_seconds"]
            predict = record["stages"]["predict"]
            first = begun + predict["started_after_seconds"]
            spans.append((begun, first, first + predict["wall_seconds"], begun + record["wall_seconds"]))
            waited = record["setup_seconds"].get("the previous run's blocks", 0.0)
            print(
                f"a{k}: run {record['wall_seconds']:.1f} s, predict {predict['wall_seconds']:.1f} s, waited {waited:.1f} s"
            )
        origin = min(span[0] for span in spans)
        for k, (begun, first, last, ended) in enumerate(spans):
            print(
                f"a{k}: from the first run's start (s, +-1: records keep whole seconds): run "
                f"{begun - origin:.1f}-{ended - origin:.1f}, blocks {first - origin:.1f}-{last - origin:.1f}"
            )
        print(f"first run's start to last run's end: {max(span[3] for span in spans) - origin:.1f} s")


if __name__ == "__main__":
    main()
