"""Servers the tests start as separate processes on 127.0.0.1, the way an operator would.

A Dask scheduler and workers (``dask scheduler``, ``dask worker``: the
commands docs/deploy.md gives), and an S3-compatible server (moto's).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def process(
    command: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running in its own process group, stopped (SIGTERM, then SIGKILL) on exit."""
    with log.open("wb") as output:
        child = subprocess.Popen(
            list(command), stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def wait_until(ready: object, what: str, log: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not start within {seconds} s; its log:\n{log.read_text()[-3000:]}")


@dataclass
class DaskProcesses:
    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextmanager
def dask_cluster(
    folder: Path, workers: int, env: dict[str, str] | None = None, worker_prefix: Sequence[str] = ()
) -> Iterator[DaskProcesses]:
    """``dask scheduler`` and ``workers`` separate ``dask worker`` processes (one thread each) on 127.0.0.1.

    ``worker_prefix``: a command the workers run under (e.g. ``unshare`` for a private mount namespace).
    """
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    with ExitStack() as stack:
        scheduler = stack.enter_context(
            process(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(scheduler_file),
                ],
                folder / "scheduler.log",
                env,
            )
        )
        wait_until(scheduler_file.exists, "dask scheduler", folder / "scheduler.log")
        address = json.loads(scheduler_file.read_text())["address"]
        cluster = DaskProcesses(address, scheduler)
        for index in range(workers):
            cluster.workers.append(
                stack.enter_context(start_worker(folder, address, f"w{index}", env, worker_prefix))
            )
        yield cluster


def start_worker(
    folder: Path, address: str, name: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
) -> subprocess.AbstractContextManager[subprocess.Popen[bytes]]:
    command = [
        *prefix,
        str(BIN / "dask"),
        "worker",
        address,
        "--name",
        name,
        "--nthreads",
        "1",
        "--host",
        "127.0.0.1",
        "--no-dashboard",
        "--local-directory",
        str(folder / name),
    ]
    return process(command, folder / f"{name}.log", env)


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def moto_s3_server(folder: Path) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1; yields its endpoint URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "moto.log"
    with process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log):
        wait_until(lambda: accepts_connections(port), "moto server", log)
        yield f"http://127.0.0.1:{port}"
