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
    started = time.perf_counter()
    done = {"blocks": 0, "pixels": 0}
    console = Console(stderr=True)
    bar = enabled and console.is_terminal
    last_line = {"time": started, "tenth": 0}

    def heartbeat() -> None:
        elapsed = time.perf_counter() - started
        tenth = (
            done["blocks"] * 10 // max(total_blocks, 1) if total_blocks >= 50 else 0
        )  # small stages: by time
        if tenth == last_line["tenth"] and time.perf_counter() - last_line["time"] < HEARTBEAT_SECONDS:
            return
        last_line.update(time=time.perf_counter(), tenth=tenth)
        remaining = elapsed / done["blocks"] * (total_blocks - done["blocks"])
        rate = f", {done['pixels'] / 1e6 / max(elapsed, 1e-9):.2f} Mpix/s" if done["pixels"] else ""
        log.info(
            "%s: %d/%d %s%s, ETA %.0f s", description, done["blocks"], total_blocks, unit, rate, remaining
        )

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
        task = progress.add_task(description, total=total_blocks, pixels=0)

        def advance(pixels: int) -> None:
            done["blocks"] += 1
            done["pixels"] += pixels
            progress.update(task, advance=1, pixels=done["pixels"])
            if not bar:
                heartbeat()

        yield advance
    seconds = time.perf_counter() - started
    log.info(
        "%s: %d/%d %s, %.1f Mpix in %.1f s (%.2f Mpix/s)",
        description,
        done["blocks"],
        total_blocks,
        unit,
        done["pixels"] / 1e6,
        seconds,
        done["pixels"] / 1e6 / seconds if seconds > 0 else 0.0,
    )
