"""``batch_size: auto``: the largest batch of windows a device fits, found once per run.

On CUDA: one window's peak memory is measured, free memory over it (with
headroom for the allocator and the tasks beside the batcher) gives a first
guess, a power of two up to a ceiling; a forward pass at that size must
succeed, else the guess halves (out-of-memory back-off). The run then fixes
the size and records it in the execution profile, so every block of it, and
any resumption, uses the same one. On CPU, larger batches only evict the
activations from the caches (measured on a 2-core machine: batch 1 fastest),
so auto means 1 there.
"""

from __future__ import annotations

import torch

from pipeline.model import UNet

CPU_BATCH = 1
CEILING = 64
HEADROOM = 0.7  # fraction of free memory one batch may take


def fitting_batch_size(model: UNet, window: int, *, channels_last: bool, ceiling: int = CEILING) -> int:
    """The batch size for ``model`` (already on its device and in its dtype) at ``window`` pixels."""
    parameter = next(model.parameters())
    if parameter.device.type != "cuda":
        return CPU_BATCH
    device = parameter.device
    per_window = _peak_bytes(model, 1, window, channels_last)
    free, _ = torch.cuda.mem_get_info(device)
    size = 1
    while size * 2 <= min(ceiling, int(free * HEADROOM // per_window)):
        size *= 2
    while True:
        try:
            _peak_bytes(model, size, window, channels_last)
            return size
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if size == 1:
                raise
            size //= 2


def even_batch(largest: int, windows: int) -> int:
    """The batch size for groups of ``windows`` (a batch holds one output shard's windows, no more): as
    few batches as ``largest`` allows, as equal as they can be, so the fewest zero windows are computed
    (16 windows and largest 8: 8; 9 windows and largest 8: 5, not 8 with 7 zeros)."""
    batches = -(-windows // largest)
    return -(-windows // batches)


def zero_windows(batch: int, windows: int) -> int:
    """The zero windows a group of ``windows`` is padded with in batches of ``batch``."""
    return -windows % batch


def dividing_batch(largest: int, windows: int) -> int:
    """The largest batch size up to ``largest`` that pads a group of ``windows`` with no zeros."""
    return max(size for size in range(1, min(largest, windows) + 1) if windows % size == 0)


def _peak_bytes(model: UNet, batch: int, window: int, channels_last: bool) -> int:
    """Device memory one forward pass of ``batch`` windows adds at its peak."""
    parameter = next(model.parameters())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.cuda.synchronize(parameter.device)
    torch.cuda.reset_peak_memory_stats(parameter.device)
    before = torch.cuda.memory_allocated(parameter.device)
    with torch.inference_mode():
        inputs = torch.zeros(
            (batch, model.config.in_channels, window, window), device=parameter.device, dtype=parameter.dtype
        ).to(memory_format=memory_format)
        model(inputs)
    torch.cuda.synchronize(parameter.device)
    return max(1, torch.cuda.max_memory_allocated(parameter.device) - before)
