"""What Prefect knows about the current flow run, for the run record and the logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_client
from prefect.runtime import deployment, flow_run

from pipeline.log_scope import log_scope


def flow_run_fields() -> dict[str, str | int | None]:
    """Flow-run id and name, flow version, parent and root runs, deployment (a subflow: its parent's)."""
    deployment_id = deployment.id or flow_run.parent_deployment_id
    deployment_name = deployment.name
    if deployment_name is None and deployment_id is not None:
        with get_client(sync_client=True) as client:
            deployment_name = client.read_deployment(deployment_id).name
    return {
        "flow_run_id": flow_run.id,
        "flow_run_name": flow_run.name,
        "flow_name": flow_run.flow_name,
        "flow_version": flow_run.flow_version,
        "attempt": flow_run.run_count,
        "parent_flow_run_id": flow_run.parent_flow_run_id,
        "root_flow_run_id": flow_run.root_flow_run_id,
        "deployment_id": None if deployment_id is None else str(deployment_id),
        "deployment_name": deployment_name,
        "ui_url": flow_run.ui_url,
    }


def attempt_run_id() -> str:
    """The flow-run id, suffixed for retries: every run record of an output has its own id."""
    attempt = flow_run.run_count
    run_id = str(flow_run.id)
    return run_id if attempt <= 1 else f"{run_id}-attempt-{attempt}"


class _ToRunLogger(logging.Handler):
    def __init__(self, run_logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        super().__init__(logging.INFO)
        self._run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        self._run_logger.log(record.levelno, "%s", record.getMessage())


@contextmanager
def pipeline_logs_to(run_logger: logging.Logger | logging.LoggerAdapter[Any]) -> Iterator[None]:
    """This flow run's pipeline log (its driver's records) in the flow run's log, at INFO; the run
    logger prints to the console already, so the records stay from the root logger meanwhile."""
    with log_scope(_ToRunLogger(run_logger), keep_from_root=True):
        yield


@contextmanager
def quiet_dask() -> Iterator[None]:
    """Dask's own INFO chatter (workers starting and stopping) stays out of the flow's log."""
    logger = logging.getLogger("distributed")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)
