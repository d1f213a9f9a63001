"""`unet-pipeline cluster workers ADDRESS`: several workers per GPU for a scheduler of its own.

No GPU here: CUDA_VISIBLE_DEVICES lists two that CPU torch never opens; what is checked is the
pinning, the workers' environment, the health port and the stop, with a real `dask scheduler`.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

from distributed import Client

from tests.processes import BIN, dask_cluster, free_port, process, wait_until


def test_workers_for_a_running_scheduler_are_pinned_per_gpu_and_stop_on_sigterm(tmp_path: Path) -> None:
    health = free_port()
    log = tmp_path / "workers.log"
    command = [str(BIN / "unet-pipeline"), "cluster", "workers", "--workers-per-gpu", "2", "--threads", "1"]
    with dask_cluster(tmp_path / "dask", workers=0) as bare, Client(bare.address) as client:
        launcher_command = [*command, "--health-port", str(health), bare.address]
        # a node's environment: Dask's nannies of earlier tests left their malloc settings in this
        # process's, and a variable set in the environment outranks the one the workers are given
        node = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
        with process(launcher_command, log, {**node, "CUDA_VISIBLE_DEVICES": "3,5"}) as launcher:
            wait_until(lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 4, "4 workers", log)
            seen = client.run(
                lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ.get("MALLOC_TRIM_THRESHOLD_"))
            )
            threads = {w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values()}
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/health", timeout=10) as answer:
                assert answer.read() == b"ok"
            launcher.send_signal(signal.SIGTERM)
            assert launcher.wait(timeout=60) == 0, log.read_text()[-3000:]
            wait_until(lambda: not client.scheduler_info(n_workers=-1)["workers"], "workers gone", log)
    assert sorted(gpu for gpu, _ in seen.values()) == ["3", "3", "5", "5"]
    assert {trim for _, trim in seen.values()} == {"1073741824"}  # the environment a run's workers get
    assert threads == {1}


def test_no_gpu_is_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "workers.log"
    command = [str(BIN / "unet-pipeline"), "cluster", "workers", "tcp://127.0.0.1:1"]
    with process(command, log, {**os.environ, "CUDA_VISIBLE_DEVICES": ""}) as launcher:
        assert launcher.wait(timeout=60) == 2
    assert "error: unet-pipeline cluster workers found no GPU (CUDA_VISIBLE_DEVICES='')" in log.read_text()
