"""Throughput and peak worker memory of `segment` at volume sizes V and 4V.

Memory must not grow with the volume: each worker holds one block at a time
and the driver only small per-block reports. Run from the repository root:

    .venv/bin/python benchmarks/segment_scaling.py --planes 2 --edge 3104 --base-channels 8

Prints a markdown table (paste it into docs/benchmarks.md with the date and
the machine) and writes the raw figures as JSON next to the volumes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.run import SegmentRequest, segment
from pipeline.synthetic import write_synthetic_volume


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--planes", type=int, default=2, help="planes of volume V (4V has 4x as many)")
    parser.add_argument("--edge", type=int, default=3104, help="plane edge in pixels (3104 = 8 tiles)")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-tiles", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/unet-bench"))
    args = parser.parse_args()

    args.scratch.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    checkpoint = args.scratch / f"base{args.base_channels}.safetensors"
    save_checkpoint(checkpoint, UNet(base_channels=args.base_channels), normalization=Normalization())
    config = load_config(
        overrides={
            "cluster.workers": args.workers,
            "tiling.block_tiles": [args.block_tiles, args.block_tiles],
            "profile.batch_size": args.batch_size,
        }
    )
    rows = []
    for label, planes in (("V", args.planes), ("4V", 4 * args.planes)):
        source = str(args.scratch / f"volume-{label}.zarr")
        shape = (planes, args.edge, args.edge)
        write_synthetic_volume(source, shape, (1, 1024, 1024), seed=1)
        started = time.perf_counter()
        record = segment(
            SegmentRequest(
                source, str(args.scratch / f"out-{label}.ome.zarr"), checkpoint, config, overwrite=True
            )
        )
        wall = time.perf_counter() - started
        predict = record["stages"]["predict"]
        rss = record["worker_peak_rss_bytes"]
        rows.append(
            {
                "volume": label,
                "shape": list(shape),
                "input_gb": planes * args.edge * args.edge * 2 / 1e9,
                "blocks": predict["blocks"],
                "predict_mpix_s": predict["mpix_per_second"],
                "end_to_end_mpix_s": round(planes * args.edge * args.edge / 1e6 / wall, 3),
                "peak_worker_rss_mib": round(max(rss.values()) / 2**20, 1),
                "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    (args.scratch / "segment_scaling.json").write_text(json.dumps(rows, indent=2))
    print(
        f"base_channels={args.base_channels} workers={args.workers} block_tiles={args.block_tiles} "
        f"batch={args.batch_size} threads/worker={config.profile.threads}"
    )
    print("| volume | shape | input GB | blocks | predict Mpix/s | end-to-end Mpix/s | peak worker RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['volume']} | {'x'.join(map(str, row['shape']))} | {row['input_gb']:.2f} | {row['blocks']} | "
            f"{row['predict_mpix_s']} | {row['end_to_end_mpix_s']} | {row['peak_worker_rss_mib']} |"
        )
    growth = rows[1]["peak_worker_rss_mib"] / rows[0]["peak_worker_rss_mib"] - 1
    print(f"peak worker RSS 4V vs V: {growth:+.1%} (target: within +10%)")


if __name__ == "__main__":
    main()
