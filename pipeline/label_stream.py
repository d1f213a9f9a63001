"""The label merge one slab of blocks at a time, so relabel can start while the network still runs.

:func:`pipeline.labels.merge_labels` numbers objects once every block is labelled: the run's relabel
pass then follows the last block with the device idle (on an H100 host, 4.4 s after 18 s of predict).
Here the slabs of blocks (the blocks of one Z position of the grid) join in order, and an object's
ID is settled as soon as nothing can change it:

- contacts join blocks that share a face, edge or corner, so an object none of whose labels lies
  in the newest slab is complete (*closed*); one that has is *open* (it may go on into the next);
- IDs follow the first voxel in raster order, and the first voxel of anything still to come (an
  open object, grown or joined, or one of a later slab) is at or after the first voxel of the
  earliest open object: closed objects before that point take the next IDs in order.

A block's mapping is final once every one of its labels has its ID (or 0, for an object below the
minimum size); the IDs are exactly those of :func:`merge_labels` (tested). The working set is the
open objects and the closed ones waiting for an earlier open one: about two slabs of labels,
unless two objects reach over many slabs and hold back every object after the second's first
voxel (benchmarks/labels_merge_memory.py --slab-blocks: 4 MiB for 4 million local labels). Then
every block waits for the last slab, and so does its relabel; a slab's merge still costs only its
own labels (benchmarks/label_merge_hold_back.py: about 1 ms a slab of 20,000 labels at any depth).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import scipy.sparse
import scipy.sparse.csgraph

from pipeline.labels import BlockLabels

Int64Array = npt.NDArray[np.int64]
NO_VOXEL = np.iinfo(np.int64).max


class StreamingMerge:
    """Slabs of blocks in, block mappings out, as they become final.

    ``blocks_per_slab``: blocks of one Z position (block ids are raster order, Z first).
    ``joins_next(k)``: whether labels of slab k can touch slab k+1 (not across timepoints, nor per
    plane). Call :meth:`add_slab` for slabs 0, 1, ... in order.
    """

    def __init__(
        self, slabs: int, blocks_per_slab: int, joins_next: Callable[[int], bool], min_size: int = 0
    ) -> None:
        self.slabs, self.blocks_per_slab = slabs, blocks_per_slab
        self._joins_next, self._min_size = joins_next, max(min_size, 1)
        self.next_slab = 0
        self.objects = 0  # IDs given so far
        self.local_labels = 0
        self._starts = np.zeros(slabs * blocks_per_slab, np.int64)  # global index of each block's label 1
        self._blocks_in = 0
        self._ids: dict[int, npt.NDArray[np.uint64]] = {}  # block id -> mapping (index = local label)
        self._unresolved: dict[int, int] = {}  # block id -> labels without an ID yet
        self._ready: list[int] = []
        # open objects: first voxel and size; their labels (global index) and which object
        self._open_first: Int64Array = np.empty(0, np.int64)
        self._open_size: Int64Array = np.empty(0, np.int64)
        self._open_id: npt.NDArray[np.uint64] = np.empty(0, np.uint64)  # the earliest may have its ID already
        self._open_labels: Int64Array = np.empty(0, np.int64)
        self._open_of_label: Int64Array = np.empty(0, np.int64)
        self._previous_open: Int64Array = np.empty(0, np.int64)  # open object of each label of the last slab
        self._previous_start = 0
        self._waiting = Waiting()  # closed objects waiting for an earlier open one to close

    @property
    def finished(self) -> bool:
        return self.next_slab == self.slabs

    def block_mapping(self, block_id: int) -> npt.NDArray[np.uint64]:
        """The final lookup table of a block listed by :meth:`add_slab`: index local label, value ID."""
        return self._ids[block_id]

    def forget(self, block_id: int) -> None:
        """Drop a block's final table once every job that needs it has it."""
        del self._ids[block_id]

    def add_slab(self, summaries: list[BlockLabels], contacts: list[Int64Array]) -> list[int]:
        """Slab ``next_slab``: its blocks' summaries and contact pairs, in block order. Returns the
        blocks (of this or earlier slabs) whose mappings became final, in block order."""
        slab = self.next_slab
        if slab >= self.slabs:
            raise ValueError(f"all {self.slabs} slabs were added")
        first_block = slab * self.blocks_per_slab
        if len(summaries) != self.blocks_per_slab or len(contacts) != self.blocks_per_slab:
            raise ValueError(f"slab {slab} has {self.blocks_per_slab} blocks, got {len(summaries)}")
        slab_start = self.local_labels
        for offset, summary in enumerate(summaries):
            block = first_block + offset
            self._starts[block] = self.local_labels
            self._blocks_in = block + 1
            self._ids[block] = np.zeros(summary.count + 1, np.uint64)
            self._unresolved[block] = summary.count
            self.local_labels += summary.count
        new = self.local_labels - slab_start
        open_before = self._open_first.size
        node_u, node_w = self._contact_nodes(contacts, first_block, slab_start, open_before)
        objects, component = components(open_before + new, node_u, node_w)
        new_first = np.concatenate([np.empty(0, np.int64), *(s.first_voxel for s in summaries)])
        new_size = np.concatenate([np.empty(0, np.int64), *(s.sizes for s in summaries)])
        first = np.full(objects, NO_VOXEL, np.int64)
        np.minimum.at(first, component[:open_before], self._open_first)
        np.minimum.at(first, component[open_before:], new_first)
        size = (
            np.bincount(component[:open_before], self._open_size, objects)
            + np.bincount(component[open_before:], new_size, objects)
        ).astype(np.int64)
        number = np.zeros(objects, np.uint64)
        if self._open_id.any():
            np.maximum.at(number, component[:open_before], self._open_id)
        is_open = np.zeros(objects, bool)
        if slab + 1 < self.slabs and self._joins_next(slab):
            is_open[component[open_before:]] = True
        labels = np.concatenate([self._open_labels, np.arange(slab_start, self.local_labels, dtype=np.int64)])
        of_label = np.concatenate([component[self._open_of_label], component[open_before:]])
        if number.any():  # labels joining the object that has its ID
            numbered = number[of_label] > 0
            self._settle(labels[numbered], number[of_label[numbered]])
            labels, of_label = labels[~numbered], of_label[~numbered]
        self._close(is_open, first, size, labels, of_label, number > 0)
        open_index = np.cumsum(is_open) - 1
        self._open_first, self._open_size, self._open_id = first[is_open], size[is_open], number[is_open]
        keep = is_open[of_label]
        self._open_labels, self._open_of_label = labels[keep], open_index[of_label[keep]]
        self._previous_open, self._previous_start = open_index[component[open_before:]], slab_start
        self._number()
        self.next_slab += 1
        for offset, summary in enumerate(summaries):
            if summary.count == 0:
                self._ready.append(first_block + offset)
        ready, self._ready = sorted(self._ready), []
        return ready

    def _contact_nodes(
        self, contacts: list[Int64Array], first_block: int, slab_start: int, open_before: int
    ) -> tuple[Int64Array, Int64Array]:
        """Graph nodes of both sides of every pair: an open object for a label of the slab before,
        ``open_before`` + its index in the slab for a label of this one."""
        pairs = np.concatenate([np.empty((0, 4), np.int64), *contacts]).astype(np.int64)
        starts = self._starts[: self._blocks_in]
        sides = []
        for block, label in ((pairs[:, 0], pairs[:, 1]), (pairs[:, 2], pairs[:, 3])):
            index = starts[block] + label - 1
            earlier = block < first_block
            if earlier.any() and (
                not self._joins_next(self.next_slab - 1)
                or index[earlier].min() < self._previous_start
                or index[earlier].max() >= slab_start
            ):
                raise ValueError(f"slab {self.next_slab}: a contact reaches a block it cannot touch")
            node = np.where(earlier, 0, open_before + index - slab_start)
            node[earlier] = self._previous_open[index[earlier] - self._previous_start]
            sides.append(node)
        return sides[0], sides[1]

    def _close(
        self,
        is_open: npt.NDArray[np.bool_],
        first: Int64Array,
        size: Int64Array,
        labels: Int64Array,
        of_label: Int64Array,
        numbered: npt.NDArray[np.bool_],
    ) -> None:
        """Closed objects: below the minimum size their labels get 0, the others wait for their IDs
        (but for one numbered while it was open)."""
        closed = ~is_open & ~numbered
        kept = closed & (size >= self._min_size)
        dropped = closed & ~kept
        if dropped.any():
            self._settle(labels[dropped[of_label]], np.zeros(int(dropped[of_label].sum()), np.uint64))
        mine = kept[of_label]
        self._waiting.add(first[kept], labels[mine], (np.cumsum(kept) - 1)[of_label[mine]])

    def _number(self) -> None:
        """IDs, in first-voxel order, for every object whose rank nothing can change any more.

        That is every waiting object before the earliest open one, and that open one too (with the
        waiting ones before the second open one) once it has the minimum size: only two open objects
        can still join and change the count before them.
        """
        if not self._open_first.size:
            self._number_before(NO_VOXEL, None)
            return
        ranked = np.argsort(self._open_first, kind="stable")[:2]
        earliest = int(ranked[0])
        after = int(self._open_first[ranked[1]]) if ranked.size > 1 else NO_VOXEL
        if self._open_id[earliest]:
            self._number_before(after, None)
        elif self._open_size[earliest] >= self._min_size:
            self._number_before(after, earliest)
        else:
            self._number_before(int(self._open_first[earliest]), None)

    def _number_before(self, before: int, leader: int | None) -> None:
        """IDs for the waiting objects that start before voxel ``before``, and for open object ``leader``."""
        firsts, pieces = self._waiting.take_before(before)
        if leader is not None:
            firsts = np.append(firsts, self._open_first[leader])
        if not firsts.size:
            return
        order = np.argsort(firsts, kind="stable")
        ranks = np.empty(order.size, np.uint64)
        ranks[order] = np.arange(self.objects + 1, self.objects + 1 + order.size, dtype=np.uint64)
        self.objects += order.size
        if leader is not None:
            self._open_id[leader] = ranks[-1]
            mine = self._open_of_label == leader
            self._settle(self._open_labels[mine], np.full(int(mine.sum()), ranks[-1], np.uint64))
            self._open_labels, self._open_of_label = self._open_labels[~mine], self._open_of_label[~mine]
        for labels, of_label in pieces:  # a batch's labels ascending: settled without a sort
            self._settle(labels, ranks[of_label])

    def _settle(self, labels: Int64Array, ids: npt.NDArray[np.uint64]) -> None:
        """Final IDs of some labels (global index); blocks left with none unsettled are ready."""
        if not labels.size:
            return
        if labels.size > 1 and not (labels[1:] >= labels[:-1]).all():
            order = np.argsort(labels, kind="stable")  # a block's labels are one run of indices
            labels, ids = labels[order], ids[order]
        starts = self._starts[: self._blocks_in]
        first_block = int(np.searchsorted(starts, labels[0], side="right")) - 1
        last_block = int(np.searchsorted(starts, labels[-1], side="right")) - 1
        bounds = np.concatenate(  # each block's run of the labels, from first_block on
            [[0], np.searchsorted(labels, starts[first_block + 1 : last_block + 1]), [labels.size]]
        )
        for offset in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            b, low, high = first_block + offset, int(bounds[offset]), int(bounds[offset + 1])
            self._ids[b][labels[low:high] - starts[b] + 1] = ids[low:high]
            self._unresolved[b] -= high - low
            if self._unresolved[b] == 0:
                self._ready.append(b)


def components(nodes: int, node_u: Int64Array, node_w: Int64Array) -> tuple[int, Int64Array]:
    """Connected components of a graph of ``nodes`` nodes and edges (u, w): their count, and each node's,
    numbered in the order of their lowest node (as scipy numbers them).

    A slab brings a million labels or more and a few contact pairs: the graph search runs on the nodes
    of some edge alone, every other node is a component of its own.
    """
    if not node_u.size:
        return nodes, np.arange(nodes, dtype=np.int64)
    involved, inverse = np.unique(np.concatenate([node_u, node_w]), return_inverse=True)  # by a sort
    graph = scipy.sparse.coo_matrix(
        (np.ones(node_u.size, np.int8), (inverse[: node_u.size], inverse[node_u.size :])),
        shape=(involved.size, involved.size),
    ).tocsr()
    _, joined = scipy.sparse.csgraph.connected_components(graph, directed=False)
    lowest = np.full(int(joined.max()) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(lowest, joined, involved)
    representative = np.arange(nodes, dtype=np.int64)
    representative[involved] = lowest[joined]
    is_representative = representative == np.arange(nodes)
    number = np.cumsum(is_representative) - 1
    return int(number[-1]) + 1, number[representative]


class Waiting:
    """Closed objects waiting for their IDs, in batches (one a slab).

    Objects start waiting in the slab that closes them and are taken, earliest first, once no open
    object before them can change their rank. Where a structure through many slabs holds them back,
    millions wait: a slab's work is its own objects and those it takes, and a look at each batch's
    earliest first voxel (one array of them all, grown and scanned every slab, cost the merge
    quadratic time).
    """

    def __init__(self) -> None:
        # per batch: first voxels, labels (ascending), each label's object (index into the first voxels)
        self._batches: list[tuple[Int64Array, Int64Array, Int64Array]] = []
        self._earliest: Int64Array = np.empty(0, np.int64)  # each batch's earliest first voxel

    @property
    def objects(self) -> int:
        return sum(first.size for first, _, _ in self._batches)

    def add(self, first: Int64Array, labels: Int64Array, of_label: Int64Array) -> None:
        """Objects with first voxels ``first``, and their labels (``of_label``: each label's object)."""
        if first.size:
            self._batches.append((first, labels, of_label))
            self._earliest = np.append(self._earliest, first.min())

    def take_before(self, before: int) -> tuple[Int64Array, list[tuple[Int64Array, Int64Array]]]:
        """The objects that start before voxel ``before``, no longer waiting: their first voxels, and
        their labels batch by batch (ascending), each with its object (index into those first voxels)."""
        firsts: list[Int64Array] = []
        pieces: list[tuple[Int64Array, Int64Array]] = []
        taken = 0
        for index in np.flatnonzero(self._earliest < before).tolist():
            first, batch_labels, of_label = self._batches[index]
            due = first < before
            if due.all():
                firsts.append(first)
                pieces.append((batch_labels, of_label + taken))
                taken += first.size
                self._earliest[index] = NO_VOXEL
                continue
            now = due[of_label]
            firsts.append(first[due])
            pieces.append((batch_labels[now], (np.cumsum(due) - 1)[of_label[now]] + taken))
            taken += firsts[-1].size
            left = ~due
            first = first[left]
            self._batches[index] = (first, batch_labels[~now], (np.cumsum(left) - 1)[of_label[~now]])
            self._earliest[index] = first.min()
        if taken:
            kept = np.flatnonzero(self._earliest < NO_VOXEL)
            self._batches = [self._batches[index] for index in kept.tolist()]
            self._earliest = self._earliest[kept]
        return np.concatenate([np.empty(0, np.int64), *firsts]), pieces
