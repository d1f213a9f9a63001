"""Command line: ``unet-pipeline``. Thin: parse, call, report.

Exit codes: 0 success, 2 bad input (paths, files, values), 1 failure.
Errors are one paragraph on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import torch

from pipeline import __version__
from pipeline.bench import DTYPE_NAMES, BenchProfile, BenchSettings, run_bench
from pipeline.bench import table as bench_table
from pipeline.checkpoint import convert_state_dict, load_checkpoint, save_checkpoint
from pipeline.cli_cluster import cluster_command
from pipeline.cli_train import train_command
from pipeline.config import load_config
from pipeline.demo import run_demo
from pipeline.errors import InputError, PipelineError
from pipeline.locations import is_url
from pipeline.model import UNet, count_parameters
from pipeline.normalization import METHODS, Normalization
from pipeline.omezarr import open_output, read_state
from pipeline.outputs import read_nightly_summary, root_status
from pipeline.predict import PAPER_TILE
from pipeline.rechunk import rechunk
from pipeline.run import SegmentRequest
from pipeline.run import segment as run_segment
from pipeline.synthetic import write_synthetic_acquisition, write_synthetic_volume

log = logging.getLogger(__name__)


class _Cli(click.Group):
    """Turns the pipeline's errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineError as error:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="unet-pipeline")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--quiet", is_flag=True, help="Only warnings and errors.")
def cli(debug: bool, quiet: bool) -> None:
    """Exact overlap-tile U-Net segmentation of large microscopy volumes."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(level)
    if not debug:  # other libraries speak only of problems (distributed sets its own level on import)
        logging.getLogger("distributed").setLevel(logging.WARNING)


@cli.group()
def model() -> None:
    """Create, inspect and convert model checkpoints."""


normalization_option = click.option(
    "--normalization",
    type=click.Choice(METHODS),
    default="percentile",
    show_default=True,
    help="Input normalisation recorded in the checkpoint (percentile: 1 to 99.8).",
)


@model.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base-channels", default=64, show_default=True, help="Channels at full resolution.")
@click.option("--depth", default=5, show_default=True, help="Resolution levels, bottleneck included.")
@click.option("--in-channels", default=1, show_default=True)
@click.option("--classes", "n_classes", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the He-normal initialisation.")
@normalization_option
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def model_init(
    path: Path,
    base_channels: int,
    depth: int,
    in_channels: int,
    n_classes: int,
    seed: int,
    normalization: str,
    overwrite: bool,
) -> None:
    """Write an initialised, untrained checkpoint to PATH."""
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it")
    torch.manual_seed(seed)
    try:
        net = UNet(in_channels, n_classes, base_channels, depth)
    except ValueError as error:
        raise InputError(str(error)) from error
    classes = ("background", "foreground") if n_classes == 2 else tuple(f"class{i}" for i in range(n_classes))
    sha256 = save_checkpoint(
        path,
        net,
        normalization=Normalization(normalization),
        classes=classes,
        training={"status": "untrained", "seed": seed},
    )
    click.echo(f"wrote untrained {net.config} ({count_parameters(net):,} parameters) to {path}")
    click.echo(f"sha256 {sha256}")


@model.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def model_info(path: Path, as_json: bool) -> None:
    """Architecture, parameter count, geometry and sha256 of a checkpoint."""
    checkpoint = load_checkpoint(path)
    geometry = checkpoint.model.geometry
    tile = PAPER_TILE if geometry.is_valid_input(PAPER_TILE + 2 * geometry.halo) else None
    info = {
        "path": str(path),
        "sha256": checkpoint.sha256,
        "architecture": checkpoint.config.to_dict(),
        "parameters": count_parameters(checkpoint.model),
        "halo": geometry.halo,
        "valid_input_sizes": f"{geometry.pool_factor}k + {geometry.min_input_size % geometry.pool_factor}"
        f" from {geometry.min_input_size}",
        "default_tile": tile,
        "normalization": checkpoint.normalization.to_dict(),
        "classes": list(checkpoint.classes),
        "training": checkpoint.training,
        "package_version": checkpoint.package_version,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key:>18}: {value}")


@model.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@normalization_option
@click.option(
    "--pixel-size",
    type=click.FloatRange(min=0, min_open=True),
    help="Y, X pixel size (um) the weights were trained at; runs compare theirs with it.",
)
def model_convert(source: Path, target: Path, normalization: str, pixel_size: float | None) -> None:
    """Convert a torch.save-d state dict of this U-Net into a safe checkpoint."""
    sha256 = convert_state_dict(
        source, target, normalization=Normalization(normalization), pixel_size_um=pixel_size
    )
    click.echo(f"wrote {target} (sha256 {sha256})")


@cli.command()
@click.argument("input_url", metavar="IN")
@click.argument("output_url", metavar="OUT")
@click.option(
    "--model", "checkpoint", required=True, type=click.Path(path_type=Path), help="Checkpoint (.safetensors)."
)
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="YAML config (default: built-in)."
)
@click.option(
    "--channel",
    callback=lambda _context, _param, value: _channels(value),
    help="Index on the input's channel axis (C, or RGB samples); a list (2,0) for a many-channel model.",
)
@click.option("--timepoint", type=int, help="Index on the input's time axis (T); default: every timepoint.")
@click.option(
    "--rescale", is_flag=True, default=None, help="Resample the input to the model's pixel size (Y, X)."
)
@click.option("--cluster", help="local | cuda | tcp://HOST:PORT of a running scheduler | slurm:FILE.")
@click.option("--workers", type=int, help="Worker processes of a local cluster.")
@click.option("--workers-per-gpu", type=int, help="Worker processes on each GPU of a cuda cluster.")
@click.option("--block-tiles", type=int, help="Block edge in tiles (a multiple of the shard edge).")
@click.option("--threads", type=int, help="Intra-op threads per worker (execution profile).")
@click.option(
    "--batch-size",
    callback=lambda _context, _param, value: _batch_size(value),
    help="Windows per forward pass, or auto: the largest that fits the GPU (execution profile).",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Device (execution profile).")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    help="Network precision (execution profile; default bfloat16 on cuda, float32 on cpu).",
)
@click.option(
    "--compile", "compiled", is_flag=True, default=None, help="torch.compile the model (execution profile)."
)
@click.option("--output-dtype", type=click.Choice(["uint8", "float32"]), help="Stored probability type.")
@click.option(
    "--ngff",
    type=click.Choice(["0.5", "0.4"]),
    help="Output OME-Zarr version (0.4: Zarr v2, for older viewers).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output of this pipeline.")
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run: only unfinished blocks are computed."
)
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
def segment(
    input_url: str,
    output_url: str,
    checkpoint: Path,
    config_file: Path | None,
    channel: int | list[int] | None,
    timepoint: int | None,
    rescale: bool | None,
    cluster: str | None,
    workers: int | None,
    workers_per_gpu: int | None,
    block_tiles: int | None,
    threads: int | None,
    batch_size: int | str | None,
    device: str | None,
    dtype: str | None,
    compiled: bool | None,
    output_dtype: str | None,
    ngff: str | None,
    overwrite: bool,
    resume: bool,
    no_progress: bool,
) -> None:
    """Segment volume IN into an OME-Zarr store OUT (probabilities and instance labels)."""
    flags = {
        "input.channel": channel,
        "input.timepoint": timepoint,
        "input.rescale": rescale,
        "cluster.address": cluster,
        "cluster.workers": workers,
        "cluster.workers_per_gpu": workers_per_gpu,
        "tiling.block_tiles": None if block_tiles is None else [block_tiles, block_tiles],
        "profile.threads": threads,
        "profile.batch_size": batch_size,
        "profile.device": device,
        "profile.dtype": dtype,
        "profile.compile": compiled,
        "output.dtype": output_dtype,
        "output.ngff": ngff,
    }
    config = load_config(config_file, {key: value for key, value in flags.items() if value is not None})
    record = run_segment(
        SegmentRequest(
            input_url=input_url,
            output_url=output_url,
            checkpoint_path=checkpoint,
            config=config,
            overwrite=overwrite,
            resume=resume,
            show_progress=not no_progress,
        )
    )
    predict = record["stages"]["predict"]
    objects = f", {record['labels']['objects']} objects" if "labels" in record else ""
    click.echo(
        f"segmented {input_url} -> {output_url}: {predict['blocks']} blocks ({predict['computed']} computed), "
        f"{predict['pixels'] / 1e6:.1f} Mpix at {predict['mpix_per_second']} Mpix/s{objects}; run {record['run_id']}"
    )


@cli.command()
@click.argument("output_url", metavar="OUT")
@click.option("--json", "as_json", is_flag=True, help="The full run records as JSON.")
def inspect(output_url: str, as_json: bool) -> None:
    """Show the run records of an output."""
    state = read_state(open_output(output_url))
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    click.echo(
        f"{output_url}: {'complete' if state['complete'] else 'NOT complete'}, {len(state['runs'])} run(s)"
    )
    for run in state["runs"]:
        click.echo(f"- run {run['run_id']}: {run['status']}, {run['started']} -> {run['ended']}")
        click.echo(f"    input      {run['input']['url']} {run['input']['shape']} {run['input']['dtype']}")
        click.echo(f"    checkpoint {run['checkpoint']['path']} sha256 {run['checkpoint']['sha256'][:16]}")
        click.echo(f"    profile    {run['execution_profile']}")
        click.echo(f"    blocks     {run['blocks']['done']}/{run['blocks']['total']}")
        if run.get("prefect"):
            flow = run["prefect"]
            click.echo(
                f"    prefect    flow run {flow['flow_run_id']} ({flow['flow_name']} '{flow['flow_run_name']}', "
                f"attempt {flow['attempt']}), flow version {flow['flow_version']}"
            )
            click.echo(
                f"               deployment {flow['deployment_name']}, parent flow run {flow['parent_flow_run_id']}"
            )
        if run.get("resumed_from"):
            click.echo(f"    resumed    from run {run['resumed_from']}")
        if "labels" in run:
            click.echo(f"    labels     {run['labels']['objects']} objects ({run['labels']['dtype']})")
        for stage, figures in run["stages"].items():
            click.echo(
                f"    {stage:<10} {figures['computed']}/{figures['blocks']} blocks computed, "
                f"{figures['wall_seconds']} s, {figures['mpix_per_second']} Mpix/s"
            )
        if run["error"]:
            click.echo(f"    error      {run['error']}")


@cli.command()
@click.argument("output_root", metavar="OUTPUT_ROOT")
@click.option(
    "--input-root",
    help="Where acquisitions arrive (default: that of the last nightly run): lists pending ones too.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(output_root: str, input_root: str | None, as_json: bool) -> None:
    """The morning check: every acquisition of OUTPUT_ROOT (a folder or a bucket prefix such as
    s3://bucket/segmentations), complete, failed, partial or pending."""
    if not is_url(output_root) and not Path(output_root).is_dir():
        raise InputError(f"output root {output_root} is not a folder")
    if input_root is not None and not is_url(input_root) and not Path(input_root).is_dir():
        raise InputError(f"input root {input_root} is not a folder")
    rows = root_status(output_root, input_root)
    summary = read_nightly_summary(output_root)
    if as_json:
        click.echo(
            json.dumps(
                {"last_nightly_run": _without_report(summary), "acquisitions": [asdict(r) for r in rows]},
                indent=2,
            )
        )
        return
    if summary is not None:
        counts: dict[str, int] = {}
        for row in summary["rows"]:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        click.echo(
            f"last nightly run '{summary['flow_run_name']}' ({summary['flow_run_id']}), "
            f"{summary['started']} -> {summary['ended']}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        )
        click.echo(f"input root {summary['input_root']}")
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.state] = totals.get(row.state, 0) + 1
    click.echo(
        f"{output_root}: {len(rows)} acquisitions: " + ", ".join(f"{n} {s}" for s, n in totals.items())
    )
    width = max([len(row.name) for row in rows] + [11])
    for row in rows:
        objects = "" if row.objects is None else f"{row.objects:,} objects"
        click.echo(f"  {row.name:<{width}}  {row.state:<8}  {objects:>14}  {row.detail}")


def _without_report(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if summary is None else {key: value for key, value in summary.items() if key != "report"}


def _channels(text: str | None) -> int | list[int] | None:
    """--channel: one index, or a comma list for a model of several input channels."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a channel index or a list like 2,0") from None
    if min(values) < 0:
        raise click.BadParameter(f"{text!r}: channel indices start at 0")
    return values[0] if len(values) == 1 and "," not in text else values


def _batch_size(text: str | None) -> int | str | None:
    """--batch-size: a count, or auto."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number of windows or auto") from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a shape like 16x8192x8192") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: sizes must be >= 1")
    return values


@cli.command()
@click.argument("output_url", metavar="OUT")
@click.option("--shape", required=True, help="YX or ZYX, e.g. 16x8192x8192.")
@click.option("--chunks", required=True, help="Chunk shape, e.g. 1x1024x1024.")
@click.option(
    "--dtype", type=click.Choice(["uint8", "uint16", "float32"]), default="uint16", show_default=True
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--labels",
    "with_labels",
    is_flag=True,
    help="Nuclei with blur, noise and uneven light, as OME-Zarr with exact labels (labels/truth).",
)
def synth(output_url: str, shape: str, chunks: str, dtype: str, seed: int, with_labels: bool) -> None:
    """Write a synthetic volume (for benchmarks, tests, training and trials)."""
    sizes, chunk_sizes = _shape(shape), _shape(chunks)
    if len(sizes) not in (2, 3) or len(chunk_sizes) != len(sizes):
        raise InputError(f"--shape {shape} and --chunks {chunks} must both be YX or both ZYX")
    if with_labels:
        _, labels = write_synthetic_acquisition(output_url, sizes, chunk_sizes, seed=seed)
        click.echo(f"wrote {output_url}: {shape} uint16 nuclei, {int(labels.max())} objects in labels/truth")
        return
    write_synthetic_volume(output_url, sizes, chunk_sizes, seed=seed, dtype=dtype)
    click.echo(f"wrote {output_url}: {shape} {dtype}, chunks {chunks}")


@cli.command("rechunk")
@click.argument("input_url", metavar="IN")
@click.argument("output", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option("--channel", type=int, help="Index on the input's channel axis (C, or RGB samples).")
@click.option("--timepoint", type=int, help="Index on the input's time axis (T).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
def rechunk_command(
    input_url: str, output: Path, channel: int | None, timepoint: int | None, no_progress: bool
) -> None:
    """Copy an input (TIFF, Zarr) into an OME-Zarr image of 512 x 512 chunks, for fast block reads."""
    copy = rechunk(input_url, output, channel=channel, timepoint=timepoint, show_progress=not no_progress)
    click.echo(f"wrote {output}: {' x '.join(str(n) for n in copy.array.shape)} {copy.dtype.name}, level s0")


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path), default="demo-output")
@click.option(
    "--model", type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint (default: models/demo-unet)."
)
def demo(out_dir: Path, model: Path | None) -> None:
    """Segment a synthetic acquisition with the shipped model and score it against the truth."""
    result = run_demo(out_dir, model)
    record, scores = result.record, result.scores
    predict = record["stages"]["predict"]
    shape = " x ".join(str(n) for n in record["input"]["shape"])
    training = record["checkpoint"]["training"]
    trained = "trained on synthetic nuclei" if training.get("status") == "trained" else "UNTRAINED"
    click.echo(
        f"demo: segmented a synthetic {shape} uint16 acquisition of nuclei ({result.input_url})\n"
        f"      with {result.checkpoint} ({record['checkpoint']['architecture']['base_channels']} base channels, "
        f"{trained}) on a local Dask cluster of {record['cluster']['workers']} workers"
    )
    click.echo(
        f"      objects    {scores['objects_found']} found, {scores['objects_true']} in the truth, "
        f"{scores['objects_matched']} matched (IoU > 0.5, in 3D)"
    )
    click.echo(
        f"      quality    foreground IoU {scores['foreground_iou']:.3f}, instance F1 (IoU 0.5) "
        f"{scores['instance_f1']:.3f}; touching nuclei kept apart: {scores['touching_pairs_kept_apart']} of "
        f"{scores['touching_pairs']} pairs"
    )
    click.echo(
        f"      speed      {predict['pixels'] / 1e6:.1f} Mpix in {record['wall_seconds']:.1f} s end to end "
        f"({predict['pixels'] / 1e6 / record['wall_seconds']:.2f} Mpix/s; predict stage "
        f"{predict['mpix_per_second']} Mpix/s)"
    )
    click.echo(f"      output     {result.output_url} (OME-Zarr 0.5; `unet-pipeline inspect` shows the run)")
    click.echo(f"      napari     napari --plugin napari-ome-zarr {result.output_url}")
    click.echo(f"      preview    {result.picture} (middle plane, label outlines)")


@cli.command("bench")
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
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here."
)
def bench(
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
    json_path: Path | None,
) -> None:
    """Throughput of the model over execution profiles (the naive one included) and of segment end to end."""
    gpu = device == "cuda"
    shape = _shape(e2e_shape)
    if len(shape) != 3:
        raise InputError(f"--e2e-shape {e2e_shape} must be ZYX, e.g. 4x3104x3104")
    try:
        chosen = tuple(BenchProfile.parse(text) for text in profile_list.split(",")) if profile_list else ()
    except ValueError as error:
        raise InputError(f"--profiles: {error}") from None
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
        profiles=chosen,
    )
    unknown = set(settings.dtypes) - set(DTYPE_NAMES)
    if unknown:
        raise InputError(f"--dtypes: unknown {', '.join(sorted(unknown))}; use fp32, tf32, bf16, fp16")
    report = run_bench(settings)
    click.echo(bench_table(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


cli.add_command(train_command)
cli.add_command(cluster_command)


def main() -> None:
    cli(prog_name="unet-pipeline")
