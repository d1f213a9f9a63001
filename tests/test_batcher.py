"""The device batcher: groups of windows from concurrent tasks, each cut into its own batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pipeline.batch_size import dividing_batch, even_batch, fitting_batch_size, zero_windows
from pipeline.batcher import DeviceBatcher
from pipeline.model import UNet


def windows(rng: np.random.Generator, count: int, size: int = 188) -> np.ndarray:  # 188: the smallest valid
    return rng.normal(size=(count, 1, size, size)).astype(np.float32)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_concurrent_tasks_get_the_bits_of_their_groups_run_alone(
    narrow_model: UNet, rng: np.random.Generator, in_flight: int
) -> None:
    requests = [windows(rng, count) for count in (3, 1, 5, 2)]
    with DeviceBatcher(narrow_model, batch_size=4) as alone:
        expected = [alone.predict(request) for request in requests]
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(requests))
    with DeviceBatcher(narrow_model, batch_size=4, batches_in_flight=in_flight) as shared:

        def task(index: int) -> None:
            start.wait()
            results[index] = shared.predict(requests[index])

        threads = [threading.Thread(target=task, args=(index,)) for index in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for index, values in enumerate(expected):
        assert np.array_equal(results[index], values)


def test_classes_selects_the_softmax_channels(narrow_model: UNet, rng: np.random.Generator) -> None:
    batch = windows(rng, 2)
    with (
        DeviceBatcher(narrow_model, batch_size=2) as every,
        DeviceBatcher(narrow_model, batch_size=2, classes=slice(1, None)) as foreground,
    ):
        both, one = every.predict(batch), foreground.predict(batch)
    assert both.shape[1] == 2 and one.shape[1] == 1
    assert np.array_equal(both[:, 1:], one)


class FailsFirstForward(UNet):
    """A U-Net whose first forward pass fails, as an out-of-memory error would."""

    failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            self.failed = True
            raise torch.OutOfMemoryError("injected: out of memory")
        return super().forward(x)


def test_a_failed_batch_fails_its_tasks_and_the_batcher_goes_on(rng: np.random.Generator) -> None:
    torch.manual_seed(3)
    model = FailsFirstForward(base_channels=4).eval()
    with DeviceBatcher(model, batch_size=2) as batcher:
        with pytest.raises(torch.OutOfMemoryError, match="injected"):
            batcher.predict(windows(rng, 3))
        again = windows(rng, 3)
        assert np.array_equal(batcher.predict(again), DeviceBatcher(model, batch_size=2).predict(again))


def test_windows_cut_from_a_plane_get_the_bits_of_their_stack(
    narrow_model: UNet, rng: np.random.Generator
) -> None:
    plane = rng.normal(size=(1, 300, 420)).astype(np.float32)
    origins = [(0, 0), (112, 232), (7, 100), (112, 0), (50, 9)]
    stack = np.stack([plane[:, top : top + 188, left : left + 188] for top, left in origins])
    with DeviceBatcher(narrow_model, batch_size=2) as batcher:
        cut = batcher.submit_cut(plane, origins, 188).result()
        assert np.array_equal(cut, batcher.predict(stack))
        with pytest.raises(ValueError, match=r"window at one of \[\(113, 0\)\] leaves the 300 x 420 plane"):
            batcher.submit_cut(plane, [(113, 0)], 188)
        with pytest.raises(ValueError, match=r"plane must be float32 \(1, H, W\)"):
            batcher.submit_cut(plane.astype(np.float64), origins, 188)


def test_a_warm_up_batch_is_uncounted_and_changes_no_bits(
    narrow_model: UNet, rng: np.random.Generator
) -> None:
    batch = windows(rng, 3)
    with DeviceBatcher(narrow_model, batch_size=2) as cold:
        expected = cold.predict(batch)
    with DeviceBatcher(narrow_model, batch_size=2) as warm:
        warm.warm_up(188)
        assert warm.statistics == {}
        assert np.array_equal(warm.predict(batch), expected)
        counted = dict(warm.statistics)
        assert counted["batches"] == 2 and counted["windows"] == 3
        warm.warm_up(188)  # a batch ran: nothing to warm
        assert warm.statistics == counted


def test_wrong_channel_count_is_refused(narrow_model: UNet, rng: np.random.Generator) -> None:
    with (
        DeviceBatcher(narrow_model, batch_size=2) as batcher,
        pytest.raises(ValueError, match=r"\(N, 1, S, S\)"),
    ):
        batcher.submit(np.zeros((1, 3, 572, 572), np.float32))


def test_closed_batcher_refuses_work(narrow_model: UNet, rng: np.random.Generator) -> None:
    batcher = DeviceBatcher(narrow_model, batch_size=2)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(windows(rng, 1))


def test_auto_batch_size_on_cpu_is_one(narrow_model: UNet) -> None:
    assert fitting_batch_size(narrow_model, 572, channels_last=False) == 1


def test_an_evened_batch_takes_the_fewest_batches_and_zeros() -> None:
    """A group (one shard's windows) in batches no larger than what fits: as few batches as that
    allows, and fewer zeros than batches; none where the batches can be equal."""
    for windows in range(1, 70):
        for largest in range(1, 70):
            batch = even_batch(largest, windows)
            batches = -(-windows // batch)
            assert batch <= largest and batches == -(-windows // largest)
            assert zero_windows(batch, windows) == batches * batch - windows < batches
            assert (zero_windows(batch, windows) == 0) == (windows % batches == 0)
            divisor = dividing_batch(largest, windows)
            assert divisor <= largest and zero_windows(divisor, windows) == 0
            assert all(zero_windows(size, windows) for size in range(divisor + 1, min(largest, windows) + 1))
    assert even_batch(8, 16) == 8 and even_batch(8, 9) == 5 and even_batch(32, 16) == 16
    assert zero_windows(32, 16) == 16 and zero_windows(3, 16) == 2 and dividing_batch(3, 16) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_batch_size_fits_the_gpu() -> None:
    model = UNet(base_channels=64).cuda().to(torch.bfloat16).eval()
    size = fitting_batch_size(model, 572, channels_last=True)
    assert size >= 1
    with torch.inference_mode():
        model(torch.zeros((size, 1, 572, 572), device="cuda", dtype=torch.bfloat16))
