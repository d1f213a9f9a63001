"""Console progress of a run's stages: blocks done/total, Mpix/s, ETA."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

log = logging.getLogger(__name__)


class ThroughputColumn(ProgressColumn):
    """Output megapixels per second so far."""

    def render(self, task: Task) -> Text:
        pixels = float(task.fields.get("pixels", 0))
        elapsed = task.elapsed or 0.0
        rate = pixels / elapsed / 1e6 if elapsed > 0 else 0.0
        return Text(f"{rate:7.2f} Mpix/s", style="progress.data.speed")


HEARTBEAT_SECONDS = 60.0


@contextmanager
def stage_progress(
    description: str, total_blocks: int, *, enabled: bool, unit: str = "blocks"
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(pixels)`` to call once per finished block (or ``unit``); logs a summary at the end.

    On a terminal a progress bar; otherwise (a nightly job's log) a line at
    every tenth of the blocks or every minute, whichever comes first.
    """
    with stages_progress({description: total_blocks}, enabled=enabled, unit=unit) as stages:
        yield lambda pixels: stages.advance(description, pixels)


class StageBars:
    """What :func:`stages_progress` yields: ``advance(stage, pixels)``, and ``add`` for stages that
    join later (a run's relabel, as the label merge numbers blocks)."""

    def __init__(self, progress: Progress, unit: str, *, log_lines: bool) -> None:
        self.progress, self.unit, self.log_lines = progress, unit, log_lines
        self.counters: dict[str, _StageCounter] = {}

    def add(self, totals: dict[str, int]) -> None:
        """New stages, or more blocks for a stage (one whose jobs join as they can be made)."""
        for stage, total in totals.items():
            counter = self.counters.get(stage)
            if counter is not None:
                counter.total += total
                self.progress.update(counter.task, total=counter.total)
                continue
            task = self.progress.add_task(stage, total=total, pixels=0)
            self.counters[stage] = _StageCounter(stage, total, self.unit, self.progress, task)

    def advance(self, stage: str, pixels: int) -> None:
        self.counters[stage].advance(pixels, log_lines=self.log_lines)


@contextmanager
def stages_progress(totals: dict[str, int], *, enabled: bool, unit: str = "blocks") -> Iterator[StageBars]:
    """Stages that run at the same time: a bar (or log lines) each."""
    console = Console(stderr=True)
    bar = enabled and console.is_terminal
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        ThroughputColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not bar,
    ) as progress:
        stages = StageBars(progress, unit, log_lines=not bar)
        stages.add(totals)
        yield stages
    for counter in stages.counters.values():
        counter.summary()


class _StageCounter:
    def __init__(self, stage: str, total: int, unit: str, progress: Progress, task: TaskID) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.progress, self.task = progress, task
        self.started = time.perf_counter()
        self.blocks = self.pixels = 0
        self.last_line, self.last_tenth = self.started, 0

    def advance(self, pixels: int, *, log_lines: bool) -> None:
        self.blocks += 1
        self.pixels += pixels
        self.progress.update(self.task, advance=1, pixels=self.pixels)
        if log_lines:
            self.heartbeat()

    def heartbeat(self) -> None:
        now = time.perf_counter()
        tenth = self.blocks * 10 // max(self.total, 1) if self.total >= 50 else 0  # small stages: by time
        if tenth == self.last_tenth and now - self.last_line < HEARTBEAT_SECONDS:
            return
        self.last_line, self.last_tenth = now, tenth
        elapsed = now - self.started
        remaining = elapsed / self.blocks * (self.total - self.blocks)
        rate = f", {self.pixels / 1e6 / max(elapsed, 1e-9):.2f} Mpix/s" if self.pixels else ""
        log.info(
            "%s: %d/%d %s%s, ETA %.0f s", self.stage, self.blocks, self.total, self.unit, rate, remaining
        )

    def summary(self) -> None:
        seconds = time.perf_counter() - self.started
        log.info(
            "%s: %d/%d %s, %.1f Mpix in %.1f s (%.2f Mpix/s)",
            self.stage,
            self.blocks,
            self.total,
            self.unit,
            self.pixels / 1e6,
            seconds,
            self.pixels / 1e6 / seconds if seconds > 0 else 0.0,
        )
