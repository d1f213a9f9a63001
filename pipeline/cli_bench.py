"""``unet-pipeline bench``: model-only and end-to-end throughput (part of the CLI)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from pipeline.bench import run_bench
from pipeline.bench import table as bench_table
from pipeline.bench_model import DTYPE_NAMES, BenchProfile, BenchSettings
from pipeline.cli_values import parse_shape
from pipeline.errors import InputError


@click.command("bench")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--base-channels", type=int, help="Network width (default: 16 on CPU, 64 on CUDA: the paper).")
@click.option("--depth", default=5, show_default=True)
@click.option(
    "--tile", default=388, show_default=True, help="Output tile edge (388: the paper's 572 -> 388)."
)
@click.option(
    "--dtypes", help="Comma list of fp32, tf32, bf16, fp16 (default: fp32,bf16 on CPU; all on CUDA)."
)
@click.option("--batch-sizes", help="Comma list (default: 1,4 on CPU; 1,8,32 on CUDA).")
@click.option(
    "--compile", "compiled", is_flag=True, help="Also torch.compile each profile (slow to warm up on CPU)."
)
@click.option("--threads", type=int, help="Torch threads (default: all cores).")
@click.option(
    "--seconds", default=2.0, show_default=True, help="Timed forward passes per profile, after warm-up."
)
@click.option(
    "--profiles",
    "profile_list",
    help="Comma list of dtype:layout:mode:batch[:benchmark] (e.g. bf16:cl:compiled:32) instead of the matrix.",
)
@click.option("--e2e-shape", default="4x3104x3104", show_default=True, help="ZYX of the end-to-end volume.")
@click.option("--no-e2e", is_flag=True, help="Model-only figures and agreement only.")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    help="Dask workers of the end-to-end run; torch threads are shared out among them (as `segment`'s default).",
)
@click.option(
    "--tasks-per-worker", default=2, show_default=True, help="Blocks each worker runs at once (end to end)."
)
@click.option("--block-tiles", default=4, show_default=True, help="Block edge in tiles (end to end).")
@click.option("--block-planes", default=1, show_default=True, help="Planes per block (end to end).")
@click.option(
    "--e2e-weights",
    type=click.Choice(["random", "demo"]),
    default="random",
    show_default=True,
    help="End-to-end model: random weights (speckle), or the shipped demo model (cells), zero-padded "
    "to --base-channels (the same function at that width's cost).",
)
@click.option(
    "--e2e-profile",
    help="dtype:layout:mode:batch of the end-to-end run, e.g. fp16:cl:compiled:16 (measured model-only too; "
    "default: the fastest eager profile; a batch holds one shard's windows at most: 16 here).",
)
@click.option(
    "--warm-up/--no-warm-up",
    default=True,
    show_default=True,
    help="End to end: a one-block acquisition first on the same cluster, so the timed run finds the model "
    "loaded (and compiled) in every worker, as a nightly run's later acquisitions do; --no-warm-up: the "
    "cluster's first acquisition.",
)
@click.option(
    "--mps/--no-mps",
    default=None,
    help="End to end: the workers under an NVIDIA MPS daemon, or not (cluster.mps; cuda only; default: auto, "
    "under MPS where several workers share a GPU and NVIDIA's control program is there).",
)
@click.option(
    "--timeline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="End to end: the timed run as a picture (SVG): each task on its worker thread, by stage.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here."
)
def bench_command(
    device: str,
    base_channels: int | None,
    depth: int,
    tile: int,
    dtypes: str | None,
    batch_sizes: str | None,
    compiled: bool,
    threads: int | None,
    seconds: float,
    profile_list: str | None,
    e2e_shape: str,
    no_e2e: bool,
    workers: int,
    tasks_per_worker: int,
    block_tiles: int,
    block_planes: int,
    e2e_weights: str,
    e2e_profile: str | None,
    warm_up: bool,
    mps: bool | None,
    timeline: Path | None,
    json_path: Path | None,
) -> None:
    """Throughput of the model over execution profiles (the naive one included) and of segment end to end."""
    gpu = device == "cuda"
    shape = parse_shape(e2e_shape)
    if len(shape) != 3:
        raise InputError(f"--e2e-shape {e2e_shape} must be ZYX, e.g. 4x3104x3104")
    try:
        chosen = tuple(BenchProfile.parse(text) for text in profile_list.split(",")) if profile_list else ()
    except ValueError as error:
        raise InputError(f"--profiles: {error}") from None
    try:
        end_to_end = BenchProfile.parse(e2e_profile) if e2e_profile else None
    except ValueError as error:
        raise InputError(f"--e2e-profile: {error}") from None
    settings = BenchSettings(
        device=device,
        base_channels=base_channels or (64 if gpu else 16),
        depth=depth,
        tile=tile,
        dtypes=tuple(dtypes.split(","))
        if dtypes
        else (("fp32", "tf32", "bf16", "fp16") if gpu else ("fp32", "bf16")),
        batch_sizes=tuple(int(n) for n in batch_sizes.split(","))
        if batch_sizes
        else ((1, 8, 32) if gpu else (1, 4)),
        compile=compiled,
        threads=threads or os.cpu_count() or 1,
        min_seconds=seconds,
        e2e_shape=None if no_e2e else (shape[0], shape[1], shape[2]),
        e2e_workers=workers,
        e2e_tasks_per_worker=tasks_per_worker,
        e2e_block_tiles=block_tiles,
        e2e_block_planes=block_planes,
        e2e_weights=e2e_weights,
        e2e_mps="auto" if mps is None else mps,
        profiles=chosen,
        e2e_profile=end_to_end,
        e2e_warm_up=warm_up,
        e2e_timeline=str(timeline) if timeline else None,
    )
    unknown = set(settings.dtypes) - set(DTYPE_NAMES)
    if unknown:
        raise InputError(f"--dtypes: unknown {', '.join(sorted(unknown))}; use fp32, tf32, bf16, fp16")
    report = run_bench(settings)
    click.echo(bench_table(report))
    if timeline is not None and report.get("end_to_end"):
        click.echo(f"wrote {timeline}")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
