"""Command line: ``unet-pipeline``. Thin: parse, call, report.

Exit codes: 0 success, 2 bad input (paths, files, values), 1 failure.
Errors are one paragraph on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.cli_bench import bench_command
from pipeline.cli_cluster import cluster_command
from pipeline.cli_model import model_command
from pipeline.cli_train import train_command
from pipeline.cli_values import parse_batch_size, parse_channels, parse_shape
from pipeline.config import load_config
from pipeline.demo import run_demo
from pipeline.errors import InputError, PipelineError
from pipeline.locations import is_url
from pipeline.omezarr import open_output, read_state
from pipeline.outputs import read_nightly_summary, root_status
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
    callback=lambda _context, _param, value: parse_channels(value),
    help="Index on the input's channel axis (C, or RGB samples); a list (2,0) for a many-channel model.",
)
@click.option("--timepoint", type=int, help="Index on the input's time axis (T); default: every timepoint.")
@click.option(
    "--rescale", is_flag=True, default=None, help="Resample the input to the model's pixel size (Y, X)."
)
@click.option("--cluster", help="local | cuda | tcp://HOST:PORT of a running scheduler | slurm:FILE.")
@click.option("--workers", type=int, help="Worker processes of a local cluster.")
@click.option("--workers-per-gpu", type=int, help="Worker processes on each GPU of a cuda cluster.")
@click.option(
    "--mps/--no-mps",
    default=None,
    help="Run the workers of a local or cuda cluster under NVIDIA MPS (one CUDA context per GPU), or not "
    "(default: cluster.mps, auto: under MPS where several workers share a GPU).",
)
@click.option("--block-tiles", type=int, help="Block edge in tiles (a multiple of the shard edge).")
@click.option("--threads", type=int, help="Intra-op threads per worker (execution profile).")
@click.option(
    "--batch-size",
    callback=lambda _context, _param, value: parse_batch_size(value),
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
    mps: bool | None,
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
        "cluster.mps": mps,
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
    sizes, chunk_sizes = parse_shape(shape), parse_shape(chunks)
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


cli.add_command(model_command)
cli.add_command(bench_command)
cli.add_command(train_command)
cli.add_command(cluster_command)


def main() -> None:
    cli(prog_name="unet-pipeline")
