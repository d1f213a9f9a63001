"""Runs that share one cluster take turns at its devices, in order.

A run takes its turn before its first block and gives it up once its last
block is predicted (or as it ends, however it ends). The next run's set-up
(its plan, normalisation sample, output) happens while the one before it
predicts; its blocks start as soon as that run's last block is done, and the
earlier run's later stages (contacts, the label merge, relabel, pyramids,
its record and preview) go on beside them. A nightly run's acquisitions
thus keep the GPUs busy from one to the next; each output is what its run
alone would write, whatever ran beside it.

The runs of a chain run in threads, and a signal (a cancelled flow run's
SIGTERM, Ctrl-C) reaches only the main thread: :meth:`DeviceTurn.interrupt`
passes it on, and each run raises it at its next block result (or while it
waits for its turn), leaving its output interrupted and resumable.
"""

from __future__ import annotations

import copy
import threading

POLL_SECONDS = 0.1  # how often a run waiting for its turn looks for an interruption


class _Interruption:
    """Shared by the turns of one chain: the error every run raises once it is set."""

    def __init__(self) -> None:
        self.error: BaseException | None = None


class DeviceTurn:
    """One run's turn at the cluster's devices, after ``previous``'s (None: the first)."""

    def __init__(self, previous: DeviceTurn | None = None) -> None:
        self.previous = previous
        self.taken = threading.Event()  # the run's blocks may start (or it ended before they did)
        self.released = threading.Event()  # the run's last block is done (or it ended)
        self._interruption: _Interruption = (
            previous._interruption if previous is not None else _Interruption()
        )

    def take(self) -> None:
        """Wait until the run before has predicted its last block (or ended)."""
        if self.previous is not None:
            while not self.previous.released.wait(POLL_SECONDS):
                self.raise_if_interrupted()
        self.raise_if_interrupted()
        self.taken.set()

    def release(self) -> None:
        """This run's last block is done, or the run ended: the next may start its blocks. Idempotent."""
        self.taken.set()
        self.released.set()

    def interrupt(self, error: BaseException) -> None:
        """Every run of this chain raises (a copy of) ``error`` at its next chance."""
        self._interruption.error = error

    def raise_if_interrupted(self) -> None:
        error = self._interruption.error
        if error is not None:
            raise copy.copy(error)  # each thread its own: a traceback is its thread's


def device_turns(count: int) -> list[DeviceTurn]:
    """Turns for ``count`` runs, each after the one before it."""
    turns: list[DeviceTurn] = []
    for _ in range(count):
        turns.append(DeviceTurn(turns[-1] if turns else None))
    return turns
