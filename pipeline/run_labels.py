"""A run's label merge, slab by slab as the blocks' labels and contacts come in, so relabel and the
label pyramid run beside the network.

The labels' dtype follows their count: uint32 up to ``labels.uint32_max_objects`` objects, uint64
beyond (always, for a limit of 0). The count is known only after the last block, so the merge goes
on in uint32, which holds the objects of any volume under 8.6 G voxels and, in practice, of larger
ones too. Should the count pass the limit, the stream stops making jobs; once the phase is over,
:func:`labels_as_uint64` drops what was written in uint32 and merges the labels again, slab by slab
from the markers, for uint64 labels. A resumed run whose earlier attempt got that far streams in
uint64 from the start.
Either way the merge runs on the driver from the blocks' small payloads (this run's reports, or the
markers of blocks an earlier attempt finished) and makes the relabel and label pyramid jobs.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.label_stream import StreamingMerge
from pipeline.labels import BlockLabels
from pipeline.markers import done_blocks, read_markers, remove_stage_markers
from pipeline.omezarr import create_labels, labels_dtype
from pipeline.plan import RunPlan
from pipeline.run_phase import Reports
from pipeline.schedule import Job, JobGraph, JobName
from pipeline.stage_jobs import (
    LabelShard,
    halved_label_levels,
    label_level_job,
    label_level_shards,
    label_output_stages,
    relabel_job,
)

READ_AHEAD = 1024  # blocks whose markers a resumed run reads at once, with no job outstanding
MADE_AHEAD = 1024  # relabel jobs made and not done: the merge waits beyond (a resumed run's catch-up)
CATCH_UP_SECONDS = 0.05  # merging per result while jobs are outstanding, beyond the first slab


def label_merge(plan: RunPlan, labelled: str, record: dict[str, Any]) -> LabelStream:
    """uint64 where asked for, or where an earlier attempt of this run found more objects than the
    limit (its labels are uint64); else uint32, up to the limit."""
    labels = plan.request.config.labels
    if labels.uint32_max_objects == 0 or labels_dtype(plan.output_url, labels.name) == "uint64":
        return LabelStream(plan, labelled, record, "uint64")
    return LabelStream(plan, labelled, record, "uint32", labels.uint32_max_objects)


def labels_as_uint64(
    plan: RunPlan, labelled: str, stream: LabelStream, record: dict[str, Any]
) -> LabelStream:
    """After ``stream`` passed its limit (every block labelled): its uint32 labels dropped, and the
    merge again, slab by slab from the markers, for uint64 labels. Its working set stays that of the
    stream, where a merge at once of more than 4.29 G labels would not fit in memory.

    The markers of the uint32 jobs go before their arrays: an attempt stopped between the two leaves
    uint32 labels without markers, which a resumed run streams again."""
    assert stream.passed_limit is not None
    stages = label_output_stages(plan)
    abandoned = {stage: record["stages"].pop(stage) for stage in stages if stage in record["stages"]}
    for stage in stages:
        remove_stage_markers(plan.output_url, stage)
    create_labels(plan.output_url, plan.layout, plan.request.config.labels.name, "uint64")
    passed = {**stream.passed_limit, "abandoned_stages": abandoned}
    return LabelStream(plan, labelled, record, "uint64", blocks_in=True, passed_before=passed)


class LabelStream:
    """The merge slab by slab: each slab joins once its blocks' labels and contacts are in; a block's
    relabel job once its mapping is final, a label pyramid shard's once all blocks under it are, and
    the halved levels' shards once the shards they read have joined. Creates the labels, of ``dtype``.

    ``limit``: the most objects the labels' dtype may hold. Once the count passes it, no more jobs
    are made (not even of the slab that passed it) and ``passed_limit`` says where. ``blocks_in``:
    every block's labels and contacts are in (markers), though not jobs of the phase.

    Where slabs are in faster than their jobs run (a resumed run catching up), the merge waits while
    more than ``MADE_AHEAD`` relabel jobs are made and not done: each holds its block's table. While
    jobs are outstanding, a call merges one slab and more only for ``CATCH_UP_SECONDS``: a resumed
    run sends its unfinished blocks first and catches up between their results (at a TB-scale
    resume, minutes of marker reads and merging with the devices idle otherwise)."""

    def __init__(
        self,
        plan: RunPlan,
        labelled: str,
        record: dict[str, Any],
        dtype: str,
        limit: int | None = None,
        blocks_in: bool = False,
        passed_before: dict[str, Any] | None = None,
    ) -> None:
        assert plan.label_rule is not None
        self.plan, self.labelled, self.record, self.dtype, self.limit = plan, labelled, record, dtype, limit
        self.passed_limit: dict[str, int] | None = None
        self.passed_before = passed_before  # a stream that passed its limit, redone here
        slabs, rows, cols = plan.grid.shape
        self.per_slab = rows * cols
        self.merge = StreamingMerge(slabs, self.per_slab, self._joins_next, plan.min_size_voxels)
        self.shards = label_level_shards(plan)
        self.missing = [len(shard.under) for shard in self.shards]  # blocks under each shard not ready
        self.shards_over: dict[int, list[int]] = {}
        for index, shard in enumerate(self.shards):
            for block in shard.under:
                self.shards_over.setdefault(block, []).append(index)
        # jobs still to be made with each block's table: its relabel and the shards over it
        self.uses = {
            block.block_id: 1 + len(self.shards_over.get(block.block_id, [])) for block in plan.blocks
        }
        self.unmet: dict[JobName, int] = {}  # halved levels' shards: join once the shards they read have
        self.waiting_on: dict[JobName, list[Job]] = {}
        for job in halved_label_levels(plan):
            self.unmet[job.name] = len(job.needs)
            for need in job.needs:
                self.waiting_on.setdefault(need, []).append(job)
        self.seconds = 0.0
        self.exhausted = False
        # the first block whose labels or contacts are not in: the next slab waits for it
        self.cursor = len(plan.blocks) if blocks_in else 0
        self.read_ahead: dict[JobName, dict[str, Any]] = {}  # payloads read from markers, not merged yet
        self.relabelled = done_blocks(plan.output_url, "relabel")  # by an earlier attempt
        create_labels(plan.output_url, plan.layout, plan.request.config.labels.name, self.dtype)

    def _joins_next(self, slab: int) -> bool:
        """Whether labels of slab ``slab`` can touch the next slab's."""
        grid = self.plan.grid
        assert self.plan.label_rule is not None
        last_plane = min((slab + 1) * grid.block_planes, grid.volume_shape[0]) - 1
        return not self.plan.label_rule.connectivity.planar and grid.plane_run(last_plane)[1] > last_plane + 1

    def more(self, graph: JobGraph, reports: Reports) -> list[Job]:
        jobs: list[Job] = []
        called = time.perf_counter()
        while (
            not self.merge.finished
            and self._slab_in(graph, blocks := self._blocks(self.merge.next_slab))
            and self._made_ahead(graph, jobs) <= MADE_AHEAD
        ):
            outstanding = graph.unfinished > 0  # their results call again
            ahead = self.per_slab if outstanding else READ_AHEAD
            summaries = [
                BlockLabels.from_arrays(p) for p in self._payloads(self.labelled, blocks, reports, ahead)
            ]
            pairs = [payload["pairs"] for payload in self._payloads("contacts", blocks, reports, ahead)]
            started = time.perf_counter()
            ready = self.merge.add_slab(summaries, pairs)
            self.seconds += time.perf_counter() - started
            for stage in (self.labelled, "contacts"):  # merged: the driver keeps no per-object data of them
                for block in blocks:
                    if block in reports.get(stage, {}):
                        reports[stage][block].payload.clear()
            if self.limit is not None and self.merge.objects > self.limit:
                self.passed_limit = {"slab": self.merge.next_slab - 1, "objects": self.merge.objects}
                self.exhausted = True
                break
            for block in ready:
                jobs.append(
                    relabel_job(
                        self.plan, self.plan.blocks[block], self.merge.block_mapping(block), self.dtype
                    )
                )
                self._used(block)
                jobs.extend(self._shards_complete(block))
            if outstanding and time.perf_counter() - called >= CATCH_UP_SECONDS:
                break
        jobs.extend(self._release_held([job.name for job in jobs]))
        if self.merge.finished and not self.exhausted:
            self.exhausted = True
            objects, local_labels = self.merge.objects, self.merge.local_labels
            _record(self.plan, self.record, objects, self.dtype, local_labels, "slab by slab", self.seconds)
            if self.passed_before is not None:
                self.record["labels"]["uint32_limit_passed"] = self.passed_before
        return jobs

    def _made_ahead(self, graph: JobGraph, made: list[Job]) -> int:
        """Relabel jobs to run, not done: in the graph, and just ``made`` (those an earlier attempt
        did will never run, and so never give the result that asks for more)."""
        times = graph.stages.get("relabel")
        in_graph = 0 if times is None else times.computed - times.finished
        return in_graph + sum(job.stage == "relabel" and job.block_id not in self.relabelled for job in made)

    def _payloads(self, stage: str, blocks: range, reports: Reports, ahead: int) -> list[dict[str, Any]]:
        """The blocks' payloads of ``stage``: from this run's reports, else from the markers of an
        earlier attempt, read together with those of the finished blocks after them, up to ``ahead``
        blocks in all."""
        reported = reports.get(stage, {})
        if any(b not in reported and (stage, b) not in self.read_ahead for b in blocks):
            to_read = [
                b
                for b in range(blocks.start, max(blocks.stop, min(self.cursor, blocks.start + ahead)))
                if b not in reported and (stage, b) not in self.read_ahead
            ]
            for block, payload in zip(
                to_read, read_markers(self.plan.output_url, stage, to_read), strict=True
            ):
                self.read_ahead[stage, block] = payload
        return [reported[b].payload if b in reported else self.read_ahead.pop((stage, b)) for b in blocks]

    def _blocks(self, slab: int) -> range:
        return range(slab * self.per_slab, (slab + 1) * self.per_slab)

    def _slab_in(self, graph: JobGraph, blocks: range) -> bool:
        """Whether every block of a slab has its labels and contacts. Called after every result: the
        cursor moves past the blocks found in, so each block is looked at about once, not once per
        result."""
        while self.cursor < blocks.stop and all(
            graph.job_finished((stage, self.cursor)) for stage in (self.labelled, "contacts")
        ):
            self.cursor += 1
        return self.cursor >= blocks.stop

    def _shards_complete(self, block: int) -> list[Job]:
        """Label pyramid shards whose last block under them is ``block``."""
        jobs = []
        for index in self.shards_over.get(block, []):
            self.missing[index] -= 1
            if self.missing[index] == 0:
                shard: LabelShard = self.shards[index]
                jobs.append(label_level_job(self.plan, shard, self.merge.block_mapping, self.dtype))
                for under in shard.under:
                    self._used(under)
        return jobs

    def _used(self, block: int) -> None:
        """One job made with the block's table; the last one lets the merge drop it."""
        self.uses[block] -= 1
        if self.uses[block] == 0:
            self.merge.forget(block)

    def _release_held(self, joined: list[JobName]) -> list[Job]:
        """The halved levels' shards whose last shard read has joined (and theirs, in turn)."""
        released: list[Job] = []
        while joined:
            name = joined.pop()
            for job in self.waiting_on.pop(name, []):
                self.unmet[job.name] -= 1
                if self.unmet[job.name] == 0:
                    released.append(job)
                    joined.append(job.name)
        return released


def _record(
    plan: RunPlan,
    record: dict[str, Any],
    objects: int,
    dtype: str,
    local_labels: int,
    merged: str,
    merge_seconds: float,
) -> None:
    assert plan.label_rule is not None
    record["labels"] = {
        "objects": objects,
        "dtype": dtype,
        "local_labels": local_labels,
        "merged": merged,
        "local_label_levels_kept": plan.label_rule.scratch_levels,  # label pyramid levels read from them
        "local_label_edges_kept": plan.label_rule.edges is not None,  # contacts read Y and X faces from them
        "min_size_voxels": plan.min_size_voxels,
        "merge_seconds": round(merge_seconds, 3),
    }
