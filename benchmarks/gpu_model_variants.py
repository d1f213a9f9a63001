"""Model-only variants of the paper network on a GPU, aimed at the 220 Mpix/s target.

    python benchmarks/gpu_model_variants.py --json variants.json --profile profile.txt [--autotune]

Paper U-Net (64 base channels, depth 5, 572 -> 388), random weights, channels
last, torch.compile unless named eager. Each variant: median time per batch
over CUDA events after warm-up, output Mpix/s, and its largest logit
difference from the fp32 eager network on the same windows (relative to the
largest logit). Variants: the dtype (bf16, fp16), cuDNN benchmark mode,
batch size, the 2x2 up-convolutions computed as a 1x1 convolution followed
by a pixel shuffle (the same function, one GEMM instead of cuDNN's
transposed convolution), and, with --autotune, inductor's
max-autotune-no-cudagraphs. Also measured: the card's bf16 matrix rate (the
roofline's ceiling) and a kernel-time table of the baseline (--profile).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.model import UNet

TILE = 388
WINDOW = 572
GFLOP_PER_TILE = 300.9  # the paper network on one 572 window (multiply-adds x 2)


class ShuffledUpconv(nn.Module):
    """A 2x2 stride-2 transposed convolution as a 1x1 convolution to 4x the channels and a pixel shuffle."""

    def __init__(self, upconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        inputs, outputs = upconv.in_channels, upconv.out_channels
        # ConvTranspose2d weight (in, out, 2, 2) -> conv weight (out*4, in, 1, 1), channel o*4 + a*2 + b
        weight = upconv.weight.detach().permute(1, 2, 3, 0).reshape(outputs * 4, inputs, 1, 1)
        self.conv = nn.Conv2d(inputs, outputs * 4, kernel_size=1, device=upconv.weight.device)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            assert upconv.bias is not None
            self.conv.bias.copy_(upconv.bias.detach().repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(self.conv(x), 2)


class FusedDoubleConv(nn.Module):
    """Two 3x3 convolutions each with its bias and ReLU in one cuDNN call (cudnnConvolutionBiasActivation)."""

    def __init__(self, block: nn.Sequential) -> None:
        super().__init__()
        self.first, self.second = block[0], block[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.first, self.second):
            x = torch.cudnn_convolution_relu(x, conv.weight, conv.bias, (1, 1), (0, 0), (1, 1), 1)
        return x


def fused(model: UNet) -> UNet:
    variant = copy.deepcopy(model)
    variant.encoder = nn.ModuleList(FusedDoubleConv(block) for block in variant.encoder)
    for up in variant.decoder:
        up.conv = FusedDoubleConv(up.conv)  # type: ignore[assignment]
    return variant


def shuffled(model: UNet) -> UNet:
    variant = copy.deepcopy(model)
    for up in variant.decoder:
        up.upconv = ShuffledUpconv(up.upconv)  # type: ignore[assignment]
    return variant


@dataclass(frozen=True)
class Variant:
    name: str
    dtype: torch.dtype = torch.bfloat16
    batch: int = 32
    compiled: bool = True
    benchmark_mode: bool = False
    shuffle: bool = False
    fuse: bool = False
    mode: str | None = None


VARIANTS = [
    Variant("bf16 compiled b32 (baseline)"),
    Variant("bf16 eager b32 fused conv+bias+relu", compiled=False, fuse=True),
    Variant("bf16 compiled b32 fused conv+bias+relu", fuse=True),
    Variant("fp16 compiled b32 fused conv+bias+relu", dtype=torch.float16, fuse=True),
    Variant("bf16 compiled b32 fused benchmark", fuse=True, benchmark_mode=True),
    Variant("fp16 compiled b32 fused benchmark", dtype=torch.float16, fuse=True, benchmark_mode=True),
    Variant("fp16 compiled b32", dtype=torch.float16),
    Variant("bf16 compiled b32 cudnn benchmark", benchmark_mode=True),
    Variant("bf16 compiled b64", batch=64),
    Variant("bf16 compiled b32 shuffled upconv", shuffle=True),
    Variant(
        "fp16 compiled b32 shuffled upconv benchmark", dtype=torch.float16, shuffle=True, benchmark_mode=True
    ),
]
AUTOTUNE = [
    Variant("fp16 max-autotune-no-cudagraphs b32", dtype=torch.float16, mode="max-autotune-no-cudagraphs"),
    Variant("bf16 max-autotune-no-cudagraphs b32", mode="max-autotune-no-cudagraphs"),
]


def median_ms(run: Any, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    return 2 * 8192**3 / median_ms(lambda: a @ b, 10) / 1e9


def measure(base: UNet, variant: Variant, windows: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    torch.backends.cudnn.benchmark = variant.benchmark_mode
    torch.backends.cudnn.deterministic = not variant.benchmark_mode
    model = shuffled(base) if variant.shuffle else copy.deepcopy(base)
    model = (fused(model) if variant.fuse else model).to(dtype=variant.dtype)
    model = model.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    forward: Any = model
    if variant.compiled:
        forward = torch.compile(model, dynamic=False, mode=variant.mode)
    batch = windows[: variant.batch].to(dtype=variant.dtype, memory_format=torch.channels_last)
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(3):
            out = forward(batch)
        torch.cuda.synchronize()
        warmup = time.perf_counter() - started
        ms = median_ms(lambda: forward(batch))
        torch.cuda.synchronize()
        difference = (out[: len(reference)].float() - reference).abs().max() / reference.abs().max()
    mpix = variant.batch * TILE**2 / ms / 1e3
    return {
        "variant": variant.name,
        "batch": variant.batch,
        "ms_per_batch": round(ms, 3),
        "mpix_per_second": round(mpix, 1),
        "tflops": round(mpix * 1e6 / TILE**2 * GFLOP_PER_TILE / 1e3, 1),
        "warmup_seconds": round(warmup, 1),
        "max_logit_difference_vs_fp32": float(difference),
    }


def kernel_table(base: UNet, windows: torch.Tensor) -> str:
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    model = copy.deepcopy(base).to(dtype=torch.bfloat16, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    forward = torch.compile(model, dynamic=False)
    batch = windows[:32].to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            forward(batch)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                forward(batch)
            torch.cuda.synchronize()
    return str(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--profile", type=Path)
    parser.add_argument(
        "--autotune", action="store_true", help="also inductor max-autotune (slow to compile)"
    )
    parser.add_argument(
        "--only", help="run only the variants whose name holds one of these texts (comma-separated)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    base = UNet(1, 2, 64, 5).cuda().eval()
    windows = torch.randn(64, 1, WINDOW, WINDOW, device="cuda")
    with torch.inference_mode():
        reference = base(windows[:2]).float()
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["bf16_matmul_tflops"] = round(matmul_tflops(), 1)
    print(f"bf16 matmul 8192^3: {report['bf16_matmul_tflops']} TFLOP/s", flush=True)
    with torch.inference_mode():
        shuffle_error = (shuffled(base)(windows[:2]) - reference).abs().max() / reference.abs().max()
    report["shuffled_upconv_fp32_relative_difference"] = float(shuffle_error)
    rows = report["variants"] = []
    for variant in [*VARIANTS, *(AUTOTUNE if args.autotune else [])]:
        if args.only and not any(text in variant.name for text in args.only.split(",")):
            continue
        try:
            rows.append(measure(base, variant, windows, reference))
        except Exception as error:  # noqa: BLE001  # one failing variant must not lose the others
            rows.append({"variant": variant.name, "error": repr(error)[:300]})
        print(json.dumps(rows[-1]), flush=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.profile:
        args.profile.write_text(kernel_table(base, windows))
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
