"""The exactness invariant on a GPU: for one execution profile, block size, tasks per worker and
batch mates never change a bit, and the run equals the profile's plane-by-plane tiling.

    python benchmarks/gpu_exactness.py --json exactness.json

Paper-width U-Net (64 base channels, random weights), bf16, channels_last,
deterministic cuDNN, batch 8; a 2 x 1552 x 1940 uint16 volume (ragged: the
last tile column is cut). Runs ``segment`` twice (block 4 x 4 tiles with one
task per worker; block 8 x 8 with four) and compares both with
``predict_plane`` of each normalised plane (the canonical tiling, batched).
Also compares bf16 with fp32 and with the compiled model. Needs CUDA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.model import UNet
from pipeline.normalization import Normalization, NormalizationStats
from pipeline.omezarr import encode_probability
from pipeline.predict import predict_plane
from pipeline.run import SegmentRequest, segment
from pipeline.worker_device import configure_torch

SHAPE = (2, 1552, 1940)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu: a check of this script itself")
    parser.add_argument("--base-channels", type=int, default=64)
    args = parser.parse_args()
    device = args.device
    torch.manual_seed(0)
    model = UNet(1, 2, args.base_channels, 5).eval()
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    report: dict[str, Any] = {"shape": list(SHAPE), "device": device, "gpu": gpu}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rng = np.random.default_rng(5)
        volume = (rng.gamma(2.0, 300.0, size=SHAPE)).astype(np.uint16)
        source = str(root / "input.zarr")
        zarr.open_array(source, mode="w", shape=SHAPE, chunks=(1, 512, 512), dtype="uint16")[...] = volume
        checkpoint = root / "paper.safetensors"
        save_checkpoint(checkpoint, model, normalization=Normalization("percentile", 1.0, 99.8))
        outputs = {}
        runs = (
            ("blocks 4x4, 1 task", 4, 1, 8),
            ("blocks 8x8, 4 tasks", 8, 4, 8),
            ("auto batch", 8, 4, "auto"),
        )
        for name, block, tasks, batch in runs:
            config = load_config(
                overrides={
                    "cluster.workers": 1,
                    "cluster.threads_per_worker": tasks,
                    "profile.device": device,
                    "profile.dtype": "bfloat16",
                    "profile.channels_last": True,
                    "profile.batch_size": batch,
                    "output.dtype": "float32",
                    "tiling.block_tiles": [block, block],
                }
            )
            started = time.perf_counter()
            out = root / f"out-{len(outputs)}.ome.zarr"
            record = segment(SegmentRequest(source, str(out), checkpoint, config, show_progress=False))
            outputs[name] = zarr.open_array(str(out / "s0"), mode="r")[...]
            report[f"run {name}: seconds"] = round(time.perf_counter() - started, 2)
            report[f"run {name}: batch size"] = record["execution_profile"]["batch_size"]
        stats = NormalizationStats.from_dict(record["normalization"])
        configure_torch(config.profile.model_copy(update={"batch_size": 8}))
        planes = [stats.apply(plane) for plane in volume]
        reference = {}
        for dtype in ("bfloat16", "float32"):
            reference[dtype] = np.stack(
                [
                    predict_plane(model, plane, device=device, dtype=dtype, channels_last=True, batch_size=8)[
                        1
                    ]
                    for plane in planes
                ]
            )
        first, second, auto = outputs.values()
        report["runs bitwise equal"] = bool(np.array_equal(first, second))
        report["auto-batch run max |dp| vs batch 8"] = float(np.abs(auto - first).max())
        report["run equals canonical tiling (bf16) bitwise"] = bool(
            np.array_equal(first, reference["bfloat16"])
        )
        report["max |run - canonical bf16|"] = float(np.abs(first - reference["bfloat16"]).max())
        # the same in another session or under MPS: the same kernels, the same bits
        report["run sha256"] = hashlib.sha256(first.tobytes()).hexdigest()
        difference = np.abs(reference["bfloat16"] - reference["float32"])
        report["bf16 vs fp32 max |dp|"] = float(difference.max())
        report["bf16 vs fp32 foreground voxels equal"] = float(
            np.mean((reference["bfloat16"] >= 0.5) == (reference["float32"] >= 0.5))
        )
        report["uint8 encodings equal (bf16 vs fp32)"] = float(
            np.mean(
                encode_probability(reference["bfloat16"], "uint8")
                == encode_probability(reference["float32"], "uint8")
            )
        )
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
