"""Handlers of the ``pipeline`` log that see one run's records, when several runs share a process.

A nightly run segments the next acquisition while the one before finishes,
in another thread: each run's log file and flow-run log must get its own
records only. A scope marks the context it is entered in (the thread, and
contexts copied from it); its handler takes the records emitted in a
context that carries its mark, nothing else (a run's own threads that log
must start in a copy of its context). The logger's level and propagation
are set while any scope is open and restored when the last one closes.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

PACKAGE = "pipeline"

_MARKS: ContextVar[frozenset[int]] = ContextVar("pipeline_log_scopes", default=frozenset())
_NUMBERS = itertools.count(1)
_LOCK = threading.Lock()
_OPEN: dict[int, bool] = {}  # each open scope: whether it keeps the records from the root logger
_SAVED: list[tuple[int, bool, int]] = []  # the package logger's level, propagation, effective level before


class _InScope(logging.Filter):
    def __init__(self, mark: int) -> None:
        super().__init__()
        self.mark = mark

    def filter(self, record: logging.LogRecord) -> bool:
        return self.mark in _MARKS.get()  # the emitting context's marks: filters run in its thread


@contextmanager
def log_scope(handler: logging.Handler, *, keep_from_root: bool = False) -> Iterator[None]:
    """``handler`` on the ``pipeline`` logger, for this context's records, while the block lasts.

    The logger passes INFO and up while any scope is open. ``keep_from_root``: the records do
    not also reach the root logger's handlers (the handler shows them on the console already).
    """
    mark = next(_NUMBERS)
    package = logging.getLogger(PACKAGE)
    handler.addFilter(_InScope(mark))
    token = _MARKS.set(_MARKS.get() | {mark})
    with _LOCK:
        if not _OPEN:
            _SAVED[:] = [(package.level, package.propagate, package.getEffectiveLevel())]
        _OPEN[mark] = keep_from_root
        _configure(package)
        package.addHandler(handler)
    try:
        yield
    finally:
        with _LOCK:
            package.removeHandler(handler)
            del _OPEN[mark]
            _configure(package)
        _MARKS.reset(token)


def _configure(package: logging.Logger) -> None:
    level, propagate, effective = _SAVED[0]
    if not _OPEN:
        package.setLevel(level)
        package.propagate = propagate
        return
    package.setLevel(min(effective, logging.INFO))
    package.propagate = propagate and not any(_OPEN.values())
