"""The label merge where uint32 might not hold every object: streamed, or merged again past the limit.

Over 8.6 G voxels (half the voxels could be separate objects) uint32 might
not hold a volume's labels. A run streams the merge in uint32 anyway and,
should the count pass ``labels.uint32_max_objects``, merges again at once
as uint64 (`pipeline/run_labels.py`). A lowered limit puts this small
volume in that place: the limit one above the count streams (as a large
volume with an ordinary count does), one below passes it at the last slab.
The default limit is the reference. Reports per run the time after the
last predicted block, the wall, how the labels were merged and the relabel
jobs done. From the repository root:

    .venv/bin/python benchmarks/label_dtype_limit.py --shape 24x1164x1164 --repeats 3

Writes the figures as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from pipeline.bench import cluster_overrides, save_widened_demo_model, write_bench_volume
from pipeline.cluster import open_client
from pipeline.config import load_config
from pipeline.plan import SegmentRequest
from pipeline.run import segment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="24x1164x1164", help="ZYX of the volume")
    parser.add_argument("--base-channels", type=int, default=16, help="the demo model widened to this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    with tempfile.TemporaryDirectory(prefix="label-dtype-limit-") as folder:
        root = Path(folder)
        source = f"{root}/in.zarr"
        write_bench_volume(source, (shape[0], shape[1], shape[2]))
        checkpoint = root / "model.safetensors"
        save_widened_demo_model(checkpoint, args.base_channels)
        overrides = {
            **cluster_overrides(workers=2, tasks_per_worker=2),
            "profile.dtype": "bfloat16",
            "profile.channels_last": True,
            "profile.batch_size": 1,
        }
        config = load_config(overrides=overrides)
        results: dict[str, Any] = {"shape": list(shape), "runs": []}
        with open_client(config.cluster, device="cpu") as client:

            def run(name: str, limit: int | None) -> dict[str, Any]:
                extra = {} if limit is None else {"labels.uint32_max_objects": limit}
                request = SegmentRequest(
                    source,
                    str(root / f"{name}-{len(results['runs'])}.ome.zarr"),
                    checkpoint,
                    load_config(overrides={**overrides, **extra}),
                    show_progress=False,
                )
                summary = _summary(name, segment(request, client))
                results["runs"].append(summary)
                print(json.dumps(summary), flush=True)
                return summary

            count = run("warm-up, default limit", None)["objects"]  # untimed: the workers load the model
            results["objects"] = count
            for _ in range(args.repeats):
                run("default limit", None)
                run("limit one above the count", count + 1)
                run("limit one below the count", count - 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _summary(name: str, record: dict[str, Any]) -> dict[str, Any]:
    predict, labels = record["stages"]["predict"], record["labels"]
    passed = labels.get("uint32_limit_passed")
    abandoned = passed["abandoned_stages"].get("relabel", {}) if passed else {}
    return {
        "run": name,
        "objects": labels["objects"],
        "dtype": labels["dtype"],
        "merged": labels["merged"],
        "limit_passed_at_slab": passed["slab"] if passed else None,
        "wall_seconds": record["wall_seconds"],
        "after_last_block_seconds": round(
            record["wall_seconds"] - predict["started_after_seconds"] - predict["wall_seconds"], 3
        ),
        "relabel_started_after_seconds": record["stages"]["relabel"]["started_after_seconds"],
        "relabel_jobs": record["stages"]["relabel"]["computed"],
        "relabel_jobs_dropped": abandoned.get("computed", 0),
        "merge_seconds": labels["merge_seconds"],
    }


if __name__ == "__main__":
    main()
