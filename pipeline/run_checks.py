"""What a run checks before it writes: a live run holding the output, a resumption's recorded settings,
the input's chunking, and the batch size the whole run will use."""

from __future__ import annotations

import logging
from typing import Any

from distributed import Client

from pipeline.batch_size import dividing_batch, zero_windows
from pipeline.cluster import CHECK_PRIORITY
from pipeline.config import ProfileConfig
from pipeline.errors import InputError
from pipeline.lock import read_lock, refuse_if_held
from pipeline.normalization import NormalizationStats, stats_from_record
from pipeline.omezarr import open_output, output_exists, read_state, remove_output
from pipeline.plan import RunPlan, resume_differences
from pipeline.rechunk import READ_AMPLIFICATION_WARNING, block_read_amplification, ratio_text
from pipeline.worker_device import CheckpointRef, probe_batch_size

log = logging.getLogger(__name__)


def warn_on_read_amplification(plan: RunPlan) -> float:
    """How many voxels a block decodes per voxel it uses; a warning naming the fix when it is high."""
    halo = plan.checkpoint.config.geometry.halo
    planes, rows, cols = plan.grid.block_edges
    ratio = block_read_amplification(plan.volume, (planes, rows + 2 * halo, cols + 2 * halo))
    if ratio > READ_AMPLIFICATION_WARNING:
        log.warning(
            "%s (%s) is stored in chunks of %s: each block decodes %s the voxels it uses, so reading, not "
            "the model, will set the pace; `unet-pipeline rechunk %s COPY.ome.zarr` copies it into "
            "512 x 512 chunks once, then segment the copy",
            plan.request.input_url,
            plan.volume.description,
            " x ".join(str(n) for n in plan.volume.chunks_zyx),
            ratio_text(ratio),
            plan.request.input_url,
        )
    return ratio


def resumable(plan: RunPlan, input_fingerprint: dict[str, Any]) -> tuple[tuple[NormalizationStats, ...], str]:
    """The recorded normalisation of the run to continue; InputError if anything changed."""
    state = read_state(open_output(plan.output_url))
    if state["complete"]:
        raise InputError(f"--resume: {plan.request.output_url} is already complete; nothing to resume")
    if not state["runs"]:
        raise InputError(
            f"--resume: {plan.request.output_url} holds no run record to continue (its run failed before "
            "writing one): start over with --overwrite"
        )
    first = state["runs"][0]
    changes = resume_differences(plan, first, input_fingerprint)
    if changes:
        raise InputError(
            f"--resume refused for {plan.request.output_url}: since run {first['run_id']} changed "
            + "; ".join(changes)
            + ". Resume with the original model, config and input, or start over with --overwrite"
        )
    return stats_from_record(first["normalization"]), str(state["runs"][-1]["run_id"])


def refuse_if_running(plan: RunPlan) -> None:
    """A live run holding the output refuses this one, before a cluster is started for it."""
    if not plan.request.overwrite:
        refuse_if_held(plan.output_url)  # hold_lock decides for good
        return
    owner = read_lock(plan.output_url)
    if owner is not None and owner.is_alive() is not False:
        raise InputError(
            f"--overwrite refused: {plan.request.output_url} is being written by run {owner.run_id} "
            f"(pid {owner.pid} on {owner.host})"
        )


def replace_previous(plan: RunPlan) -> None:
    """--overwrite: remove the previous output (ours, checked by the plan) unless a live run holds it."""
    if not plan.request.overwrite or not output_exists(plan.output_url):
        return
    refuse_if_running(plan)
    remove_output(plan.output_url)
    log.info("removed the previous output %s (--overwrite)", plan.request.output_url)


def warn_on_zero_windows(batch: int, shard_tiles: int) -> None:
    """A warning where batches of ``batch`` windows are part zeros: a batch holds one output shard's."""
    windows = shard_tiles**2
    zeros = zero_windows(batch, windows)
    if zeros:
        log.warning(
            "batch_size %d: a batch holds the windows of one output shard (%d at tiling.shard_tiles %d), so %d "
            "of every %d windows the device computes are zeros; batch_size %d computes none",
            batch,
            windows,
            shard_tiles,
            zeros,
            windows + zeros,
            dividing_batch(batch, windows),
        )


def fixed_profile(client: Client, plan: RunPlan, first_run: dict[str, Any] | None) -> ProfileConfig:
    """The run's execution profile with ``batch_size: auto`` settled: as recorded by the run a resumption
    continues, else probed on a worker's device. Every block of the run then uses that size."""
    profile = plan.request.config.profile
    if profile.batch_size != "auto":
        warn_on_zero_windows(profile.batch_size, plan.request.config.tiling.shard_tiles)
        return profile
    recorded = (first_run or {}).get("execution_profile", {}).get("batch_size")
    if isinstance(recorded, int):
        size = recorded
    else:
        checkpoint = CheckpointRef(str(plan.checkpoint.path.resolve()), plan.checkpoint.sha256)
        tiling = plan.request.config.tiling
        size = client.submit(
            probe_batch_size,
            checkpoint,
            profile,
            tiling.tile,
            tiling.shard_tiles,
            pure=False,
            priority=CHECK_PRIORITY,
        ).result()
        log.info("batch_size auto: %d windows per forward pass on %s", size, profile.device)
    return profile.model_copy(update={"batch_size": size})
