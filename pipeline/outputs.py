"""The state of output stores, and what a nightly run should do with each.

States: ``missing`` (no output yet), ``complete``, ``failed`` (the last run
failed), ``partial`` (interrupted, cancelled or killed: resumable),
``running`` (a live run holds the lock), ``foreign`` (something that is not
an output of this pipeline is in the way). Read from the root attributes
and the lock file only, never from the arrays.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.acquisitions import OUTPUT_SUFFIX, discover_acquisitions
from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.locations import filesystem, is_url, join, read_bytes, write_whole
from pipeline.lock import LockOwner, OutputLockedError, read_lock
from pipeline.omezarr import open_output, output_exists, read_state

OutputState = Literal["missing", "complete", "failed", "partial", "running", "foreign"]
Action = Literal["skip", "segment", "resume", "overwrite", "wait"]


@dataclass(frozen=True, slots=True)
class OutputStatus:
    url: str
    state: OutputState
    runs: list[dict[str, Any]]
    lock: LockOwner | None = None
    problem: str | None = None  # for ``foreign``: what is there instead

    @property
    def last_run(self) -> dict[str, Any] | None:
        return self.runs[-1] if self.runs else None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    why: str


def read_output_status(url: str) -> OutputStatus:
    if not output_exists(url):
        return OutputStatus(url, "missing", [])
    try:
        state = read_state(open_output(url))
    except InputError as error:
        return OutputStatus(url, "foreign", [], problem=str(error))
    runs: list[dict[str, Any]] = list(state["runs"])
    try:
        lock = read_lock(url)
    except OutputLockedError:
        lock = None
    if lock is not None and lock.is_alive() is not False:
        return OutputStatus(url, "running", runs, lock)
    if state["complete"]:
        return OutputStatus(url, "complete", runs, lock)
    if runs and runs[-1]["status"] == "failed":
        return OutputStatus(url, "failed", runs, lock)
    return OutputStatus(url, "partial", runs, lock)


def decide(status: OutputStatus, checkpoint_sha256: str, config: RunConfig) -> Decision:
    """Skip a complete output made with this model and config; resume a compatible partial one."""
    if status.state == "missing":
        return Decision("segment", "new acquisition")
    if status.state == "running":
        owner = status.lock
        where = f" (run {owner.run_id}, pid {owner.pid} on {owner.host})" if owner else ""
        return Decision("wait", f"another run is writing it{where}")
    if status.state == "foreign":
        return Decision("overwrite", f"the output path is taken: {status.problem}")
    if status.state == "complete":
        last = status.runs[-1]
        if last["checkpoint"]["sha256"] != checkpoint_sha256:
            return Decision(
                "overwrite",
                f"complete, but made with model {last['checkpoint']['sha256'][:12]}: re-segmenting",
            )
        if last.get("output_config_sha256") != config.output_hash():
            return Decision("overwrite", "complete, but made with another config: re-segmenting")
        return Decision("skip", "complete with this model and config")
    first = status.runs[0] if status.runs else None
    if first is None:
        return Decision("overwrite", f"{status.state} output without a run record: starting over")
    then = {key: value for key, value in first["config"].items() if key not in ("cluster", "retries")}
    if first["checkpoint"]["sha256"] == checkpoint_sha256 and then == config.resume_defining():
        return Decision("resume", f"{status.state} ({status.runs[-1]['status']}): resuming")
    return Decision("overwrite", f"{status.state}, with another model or config: starting over")


def find_outputs(output_root: Path | str) -> list[str]:
    """Output stores (``*.ome.zarr``) under ``output_root`` (a folder or a bucket prefix), as names
    relative to it; never looks inside a store or a hidden folder."""
    if is_url(str(output_root)):
        return _find_in_bucket(str(output_root))
    names = []
    for folder, subfolders, _ in os.walk(output_root):
        for sub in sorted(subfolders):
            if sub.endswith(OUTPUT_SUFFIX):
                names.append((Path(folder) / sub).relative_to(output_root).as_posix())
        subfolders[:] = sorted(
            s for s in subfolders if not s.endswith(OUTPUT_SUFFIX) and not s.startswith(".")
        )
    return sorted(names)


def _find_in_bucket(output_root: str) -> list[str]:
    """One listing per prefix: a store's own objects (thousands of chunks) are never listed."""
    fs, base = filesystem(output_root)
    base = base.rstrip("/")
    names, pending = [], [base]
    if not fs.exists(base):
        raise InputError(f"output root {output_root}: nothing is stored there")
    while pending:
        prefix = pending.pop()
        for entry in fs.ls(prefix, detail=True):
            if entry["type"] != "directory":
                continue
            path = entry["name"].rstrip("/")
            name = path.rsplit("/", 1)[-1]
            if name.endswith(OUTPUT_SUFFIX):
                names.append(path[len(base) + 1 :])
            elif not name.startswith("."):
                pending.append(path)
    return sorted(names)


NIGHTLY_SUMMARY = ".unet-pipeline/nightly.json"


def write_nightly_summary(output_root: Path | str, summary: dict[str, Any]) -> str:
    """The last nightly run over this output root (a folder or a bucket prefix): where its inputs are, and what it did."""
    location = join(str(output_root), NIGHTLY_SUMMARY)
    write_whole(location, json.dumps(summary, indent=2).encode())  # readers never see half a file
    return location


def read_nightly_summary(output_root: Path | str) -> dict[str, Any] | None:
    try:
        summary: dict[str, Any] = json.loads(read_bytes(join(str(output_root), NIGHTLY_SUMMARY)))
    except FileNotFoundError:
        return None
    return summary


@dataclass(frozen=True, slots=True)
class AcquisitionState:
    """One line of ``unet-pipeline status``."""

    name: str
    state: str  # complete | failed | partial | running | foreign | pending | waiting
    output: str
    detail: str
    objects: int | None = None
    last_run: str | None = None  # its id and end (or start) time


def root_status(output_root: Path | str, input_root: Path | str | None = None) -> list[AcquisitionState]:
    """Every output under ``output_root``, and (given the input root) the acquisitions still pending;
    either root a folder or a bucket prefix.

    The input root, marker and quiet period default to those of the last nightly run.
    """
    output_root = str(output_root)
    summary = read_nightly_summary(output_root) or {}
    if input_root is None and summary.get("input_root"):
        input_root = summary["input_root"]
    input_root = None if input_root is None else str(input_root)
    failed_before_writing = {
        row["acquisition"]: row["detail"] for row in summary.get("rows", []) if row["status"] == "failed"
    }
    states = {}
    for name in find_outputs(output_root):
        status = read_output_status(join(output_root, name))
        states[name] = _describe_output(name.removesuffix(OUTPUT_SUFFIX), status)
    if input_root is not None and (is_url(input_root) or Path(input_root).is_dir()):
        for acquisition in discover_acquisitions(
            input_root,
            quiet_seconds=float(summary.get("quiet_seconds", 900.0)),
            ready_marker=str(summary.get("ready_marker", ".ready")),
        ):
            if acquisition.output_name in states:
                continue
            output = join(output_root, acquisition.output_name)
            state, detail = ("pending" if acquisition.ready else "waiting"), acquisition.why
            if acquisition.name in failed_before_writing:  # refused before it wrote anything
                state, detail = "failed", failed_before_writing[acquisition.name]
            states[acquisition.output_name] = AcquisitionState(acquisition.name, state, output, detail)
    return [states[name] for name in sorted(states)]


def _describe_output(name: str, status: OutputStatus) -> AcquisitionState:
    run = status.last_run
    if run is None:
        detail = status.problem or "no run record"
        return AcquisitionState(name, status.state, status.url, detail)
    when = run.get("ended") or run["started"]
    last = f"{run['run_id']} at {when}"
    labels = run.get("labels")
    objects = None if labels is None else int(labels["objects"])
    blocks = run["blocks"]
    details = {
        "complete": f"{run['input']['shape']} in {run.get('wall_seconds')} s",
        "failed": f"{run['error']}",
        "partial": f"{run['status']}: {blocks['done']}/{blocks['total']} blocks predicted; the next run resumes it",
        "running": f"run {run['run_id']} since {run['started']}",
    }
    return AcquisitionState(name, status.state, status.url, details.get(status.state, ""), objects, last)
