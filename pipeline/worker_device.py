"""A worker's device: the execution profile's torch settings, and one device batcher per model.

A worker's block tasks share one :class:`~pipeline.batcher.DeviceBatcher`
per checkpoint and profile, made by the first block that needs it; a run
reads the batchers' running totals before and after itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import torch

from pipeline.batch_size import even_batch, fitting_batch_size
from pipeline.batcher import DeviceBatcher
from pipeline.checkpoint import load_checkpoint
from pipeline.config import ProfileConfig
from pipeline.cpu_time import count_ended_thread
from pipeline.errors import PipelineError
from pipeline.model import UNet
from pipeline.predict import prepare_model


@dataclass(frozen=True, slots=True)
class CheckpointRef:
    path: str
    sha256: str


def configure_torch(profile: ProfileConfig) -> None:
    """Threads and kernel choices of the execution profile, set in every process that predicts."""
    if torch.get_num_threads() != profile.threads:
        torch.set_num_threads(profile.threads)
    if profile.device == "cuda":
        torch.backends.cudnn.benchmark = not profile.deterministic
        torch.backends.cudnn.deterministic = profile.deterministic
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _load_model(checkpoint: CheckpointRef, profile: ProfileConfig) -> UNet:
    loaded = load_checkpoint(checkpoint.path)
    if loaded.sha256 != checkpoint.sha256:
        raise PipelineError(
            f"checkpoint {checkpoint.path} changed during the run: sha256 {loaded.sha256}, the run started "
            f"with {checkpoint.sha256}"
        )
    return prepare_model(
        loaded.model, device=profile.device, dtype=profile.dtype, channels_last=profile.channels_last
    )


_BATCHERS: dict[tuple[CheckpointRef, ProfileConfig], DeviceBatcher] = {}
_BATCHERS_LOCK = threading.Lock()  # held briefly: the statistics read it while a model loads
_MAKING: dict[tuple[CheckpointRef, ProfileConfig], threading.Lock] = {}  # one batcher made once
_RETIRED: dict[str, float] = {}  # statistics of the batchers closed so far


def worker_batcher(checkpoint: CheckpointRef, profile: ProfileConfig) -> DeviceBatcher:
    """This process's device batcher for a checkpoint and profile, made once and shared by its tasks.

    A worker keeps the two most recent (a nightly run moves from one model to
    another); older ones are closed and their models freed before the next loads.
    """
    configure_torch(profile)
    key = (checkpoint, profile)
    with _BATCHERS_LOCK:
        making = _MAKING.setdefault(key, threading.Lock())
    with making:
        with _BATCHERS_LOCK:
            batcher = _BATCHERS.get(key)
            if batcher is not None:
                return batcher
            if not isinstance(profile.batch_size, int):
                raise PipelineError("internal: batch_size auto reached a worker unresolved")
            while len(_BATCHERS) >= 2:
                retired = _BATCHERS.pop(next(iter(_BATCHERS)))
                retired.close()
                _add(_RETIRED, retired.statistics)
        batcher = DeviceBatcher(
            _load_model(checkpoint, profile),
            batch_size=profile.batch_size,
            channels_last=profile.channels_last,
            compiled=profile.compile,
            classes=slice(1, None),
        )
        with _BATCHERS_LOCK:
            _BATCHERS[key] = batcher
    return batcher


_WARM_UPS: dict[str, float | str] = {}  # by the name its run gave it
_WARMING: list[threading.Thread] = []  # warm-up threads not waited for yet


def start_warm_up(name: str, checkpoint: CheckpointRef, profile: ProfileConfig, window: int) -> None:
    """Make this worker's batcher for a run before its first block asks, in a thread of its own (the
    task threads stay free for the run's set-up): the model read, checked and on the device, and on
    a GPU, or where the profile compiles, one batch of zeros through it (cuDNN's start; the compile).
    :func:`warm_up_result` of ``name`` then gives the seconds it took, or the error's text (a block
    meeting the same error reports it in full)."""

    def warm() -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            batcher = worker_batcher(checkpoint, profile)
            if profile.device == "cuda" or profile.compile:
                batcher.warm_up(window)
            _WARM_UPS[name] = time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - the first block on this worker fails with it too
            _WARM_UPS[name] = f"{type(error).__name__}: {error}"
        finally:
            count_ended_thread("other", time.thread_time() - cpu)

    thread = threading.Thread(target=warm, name="unet-warm-up", daemon=True)
    # one a run for as long as the worker lives: ended ones are let go, waited for or not
    _WARMING[:] = [*(warming for warming in _WARMING if warming.is_alive()), thread]
    thread.start()


async def wait_for_warm_ups() -> None:
    """Return once this worker's warm-ups have ended (a benchmark's clock starts on warm workers).

    A coroutine, so ``client.run`` awaits it on the worker's event loop without blocking the loop
    (its heartbeats) for the seconds a compile takes."""
    while _WARMING:
        thread = _WARMING.pop()
        while thread.is_alive():
            await asyncio.sleep(0.02)


def warm_up_result(name: str) -> float | str | None:
    """How the warm-up of that name ended (None: not started here, or still running); forgotten then."""
    return _WARM_UPS.pop(name, None)


def device_statistics() -> dict[str, float]:
    """Running totals of this process's device batchers: batches, windows, padding, seconds per step."""
    with _BATCHERS_LOCK:
        totals = dict(_RETIRED)  # never decreasing: a run reads the difference before and after
        for batcher in _BATCHERS.values():
            _add(totals, batcher.statistics)
    return totals


def _add(totals: dict[str, float], counts: dict[str, float]) -> None:
    for name, value in dict(counts).items():
        totals[name] = totals.get(name, 0) + value


def probe_batch_size(checkpoint: CheckpointRef, profile: ProfileConfig, tile: int, shard_tiles: int) -> int:
    """batch_size auto, run on a worker: the largest batch its device fits, at most one shard of windows
    (a batch never holds two shards' windows: see :mod:`pipeline.batcher`), evened out over a shard's."""
    configure_torch(profile)
    model = _load_model(checkpoint, profile)
    try:
        window = model.geometry.input_size(tile)
        windows = shard_tiles**2
        return even_batch(
            fitting_batch_size(model, window, channels_last=profile.channels_last, ceiling=windows), windows
        )
    finally:
        del model
        if profile.device == "cuda":
            torch.cuda.empty_cache()
