"""The run record: what ran, on what, with what, and how it went.

Records are plain JSON-able dicts kept in the output's root attributes (a
list, one per run). What of the environment is recorded is an allow-list:
versions, devices and a few named variables, never secrets or the whole
environment.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline import __version__

RECORDED_PACKAGES = ("torch", "numpy", "zarr", "numcodecs", "dask", "distributed", "prefect", "safetensors")
RECORDED_VARIABLES = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_JOB_ID")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the package source, with ``-dirty`` for local changes; None outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def environment() -> dict[str, Any]:
    """Versions, devices and allow-listed variables of the driver process."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "unet_pipeline": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": versions,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,  # type: ignore[no-untyped-call]
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else ["cpu"],
        "variables": {name: os.environ[name] for name in RECORDED_VARIABLES if name in os.environ},
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def new_run_record(
    *,
    run_id: str,
    input_fingerprint: dict[str, Any],
    checkpoint: dict[str, Any],
    config: dict[str, Any],
    output_config_hash: str,
    normalization: dict[str, Any],
    blocks: int,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": "running",
        "started": now(),
        "ended": None,
        "input": input_fingerprint,
        "checkpoint": checkpoint,
        "config": config,
        "config_sha256": config_hash(config),
        "output_config_sha256": output_config_hash,
        "execution_profile": config["profile"],
        "normalization": normalization,
        "environment": environment(),
        "cluster": None,
        "blocks": {"total": blocks, "done": 0},
        "stages": {},
        "error": None,
    }
