"""A run's log file inside its output: the driver's and the workers' forwarded logs of one run."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.locations import is_url, join, write_whole
from pipeline.log_scope import log_scope

log = logging.getLogger(__name__)


@contextmanager
def log_file(output_url: str, run_id: str) -> Iterator[None]:
    """Driver and forwarded worker logs of the run, in OUTPUT/logs/run-ID.log.

    For an object store the log is kept in a local file and uploaded when the run ends, however it ends.
    """
    name = f"run-{run_id}.log"
    if not is_url(output_url):
        folder = Path(output_url) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        with _logging_to(folder / name):
            yield
        return
    with tempfile.TemporaryDirectory(prefix="unet-pipeline-log-") as scratch:
        local = Path(scratch) / name
        try:
            with _logging_to(local):
                yield
        finally:
            try:
                write_whole(join(output_url, "logs", name), local.read_bytes())
            except OSError as error:
                log.error("run %s: its log could not be uploaded to %s: %s", run_id, output_url, error)


@contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """This run's ``pipeline`` logs, INFO and up, also written to ``path`` while the context lasts."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    try:
        with log_scope(handler):
            yield
    finally:
        handler.close()
