"""The jobs of a run's stages: which block task runs for each block or shard, and what it waits for.

Pure construction from the plan (and, for relabel and the label pyramid, the label merge's mapping);
the run (:mod:`pipeline.run`) sends them to Dask as their needs are met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.blocks import (
    ContactTask,
    LabelLevelTask,
    PredictTask,
    PyramidTask,
    RelabelTask,
    ResampleTask,
    contact_block,
    label_level_block,
    predict_block,
    pyramid_block,
    relabel_block,
    resample_block,
)
from pipeline.config import ProfileConfig
from pipeline.geometry import Block, BlockGrid, Roi
from pipeline.labels import contact_slabs
from pipeline.normalization import NormalizationStats
from pipeline.omezarr import SCRATCH_LABEL_LEVELS, SCRATCH_PROBABILITY
from pipeline.plan import RunPlan
from pipeline.schedule import Job
from pipeline.worker_device import CheckpointRef

# label pyramid levels written from the local labels (see label_level_shards): the levels the output keeps
# subsampled copies of them for, read from the full-resolution ones in outputs of older runs
LABEL_LEVELS_FROM_LOCAL = SCRATCH_LABEL_LEVELS


# the follow-ups' precedence (Job.precedence): contacts settle IDs, and IDs let a block's labels be written
CONTACTS = 2
LABELS_WRITTEN = 1

MappingOf = Callable[[int], npt.NDArray[np.uint64]]  # block id -> its lookup table (local label -> ID)


def relabel_job(plan: RunPlan, block: Block, mapping: npt.NDArray[np.uint64], dtype: str) -> Job:
    target = f"labels/{plan.request.config.labels.name}/s0"
    task = RelabelTask(block, plan.grid, plan.output_url, target, mapping, dtype)
    return Job(  # beside the network
        "relabel", block.block_id, relabel_block, task, follow_up=True, precedence=LABELS_WRITTEN
    )


def predict_jobs(plan: RunPlan, profile: ProfileConfig, stats: tuple[NormalizationStats, ...]) -> list[Job]:
    config = plan.request.config
    checkpoint = CheckpointRef(str(plan.checkpoint.path.resolve()), plan.checkpoint.sha256)
    resampled = plan.model_grid is not None
    return [
        Job(
            "predict",
            block.block_id,
            predict_block,
            PredictTask(
                block=block,
                volume_shape=plan.predict_grid.volume_shape,
                input=plan.volume.ref,
                output_url=plan.output_url,
                checkpoint=checkpoint,
                stats=stats,
                profile=profile,
                tile=config.tiling.tile,
                shard_tiles=config.tiling.shard_tiles,
                output_dtype="float32" if resampled else config.output.dtype,
                labels=None if resampled else plan.label_rule,
                target=SCRATCH_PROBABILITY if resampled else "s0",
            ),
        )
        for block in plan.predict_blocks
    ]


def resample_jobs(plan: RunPlan) -> list[Job]:
    config = plan.request.config
    factors = (plan.scale.factors["y"], plan.scale.factors["x"])
    return [
        Job(
            "resample",
            block.block_id,
            resample_block,
            ResampleTask(
                block,
                plan.grid.volume_shape,
                factors,
                plan.output_url,
                config.tiling.tile,
                config.output.dtype,
                plan.label_rule,
            ),
        )
        for block in plan.blocks
    ]


def contact_jobs(plan: RunPlan, labelled: str) -> list[Job]:
    """A block's contacts need every block its face slabs touch to be labelled."""
    assert plan.label_rule is not None
    connectivity = plan.label_rule.connectivity
    jobs = []
    for block in plan.blocks:
        write = block.write_roi(plan.grid.volume_shape, plan.grid.tile)
        slabs = contact_slabs(plan.grid, write.start, write.stop, connectivity)
        needs = {block.block_id} | {b for _, _, box in slabs for b in plan.grid.block_ids_in(*box)}
        jobs.append(
            Job(
                "contacts",
                block.block_id,
                contact_block,
                ContactTask(
                    block, plan.grid, plan.output_url, connectivity, plan.label_rule.edges is not None
                ),
                needs=tuple((labelled, b) for b in sorted(needs)),
                follow_up=True,
                precedence=CONTACTS,
            )
        )
    return jobs


@dataclass(frozen=True, slots=True)
class LabelShard:
    """A shard of a label pyramid level written from the local labels, and the blocks under it."""

    stage: str
    block_id: int  # the shard's number in its level's grid
    level: int
    roi: Roi  # ZYX at the level
    under: tuple[int, ...]  # the blocks it reads


def label_level_shards(plan: RunPlan) -> list[LabelShard]:
    """The shards of the label pyramid's levels written from the local labels, beside relabel; the
    levels below them halve the level above (:func:`halved_label_levels`), as the probability's do.

    Level k from the local labels decodes every block once (cheap: LZ4), where halving the level
    above decodes a quarter of the voxels per level (Zstd, and after that level is written): from
    the local labels pays off for the first two levels.
    """
    prefix = f"labels/{plan.request.config.labels.name}/"
    shards = []
    for level in range(1, min(LABEL_LEVELS_FROM_LOCAL, plan.layout.levels) + 1):
        step = 2**level
        grid = level_grid(plan, level)
        target = plan.layout.level_shape(level)
        shape_zyx = (plan.grid.volume_shape[0], target[-2], target[-1])
        for shard in grid.blocks():
            roi = shard.write_roi(shape_zyx, grid.tile)
            read_stop = (
                roi.stop[0],
                *(min(step * r, n) for r, n in zip(roi.stop[1:], plan.grid.volume_shape[1:])),
            )
            under = plan.grid.block_ids_in(
                (roi.start[0], step * roi.start[1], step * roi.start[2]), read_stop
            )
            shards.append(LabelShard(f"pyramid {prefix}s{level}", shard.block_id, level, roi, tuple(under)))
    return shards


def label_level_job(plan: RunPlan, shard: LabelShard, mapping_of: MappingOf, dtype: str) -> Job:
    assert plan.label_rule is not None
    task = LabelLevelTask(
        block_id=shard.block_id,
        stage=shard.stage,
        target=f"labels/{plan.request.config.labels.name}/s{shard.level}",
        level=shard.level,
        roi=shard.roi,
        volume_shape=plan.grid.volume_shape,
        tile=plan.grid.tile,
        blocks=tuple((plan.blocks[b], mapping_of(b)) for b in shard.under),
        dtype=dtype,
        output_url=plan.output_url,
        subsampled=shard.level <= plan.label_rule.scratch_levels,
    )
    return Job(
        shard.stage, shard.block_id, label_level_block, task, follow_up=True, precedence=LABELS_WRITTEN
    )


def halved_label_levels(plan: RunPlan) -> list[Job]:
    """The label pyramid's levels below those from the local labels: every second voxel of the level above."""
    prefix = f"labels/{plan.request.config.labels.name}/"
    return pyramid_jobs(plan, prefix, "nearest", "relabel", first=LABEL_LEVELS_FROM_LOCAL + 1)


def pyramid_jobs(
    plan: RunPlan, prefix: str, method: str, full_resolution_stage: str, first: int = 1
) -> list[Job]:
    """Every level's shards from ``first`` on, each needing the shards (or, under level 1, the blocks)
    it downsamples."""
    layout = plan.layout
    planes = plan.volume.shape_zyx[0]
    jobs = []
    for level in range(first, layout.levels + 1):
        source = layout.level_shape(level - 1)
        target = layout.level_shape(level)
        shape_zyx = (planes, target[-2], target[-1])
        grid = level_grid(plan, level)
        below = (
            (full_resolution_stage, plan.grid)
            if level == 1
            else (f"pyramid {prefix}s{level - 1}", level_grid(plan, level - 1))
        )
        stage = f"pyramid {prefix}s{level}"
        for block in grid.blocks():
            roi = block.write_roi(shape_zyx, grid.tile)
            read_start = (roi.start[0], 2 * roi.start[1], 2 * roi.start[2])
            read_stop = (roi.stop[0], min(2 * roi.stop[1], source[-2]), min(2 * roi.stop[2], source[-1]))
            task = PyramidTask(
                block_id=block.block_id,
                stage=stage,
                source=f"{prefix}s{level - 1}",
                target=f"{prefix}s{level}",
                method=method,
                roi=roi,
                source_shape=(planes, source[-2], source[-1]),
                output_url=plan.output_url,
            )
            needs = tuple((below[0], b) for b in below[1].block_ids_in(read_start, read_stop))
            jobs.append(Job(stage, block.block_id, pyramid_block, task, needs=needs, follow_up=True))
    return jobs


def label_output_stages(plan: RunPlan) -> list[str]:
    """The stages that write the labels' arrays: relabel and each level of the label pyramid."""
    prefix = f"labels/{plan.request.config.labels.name}/"
    return ["relabel", *(f"pyramid {prefix}s{level}" for level in range(1, plan.layout.levels + 1))]


def level_grid(plan: RunPlan, level: int) -> BlockGrid:
    """Blocks of one shard each at a pyramid level: levels do not align with tiles."""
    layout = plan.layout
    target = layout.level_shape(level)
    shape_zyx = (plan.volume.shape_zyx[0], target[-2], target[-1])
    return BlockGrid(
        shape_zyx, layout.tile * layout.shard_tiles, (1, 1), plan.grid.block_planes, plan.grid.plane_period
    )
