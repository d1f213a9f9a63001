"""One device's forward passes, fed by every task of a process.

Dask runs several block tasks in a worker at once. Each hands groups of
windows to the process's :class:`DeviceBatcher` and waits; the batcher's one
thread cuts each group into batches of exactly ``batch_size`` windows (the
last zero-padded) and runs them in arrival order. A batch never holds windows
of two groups: on a GPU, cuDNN's bf16 and fp16 convolutions give a window
different bits at another position in its batch or beside other windows
(measured on an H100, docs/benchmarks.md), so which windows share a batch,
and where, must follow from the tiling alone, never from timing.

On CUDA the batches go through pinned host buffers with non-blocking copies,
two batches in flight: while the device computes one, the thread fills the
next, and the tasks read, normalise, write and label their blocks beside it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import torch

from pipeline.model import UNet

Forward = Callable[[torch.Tensor], torch.Tensor]


def forward_probabilities(forward: Forward, inputs: torch.Tensor, classes: slice) -> torch.Tensor:
    """Softmax probabilities (float32, on the inputs' device) of the ``classes`` channels of one batch."""
    logits = forward(inputs).float()
    n_classes = len(range(logits.shape[1])[classes])
    out = torch.empty((logits.shape[0], n_classes, *logits.shape[2:]), device=logits.device)
    for k in range(logits.shape[0]):
        # one window at a time: softmax kernels split work by tensor size, and a
        # different split can change the last bit
        out[k] = torch.softmax(logits[k : k + 1], dim=1)[0, classes]
    return out


class Windows:
    """A group's (N, C, S, S) input windows, each cut from a padded plane only when its batch is filled.

    ``plane`` is (C, H, W) float32 and ``origins`` the windows' top-left
    corners in it; the windows are never stacked into one array of their
    own (a copy of 2.2x the plane's bytes at the paper's tiling). A stack of
    windows is the plane-less case.
    """

    def __init__(
        self,
        plane: npt.NDArray[np.float32] | None,
        origins: list[tuple[int, int]],
        size: int,
        stacked: npt.NDArray[np.float32] | None = None,
    ) -> None:
        self.plane, self.origins, self.size, self.stacked = plane, origins, size, stacked

    @classmethod
    def of_stack(cls, windows: npt.NDArray[np.float32]) -> Windows:
        return cls(None, [], windows.shape[-1], windows)

    def __len__(self) -> int:
        return len(self.stacked) if self.stacked is not None else len(self.origins)

    def copy_into(self, destination: npt.NDArray[np.float32], start: int, stop: int) -> None:
        """Windows start:stop into ``destination[: stop - start]``."""
        if self.stacked is not None:
            destination[: stop - start] = self.stacked[start:stop]
            return
        assert self.plane is not None
        size = self.size
        for k, (top, left) in enumerate(self.origins[start:stop]):
            destination[k] = self.plane[:, top : top + size, left : left + size]


class Pending:
    """Windows handed to a batcher; :meth:`result` waits for their probabilities."""

    def __init__(self, windows: Windows, result: npt.NDArray[np.float32], *, counted: bool = True) -> None:
        self.windows = windows
        self.counted = counted  # in the batcher's statistics (a warm-up batch is not)
        self.taken = 0  # windows put into batches so far
        self.left = len(windows)  # windows whose probabilities are not back yet
        self._result = result
        self._done = threading.Event()
        self._error: BaseException | None = None
        if not self.left:
            self._done.set()

    def result(self) -> npt.NDArray[np.float32]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result

    def deliver(self, start: int, values: npt.NDArray[np.float32]) -> None:
        self._result[start : start + len(values)] = values
        self.left -= len(values)
        if self.left == 0:
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._done.set()

    @property
    def failed(self) -> bool:
        return self._error is not None


class _Clock:
    """Points in one batch's life: the host clock on CPU, device events on CUDA (read once it is done).

    Waiting on a CUDA event sleeps (a blocking event) instead of spinning: CUDA
    spins by default while a process has fewer contexts than the host has
    cores, and a batcher that spins while its batch computes holds a core the
    blocks' reading, labelling and writing need (on an H100 host, 8 workers'
    batcher threads used 69 CPU-s while their batches computed for 67 s).
    """

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.points: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True, blocking=True)  # type: ignore[no-untyped-call]
            event.record()
            self.points.append(event)
        else:
            self.points.append(time.perf_counter())

    def wait(self) -> None:
        if self.cuda and self.points:
            self.points[-1].synchronize()

    def spans(self) -> list[float]:
        """Seconds between consecutive marks."""
        pairs = zip(self.points, self.points[1:])
        if self.cuda:
            return [start.elapsed_time(stop) / 1000 for start, stop in pairs]
        return [stop - start for start, stop in pairs]


STAGES = ("h2d", "compute", "d2h")  # the spans of a batch's clock, in order
Piece = tuple[Pending, int, int]  # windows start:stop of one group


@dataclass
class _Slot:
    """Host buffers of one batch in flight, and which windows it holds."""

    inputs: torch.Tensor  # (B, C, S, S) float32, pinned on CUDA
    outputs: torch.Tensor  # (B, k, s, s) float32, pinned on CUDA
    clock: _Clock
    piece: Piece | None = None  # the windows it holds: (group, start, stop)


class DeviceBatcher:
    """Runs every forward pass of one process on the model's device, in batches of ``batch_size``.

    ``classes``: which softmax channels come back (``slice(1, None)``: all but
    background, for the foreground probability). ``compiled``: run
    ``torch.compile(model)`` (compiled by the first batch; every batch has
    the same shape, so once). ``batches_in_flight``: host buffer pairs
    (default 2 on CUDA, where launches return before the device is done;
    1 on CPU). Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        model: UNet,
        *,
        batch_size: int,
        channels_last: bool = False,
        compiled: bool = False,
        classes: slice = slice(None),
        batches_in_flight: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parameter = next(model.parameters())
        self.model = model
        self.batch_size = batch_size
        self.channels = model.config.in_channels
        self.classes = classes
        self.device = parameter.device
        self._dtype = parameter.dtype
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._forward: Forward = torch.compile(model, dynamic=False) if compiled else model
        self._n_classes = len(range(model.config.n_classes)[classes])
        self._in_flight = batches_in_flight or (2 if self.device.type == "cuda" else 1)
        self._queue: deque[Pending] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._slots: list[_Slot] = []
        # a batch was queued: the device (and, compiled, the model) is warm after it
        self._started = False
        self.statistics: dict[str, float] = {}  # batches, windows, padding, seconds per step: running totals
        self._thread = threading.Thread(target=self._serve, name="unet-device-batcher", daemon=True)
        self._thread.start()

    def submit(self, windows: npt.NDArray[Any]) -> Pending:
        """Queue a group of (N, C, S, S) windows; the result is (N, k, S - 2*halo, S - 2*halo) float32.

        The group runs as ceil(N / batch_size) batches of its own windows, in order.
        """
        if windows.ndim != 4 or windows.shape[1] != self.channels:
            raise ValueError(f"windows must be (N, {self.channels}, S, S), got shape {windows.shape}")
        return self._queue_group(Windows.of_stack(np.asarray(windows, dtype=np.float32)))

    def submit_cut(
        self, plane: npt.NDArray[np.float32], origins: list[tuple[int, int]], size: int
    ) -> Pending:
        """Queue the (C, size, size) windows of a float32 (C, H, W) ``plane`` at ``origins`` (top, left), in
        that order: the same as :meth:`submit` of their stack, without making it."""
        if plane.ndim != 3 or plane.shape[0] != self.channels or plane.dtype != np.float32:
            raise ValueError(
                f"plane must be float32 ({self.channels}, H, W), got {plane.dtype} {plane.shape}"
            )
        height, width = plane.shape[1:]
        if any(not (0 <= top <= height - size and 0 <= left <= width - size) for top, left in origins):
            raise ValueError(f"a {size}-pixel window at one of {origins} leaves the {height} x {width} plane")
        return self._queue_group(Windows(plane, list(origins), size))

    def warm_up(self, window: int) -> None:
        """One batch of zeros through the network unless a batch was queued already, left out of the
        statistics: on a GPU, cuDNN's start (and, compiled, the compile) happen here rather than in the
        first block. The network holds no state, so later batches give the same bits either way."""
        with self._ready:
            if self._started:
                return
        zeros = np.zeros((self.batch_size, self.channels, window, window), np.float32)
        self._queue_group(Windows.of_stack(zeros), counted=False).result()

    def _queue_group(self, windows: Windows, *, counted: bool = True) -> Pending:
        out_size = self.model.geometry.output_size(windows.size)
        result = np.empty((len(windows), self._n_classes, out_size, out_size), np.float32)
        pending = Pending(windows, result, counted=counted)
        if not len(windows):
            return pending
        with self._ready:
            if self._closed:
                raise RuntimeError("the device batcher is closed")
            self._started = True
            self._queue.append(pending)
            self._ready.notify()
        return pending

    def predict(self, windows: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return self.submit(windows).result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _serve(self) -> None:
        try:
            while (piece := self._next_batch()) is not None:
                slot = self._free_slot(piece[0].windows.size)
                try:
                    self._launch(slot, piece)
                    if self._in_flight == 1:
                        self._finish(slot)
                except BaseException as error:  # noqa: BLE001 - handed to the waiting task
                    piece[0].fail(error)
                    slot.piece = None
        finally:
            self._finish_all()
            with self._ready:
                self._closed = True
                for pending in self._queue:
                    pending.fail(RuntimeError("the device batcher stopped"))
                self._queue.clear()

    def _next_batch(self) -> Piece | None:
        """The next ``batch_size`` windows of the oldest group (None once closed and drained).

        While nothing is queued, what is in flight is handed back first.
        """
        with self._ready:
            while True:
                while self._queue and self._queue[0].failed:
                    self._queue.popleft()
                if self._queue:
                    pending = self._queue[0]
                    take = min(self.batch_size, len(pending.windows) - pending.taken)
                    pending.taken += take
                    if pending.taken == len(pending.windows):
                        self._queue.popleft()
                    return pending, pending.taken - take, pending.taken
                if self._closed:
                    return None
                if any(slot.piece for slot in self._slots):
                    self._ready.release()
                    try:
                        self._finish_all()
                    finally:
                        self._ready.acquire()
                else:
                    self._ready.wait()

    def _free_slot(self, window: int) -> _Slot:
        """Host buffers not in use: a new pair while fewer than ``batches_in_flight`` exist, else the oldest."""
        if len(self._slots) < self._in_flight:
            self._slots.append(self._new_slot(window))
        slot = self._slots.pop(0)
        self._finish(slot)
        if slot.inputs.shape[-1] != window:
            slot = self._new_slot(window)
        self._slots.append(slot)
        return slot

    def _new_slot(self, window: int) -> _Slot:
        cuda = self.device.type == "cuda"
        out_size = self.model.geometry.output_size(window)
        inputs = torch.zeros((self.batch_size, self.channels, window, window), pin_memory=cuda)
        outputs = torch.zeros((self.batch_size, self._n_classes, out_size, out_size), pin_memory=cuda)
        return _Slot(inputs, outputs, _Clock(cuda))

    def _launch(self, slot: _Slot, piece: Piece) -> None:
        started = time.perf_counter()
        pending, start, stop = piece
        host = slot.inputs.numpy()
        pending.windows.copy_into(host, start, stop)
        host[stop - start :] = 0
        slot.piece = piece
        if pending.counted:
            self._count("fill_seconds", time.perf_counter() - started)
            self._count("batches", 1)
            self._count("windows", stop - start)
            self._count("padding_windows", self.batch_size - (stop - start))
        cuda = self.device.type == "cuda"
        slot.clock = _Clock(cuda)
        with torch.inference_mode():
            slot.clock.mark()
            inputs = slot.inputs.to(self.device, non_blocking=cuda).to(
                dtype=self._dtype, memory_format=self._memory_format
            )
            slot.clock.mark()
            probabilities = forward_probabilities(self._forward, inputs, self.classes)
            slot.clock.mark()
            slot.outputs.copy_(probabilities, non_blocking=cuda)
            slot.clock.mark()

    def _finish(self, slot: _Slot) -> None:
        """Wait for the slot's batch and hand its windows' probabilities to their task."""
        if slot.piece is None:
            return
        (pending, start, stop), slot.piece = slot.piece, None
        try:
            slot.clock.wait()
        except BaseException as error:  # noqa: BLE001 - handed to the waiting task
            pending.fail(error)
            return
        started = time.perf_counter()
        pending.deliver(start, slot.outputs.numpy()[: stop - start])
        if pending.counted:
            for stage, seconds in zip(STAGES, slot.clock.spans(), strict=True):
                self._count(f"{stage}_seconds", seconds)
            self._count("deliver_seconds", time.perf_counter() - started)

    def _count(self, name: str, value: float) -> None:
        self.statistics[name] = self.statistics.get(name, 0) + value

    def _finish_all(self) -> None:
        for slot in self._slots:
            self._finish(slot)
