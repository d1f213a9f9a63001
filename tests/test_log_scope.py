"""Scoped handlers of the pipeline log: each run's lines to its own log, whatever runs beside it."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from contextvars import copy_context

from pipeline.log_scope import log_scope

log = logging.getLogger("pipeline.test")


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def in_thread(target: object, *, with_context: bool) -> None:
    context = copy_context()
    thread = threading.Thread(target=(lambda: context.run(target)) if with_context else target)  # type: ignore[arg-type]
    thread.start()
    thread.join()


def test_a_scope_takes_its_own_context_s_records_only() -> None:
    first, second = Kept(), Kept()
    with log_scope(first):
        log.info("first run")
        with ExitStack() as other:
            # the second run, in its own thread and context
            entered = threading.Event()
            done = threading.Event()

            def second_run() -> None:
                with log_scope(second):
                    log.info("second run")
                    entered.set()
                    done.wait(10)

            thread = threading.Thread(target=second_run)
            thread.start()
            other.callback(thread.join)
            other.callback(done.set)
            assert entered.wait(10)
            log.info("first run again")
            in_thread(lambda: log.info("a thread the first run started with its context"), with_context=True)
            in_thread(lambda: log.info("a thread without it"), with_context=False)
    assert first.messages == [
        "first run",
        "first run again",
        "a thread the first run started with its context",
    ]
    assert second.messages == ["second run"]


def test_the_logger_is_restored_when_the_last_scope_closes_in_any_order() -> None:
    package = logging.getLogger("pipeline")
    package.setLevel(logging.WARNING)
    package.propagate = True
    try:
        quiet, plain = Kept(), Kept()
        outer = ExitStack()
        outer.enter_context(log_scope(quiet, keep_from_root=True))
        inner = ExitStack()
        inner.enter_context(log_scope(plain))
        assert (package.level, package.propagate) == (logging.INFO, False)
        outer.close()  # the first scope closes while the other is open
        assert (package.level, package.propagate) == (logging.INFO, True)
        inner.close()
        assert (package.level, package.propagate) == (logging.WARNING, True)
        assert quiet not in package.handlers and plain not in package.handlers
    finally:
        package.setLevel(logging.NOTSET)
