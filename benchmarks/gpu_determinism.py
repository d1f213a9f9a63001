"""Does a window's output on the GPU depend on its batch? One line per precision and layout.

    python benchmarks/gpu_determinism.py --json determinism.json

Paper-width U-Net (64 base channels, random weights), deterministic cuDNN.
For each profile: the same batch twice (repeatable), the same windows at other
positions with other mates (position), one window with zero mates (mates),
batch 8 against batch 1 (batch size); and the time of one batch of 8.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.model import UNet

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def probabilities(model: UNet, batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
        logits = model(batch.to(dtype=next(model.parameters()).dtype, memory_format=layout)).float()
        return torch.stack([torch.softmax(logits[k : k + 1], 1)[0] for k in range(len(logits))])


def check(model: UNet, windows: torch.Tensor, channels_last: bool) -> dict[str, Any]:
    first = probabilities(model, windows[:8], channels_last)
    again = probabilities(model, windows[:8], channels_last)
    shifted = probabilities(model, windows[4:12], channels_last)  # windows 4..7 at positions 0..3
    alone = torch.zeros_like(windows[:8])
    alone[5] = windows[0]
    with_zeros = probabilities(model, alone, channels_last)
    single = probabilities(model, windows[:1], channels_last)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(5):
        probabilities(model, windows[:8], channels_last)
    torch.cuda.synchronize()

    def worst(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    return {
        "repeat max |d|": worst(first, again),
        "position max |d|": worst(first[4:8], shifted[0:4]),
        "mates max |d|": worst(first[0], with_zeros[5]),
        "batch 1 vs 8 max |d|": worst(first[0], single[0]),
        "seconds per batch of 8": round((time.perf_counter() - started) / 5, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    windows = torch.randn(12, 1, 572, 572, device="cuda")
    rows = []
    for cudnn in (True, False):
        torch.backends.cudnn.enabled = cudnn
        for dtype in ("bf16", "fp32", "fp16"):
            for channels_last in (True, False):
                if not cudnn and dtype != "bf16":
                    continue
                torch.manual_seed(1)
                model = UNet(1, 2, 64, 5).eval().to("cuda", DTYPES[dtype])
                model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                row = {"dtype": dtype, "channels_last": channels_last, "cudnn": cudnn}
                row.update(check(model, windows, channels_last))
                rows.append(row)
                print(json.dumps(row))
    torch.backends.cudnn.enabled = True
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
