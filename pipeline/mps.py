"""NVIDIA's Multi-Process Service for the workers of a cluster we start: one CUDA context per GPU.

Worker processes sharing a GPU each hold a CUDA context, and a GPU runs one
context at a time, switching between them. Under MPS their work goes
through one server's context instead: on one H100, 8 workers x 2 blocks ran
the predict stage at 83 % of the model-only rate against 70 % without, in
the same call; on an H200 85 % against 78 %, the whole run 77 % against 65 %,
with the same bits (docs/benchmarks.md). The control daemon runs for the
cluster's lifetime, with a pipe folder of its own that the workers' CUDA
finds through ``CUDA_MPS_PIPE_DIRECTORY``. An operator's daemon, named by
that variable in the driver's environment, is used as it is.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pipeline.errors import InputError, PipelineError

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"
PIPE = "CUDA_MPS_PIPE_DIRECTORY"
LOG = "CUDA_MPS_LOG_DIRECTORY"
CONTROL_SECONDS = 30


@contextmanager
def cluster_mps(
    setting: bool | str, *, device: str, starts_workers: bool, gpu_shared: bool, address: str
) -> Iterator[dict[str, str]]:
    """What the workers' environment needs to run under MPS, for the duration of the `with` (empty: no MPS).

    ``setting`` is cluster.mps: true starts a daemon for the workers the run starts (``starts_workers``)
    or fails saying why not; "auto" does so where several of them share a GPU (``gpu_shared``),
    and where it cannot, says so and goes on without; false, or a device other than cuda, none.
    """
    if setting is False or device != "cuda":
        if setting is True:
            log.info("cluster.mps left aside: MPS serves CUDA devices, and this run's device is %s", device)
        yield {}
        return
    if not starts_workers:
        if setting is True:
            raise InputError(
                f"cluster.mps starts MPS for the workers of a cluster this run starts (local, cuda); "
                f"the workers of {address} run where MPS has to be started by whoever starts "
                "them (docs/deploy.md)"
            )
        yield {}
        return
    if setting == "auto" and not gpu_shared:
        yield {}
        return
    if setting == "auto" and not os.environ.get(PIPE) and shutil.which(CONTROL) is None:
        log.info("cluster.mps auto: %s is not on PATH; the workers share the GPU without MPS", CONTROL)
        yield {}
        return
    with ExitStack() as stack:
        try:
            environment = stack.enter_context(mps_daemon())
        except PipelineError as error:
            if setting is True:
                raise
            log.warning("cluster.mps auto: the workers share the GPU without MPS: %s", error)
            environment = {}
        yield environment


@contextmanager
def mps_daemon() -> Iterator[dict[str, str]]:
    """An MPS control daemon for the duration of the `with`; yields what the workers' environment needs."""
    if os.environ.get(PIPE):
        log.info("MPS: using the daemon of %s=%s", PIPE, os.environ[PIPE])
        yield {PIPE: os.environ[PIPE], **({LOG: os.environ[LOG]} if os.environ.get(LOG) else {})}
        return
    control = shutil.which(CONTROL)
    if control is None:
        raise InputError(
            f"cluster.mps is on, but {CONTROL} is not on PATH: it comes with the NVIDIA driver; "
            "install it, or set cluster.mps: false"
        )
    with tempfile.TemporaryDirectory(prefix="unet-mps-") as folder:
        environment = {PIPE: str(Path(folder, "pipe")), LOG: str(Path(folder, "log"))}
        for path in environment.values():
            Path(path).mkdir()
        started = _control(control, environment, "-d")
        if started.returncode != 0:
            raise PipelineError(
                f"cluster.mps is on, but {CONTROL} -d exited {started.returncode}: "
                f"{(started.stderr or started.stdout).strip() or 'no message'}; see docs/deploy.md"
            )
        log.info("MPS: control daemon started for the cluster's workers (%s=%s)", PIPE, environment[PIPE])
        try:
            yield environment
        finally:
            stopped = _control(control, environment, commands="quit\n")
            if stopped.returncode != 0:
                log.warning("MPS: `quit` to the control daemon exited %d", stopped.returncode)


def _control(
    control: str, environment: dict[str, str], *arguments: str, commands: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The control program with the daemon's folders: started with ``-d``, or ``commands`` on its input."""
    try:
        return subprocess.run(
            [control, *arguments],
            input=commands,
            check=False,
            env={**os.environ, **environment},
            capture_output=True,
            text=True,
            timeout=CONTROL_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([control, *arguments], -1, "", f"no answer in {CONTROL_SECONDS} s")
