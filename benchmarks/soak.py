"""Soak: the nightly flow N times while acquisitions keep arriving and Dask workers are killed.

Each round, new synthetic acquisitions arrive (one of them half-written: its
ready marker comes a round later), then `nightly-segmentation` runs over the
folder on a fresh local Dask cluster while a thread SIGKILLs one of its
workers every few seconds (whenever all are up; the nanny starts a new
one). After the N rounds, one run without kills finishes what is left.
Then every acquisition is segmented again on a quiet cluster and compared,
array by array, with what the nightly runs wrote; the inputs are
checksummed before and after. Run from the repository root:

    .venv/bin/python benchmarks/soak.py --runs 3

Prints the figures as a markdown table (paste it into docs/benchmarks.md
with the date and the machine) and writes soak.json into the scratch
folder. Differing arrays and changed inputs must both be 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Self

import dask
import numpy as np
import torch
import yaml
import zarr
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from prefect.testing.utilities import prefect_test_harness

from flows.nightly import nightly_segmentation
from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.model import UNet
from pipeline.normalization import Normalization
from pipeline.omezarr import open_output, read_state
from pipeline.run import SegmentRequest, segment
from pipeline.synthetic import write_synthetic_acquisition

log = logging.getLogger("soak")

RUN_CONFIG = {
    "tiling": {"tile": 36, "shard_tiles": 2, "block_tiles": [2, 2]},  # blocks of 72 x 72 px
    "profile": {"batch_size": 4},
    "output": {"pyramid_levels": 1},
    "normalization_sample": {"regions": 4},
}


class AttemptCounter(SchedulerPlugin):
    """How often the scheduler started each task: more than once means it was retried."""

    def __init__(self) -> None:
        self.starts: Counter[str] = Counter()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            self.starts[str(key)] += 1

    def retried(self) -> tuple[int, int]:
        """Tasks started more than once, and their extra starts."""
        again = [count - 1 for count in self.starts.values() if count > 1]
        return len(again), sum(again)


class WorkerKiller:
    """SIGKILLs a random worker of ``client``'s cluster every ``low``..``high`` s, when all ``workers`` are up."""

    def __init__(self, client: Client, rng: random.Random, low: float, high: float, workers: int) -> None:
        self.client, self.rng, self.low, self.high, self.workers = client, rng, low, high, workers
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(self.low, self.high)):
            pids = sorted(self.client.run(os.getpid).values())
            if len(pids) == self.workers:
                os.kill(self.rng.choice(pids), signal.SIGKILL)
                self.kills += 1


def write_site(root: Path, base_channels: int) -> dict[str, Path]:
    """Folders, a small model, the run config and the nightly settings of a facility in miniature."""
    for name in ("incoming", "segmentations", "clean"):
        (root / name).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = root / "model.safetensors"
    save_checkpoint(model, UNet(base_channels=base_channels, depth=3), normalization=Normalization())
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG))
    settings = root / "nightly.yaml"
    nightly = {
        "input_root": str(root / "incoming"),
        "output_root": str(root / "segmentations"),
        "model": str(model),
        "config": str(config),
        "quiet_seconds": 86400,
        "retries": 2,
        "retry_delay_seconds": 0,
        "preview_max_pixels": 64,
    }
    settings.write_text(yaml.safe_dump(nightly))
    return {
        "root": root,
        "incoming": root / "incoming",
        "model": model,
        "config": config,
        "settings": settings,
    }


def arrive(incoming: Path, round_index: int, count: int, shape: tuple[int, int, int], seed: int) -> None:
    """``count`` new acquisitions; the last one without its ready marker until the next round."""
    for waiting in incoming.glob("*.ome.zarr"):
        waiting.with_name(waiting.name + ".ready").touch()
    for index in range(count):
        path = incoming / f"round{round_index}-{index}.ome.zarr"
        write_synthetic_acquisition(str(path), shape, (1, 64, 64), seed=seed + 100 * round_index + index)
        if index < count - 1:
            path.with_name(path.name + ".ready").touch()


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_nightly(settings: Path) -> bool:
    """One nightly run; whether it ended Completed."""
    state = nightly_segmentation(settings=str(settings), return_state=True)
    return bool(state.is_completed())


def stored_arrays(output: Path) -> dict[str, Any]:
    """Every level of the probability and of the labels."""
    arrays = {}
    for image in ("", "labels/cells/"):
        multiscale = zarr.open_group(str(output / image), mode="r").attrs["ome"]["multiscales"][0]
        for level in multiscale["datasets"]:
            path = image + str(level["path"])
            arrays[path] = zarr.open_array(str(output / path), mode="r")[...]
    return arrays


def local_cluster(workers: int, no_workers_timeout: float) -> LocalCluster:
    """Worker processes on 127.0.0.1; blocks fail, rather than wait, once no worker is left."""
    with dask.config.set({"distributed.scheduler.no-workers-timeout": f"{no_workers_timeout}s"}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )


def workers_lost(client: Client, workers: int) -> int:
    """Workers that did not come back (a nanny restarts a killed one within seconds, or never)."""
    try:
        client.wait_for_workers(workers, timeout=30)
    except TimeoutError:
        pass
    return workers - len(client.scheduler_info(n_workers=-1)["workers"])


def use_cluster(config: Path, address: str) -> None:
    """Point the run config of the nightly runs at ``address``."""
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "cluster": {"address": address}}))


def nightly_round(
    site: dict[str, Path], args: argparse.Namespace, rng: random.Random, kill: bool
) -> Counter[str]:
    """One nightly run on a fresh cluster, with worker kills or without; its figures."""
    low, high = (float(n) for n in args.kill_every.split(","))
    with local_cluster(args.workers, 60.0) as cluster, Client(cluster) as client:
        attempts = AttemptCounter()
        cluster.scheduler.add_plugin(attempts)
        use_cluster(site["config"], cluster.scheduler_address)
        killer = WorkerKiller(client, rng, low, high, args.workers)
        if kill:
            with killer:
                completed = run_nightly(site["settings"])
        else:
            completed = run_nightly(site["settings"])
        lost = workers_lost(client, args.workers)
    retried, extra = attempts.retried()
    return Counter(
        runs=1,
        runs_completed=int(completed),
        worker_kills=killer.kills,
        workers_lost=lost,
        block_tasks=len(attempts.starts),
        block_tasks_retried=retried,
        extra_block_starts=extra,
    )


def compare_with_clean(site: dict[str, Path], workers: int) -> Counter[str]:
    """Segment every acquisition again on a quiet cluster; count outputs, arrays and differing arrays."""
    figures: Counter[str] = Counter(outputs=0, incomplete=0, arrays=0, differing_arrays=0)
    with local_cluster(workers, 60.0) as cluster:
        config = load_config(site["config"], {"cluster.address": cluster.scheduler_address})
        for source in sorted(site["incoming"].glob("*.ome.zarr")):
            output = site["root"] / "segmentations" / source.name
            figures["outputs"] += 1
            if not read_state(open_output(str(output)))["complete"]:
                figures["incomplete"] += 1
                continue
            clean = site["root"] / "clean" / source.name
            segment(SegmentRequest(str(source), str(clean), site["model"], config, show_progress=False))
            expected, got = stored_arrays(clean), stored_arrays(output)
            figures["arrays"] += len(expected)
            figures["differing_arrays"] += sum(
                name not in got or not np.array_equal(got[name], values) for name, values in expected.items()
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="nightly runs with worker kills")
    parser.add_argument("--arrivals", type=int, default=2, help="new acquisitions per round")
    parser.add_argument("--shape", default="8x288x288", help="ZYX of each acquisition (128 blocks)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", default="1,4", help="seconds between worker kills: LOW,HIGH")
    parser.add_argument("--base-channels", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/unet-soak"))
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # the test server phones no one
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    for noisy in ("prefect", "pipeline", "flows"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    shutil.rmtree(args.scratch, ignore_errors=True)
    site = write_site(args.scratch, args.base_channels)
    planes, rows, cols = (int(n) for n in args.shape.split("x"))
    rng = random.Random(args.seed)
    started = time.perf_counter()
    figures: Counter[str] = Counter()
    inputs_before: dict[str, str] = {}
    with prefect_test_harness():
        for index in range(args.runs + 1):
            killing = index < args.runs  # the last run, without kills, finishes what is left
            arrive(site["incoming"], index, args.arrivals if killing else 0, (planes, rows, cols), args.seed)
            inputs_before.update(checksums(site["incoming"]))
            figures.update(nightly_round(site, args, rng, kill=killing))
            log.info("run %d of %d done: %s", index + 1, args.runs + 1, dict(figures))
    figures.update(compare_with_clean(site, args.workers))
    inputs_after = checksums(site["incoming"])
    figures["inputs_changed"] = sum(
        inputs_after.get(name) != digest for name, digest in inputs_before.items()
    )
    result = {**figures, "wall_seconds": round(time.perf_counter() - started, 1)}
    (args.scratch / "soak.json").write_text(json.dumps(result, indent=2))
    print("| " + " | ".join(result) + " |")
    print("|" + "---|" * len(result))
    print("| " + " | ".join(str(value) for value in result.values()) + " |")


if __name__ == "__main__":
    main()
