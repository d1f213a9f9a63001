"""``segment-volume``: one acquisition -> one output store, through ``pipeline.run.segment``.

Each attempt looks at the output first: complete with this model and config
-> nothing to do; interrupted or failed with the same model and config ->
resume (so a Prefect retry continues where the last attempt stopped);
otherwise segment from scratch. Ends with a preview picture of the result
as an image artifact and ``preview.png`` inside the output.
"""

from __future__ import annotations

import base64
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_image_artifact

from flows.prefect_context import attempt_run_id, flow_run_fields, pipeline_logs_to, quiet_dask
from pipeline.checkpoint import read_checkpoint_info
from pipeline.config import load_config
from pipeline.device_turn import DeviceTurn
from pipeline.locations import join, write_whole
from pipeline.lock import OutputLockedError
from pipeline.outputs import decide, read_output_status
from pipeline.picture import png_bytes
from pipeline.plan import SegmentRequest
from pipeline.preview import render_preview
from pipeline.run import segment

PREVIEW_NAME = "preview.png"
# set by a nightly run around each acquisition's subflow: its turn at the shared cluster's devices
DEVICE_TURN: ContextVar[DeviceTurn | None] = ContextVar("device_turn", default=None)


@flow(name="segment-volume", flow_run_name="segment-{acquisition}", persist_result=False)
def segment_volume(
    acquisition: str,
    input_url: str,
    output_url: str,
    model: str,
    config: str | None = None,
    dask_address: str | None = None,
    preview_max_pixels: int = 768,
) -> dict[str, Any]:
    """Segment ``input_url`` into ``output_url`` (resuming an interrupted output); returns the run record.

    ``dask_address``: a running scheduler to use (the nightly flow's cluster);
    otherwise the config's ``cluster`` section decides.
    """
    logger = get_run_logger()
    overrides = {"cluster.address": dask_address} if dask_address else {}
    run_config = load_config(Path(config) if config else None, overrides)
    checkpoint = read_checkpoint_info(model)
    decision = decide(read_output_status(output_url), checkpoint.sha256, run_config)
    logger.info("%s: %s", acquisition, decision.why)
    if decision.action == "skip":
        status = read_output_status(output_url)
        assert status.last_run is not None
        return status.last_run
    if decision.action == "wait":
        raise OutputLockedError(f"{output_url}: {decision.why}")
    with pipeline_logs_to(logger), quiet_dask():
        record = segment(
            SegmentRequest(
                input_url=input_url,
                output_url=output_url,
                checkpoint_path=Path(model),
                config=run_config,
                overwrite=decision.action == "overwrite",
                resume=decision.action == "resume",
                run_id=attempt_run_id(),
                show_progress=False,
                prefect=flow_run_fields(),
            ),
            turn=DEVICE_TURN.get(),
        )
    publish_preview(acquisition, output_url, preview_max_pixels)
    return record


def publish_preview(acquisition: str, output_url: str, max_pixels: int) -> None:
    """``preview.png`` in the output, and the same picture as this flow run's image artifact."""
    picture = png_bytes(render_preview(output_url, max_pixels))
    write_whole(join(output_url, PREVIEW_NAME), picture)
    create_image_artifact(
        image_url="data:image/png;base64," + base64.b64encode(picture).decode(),
        key=artifact_key("preview", acquisition),
        description=f"{acquisition}: middle plane of the input with the label outlines ({output_url})",
    )


def artifact_key(prefix: str, name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return f"{prefix}-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unnamed")
