from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.batcher import DeviceBatcher
from pipeline.model import UNet
from pipeline.predict import predict_padded, predict_plane, predict_windows, shard_tiles_order
from tests.canonical import canonical_prediction


@pytest.mark.parametrize("shape", [(1, 1), (100, 700), (388, 388), (389, 777), (1000, 1000)])
def test_predict_plane_equals_canonical_tiling_bitwise(
    narrow_model: UNet, rng: np.random.Generator, shape: tuple[int, int]
) -> None:
    plane = rng.normal(size=shape).astype(np.float32)
    expected = canonical_prediction(narrow_model, plane)
    got = predict_plane(narrow_model, plane, batch_size=8)
    assert got.shape == (2, *shape)
    assert got.dtype == np.float32
    assert np.array_equal(got, expected)


def test_batch_size_does_not_change_output(narrow_model: UNet, rng: np.random.Generator) -> None:
    plane = rng.normal(size=(800, 1000)).astype(np.float32)  # 3 x 3 tiles
    outputs = [predict_plane(narrow_model, plane, batch_size=b) for b in (1, 3, 8)]
    assert np.array_equal(outputs[0], outputs[1])
    assert np.array_equal(outputs[0], outputs[2])


def test_probabilities_sum_to_one(narrow_model: UNet, rng: np.random.Generator) -> None:
    out = predict_plane(narrow_model, rng.random((50, 60), dtype=np.float32))
    np.testing.assert_allclose(out.sum(axis=0), 1.0, rtol=1e-6)


def test_integer_planes_are_used_as_float(narrow_model: UNet, rng: np.random.Generator) -> None:
    plane = rng.integers(0, 4, size=(40, 50)).astype(np.uint16)
    assert np.array_equal(
        predict_plane(narrow_model, plane), predict_plane(narrow_model, plane.astype(np.float32))
    )


def test_multichannel_plane(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    model = UNet(in_channels=2, n_classes=3, base_channels=2, depth=3).eval()
    plane = rng.random((2, 70, 90), dtype=np.float32)
    out = predict_plane(model, plane, tile=36)
    assert out.shape == (3, 70, 90)
    with pytest.raises(ValueError, match=r"plane must be \(H, W\) or \(2, H, W\)"):
        predict_plane(model, plane[0], tile=36)


def test_tile_must_be_producible(narrow_model: UNet) -> None:
    with pytest.raises(ValueError, match="output size 390 cannot be produced"):
        predict_plane(narrow_model, np.zeros((10, 10), np.float32), tile=390)


def test_padded_input_must_be_whole_tiles(narrow_model: UNet) -> None:
    with (
        pytest.raises(ValueError, match="not a whole number of 388-pixel tiles"),
        DeviceBatcher(narrow_model, batch_size=2) as batcher,
    ):
        predict_padded(batcher, np.zeros((1, 1, 600, 572), np.float32), 388)


def test_windows_are_independent_of_their_batch(narrow_model: UNet, rng: np.random.Generator) -> None:
    windows = rng.normal(size=(5, 1, 572, 572)).astype(np.float32)
    together = predict_windows(narrow_model, windows, batch_size=4)
    alone = np.concatenate([predict_windows(narrow_model, w[None], batch_size=4) for w in windows])
    assert np.array_equal(together, alone)


def test_channels_last_agrees_within_tolerance(rng: np.random.Generator) -> None:
    torch.manual_seed(5)
    model = UNet(base_channels=4).eval()
    plane = rng.normal(size=(300, 300)).astype(np.float32)
    reference = predict_plane(model, plane)
    other = predict_plane(model, plane, channels_last=True)
    predict_plane(model, plane, channels_last=False)  # back to the default layout
    # measured: max 1.4e-5 apart on a 2-core x86 CPU (untrained weights, large logits)
    np.testing.assert_allclose(other, reference, atol=1e-4)


class PositionSensitive(UNet):
    """A U-Net whose output depends on a window's place in its batch, as cuDNN's bf16 kernels do on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        place = torch.arange(x.shape[0], dtype=x.dtype).reshape(-1, 1, 1, 1)
        return super().forward(x + 1e-3 * place)


def test_a_block_meets_the_batches_of_the_whole_plane(rng: np.random.Generator) -> None:
    torch.manual_seed(4)
    model = PositionSensitive(base_channels=4).eval()
    tile, halo = 36, model.geometry.halo
    plane = rng.normal(size=(1, 4 * tile + 2 * halo, 4 * tile + 2 * halo)).astype(np.float32)
    lower_half = plane[np.newaxis, :, 2 * tile :, :]  # tile rows 2-3: one row of 2 x 2-tile shards
    with DeviceBatcher(model, batch_size=3) as batcher:
        whole = predict_padded(batcher, plane[np.newaxis], tile, shard_tiles=2)
        block = predict_padded(batcher, lower_half, tile, shard_tiles=2)
        regrouped = predict_padded(batcher, lower_half, tile, shard_tiles=4)
    assert np.array_equal(block[0], whole[0, :, 2 * tile :, :])
    assert not np.array_equal(regrouped[0], whole[0, :, 2 * tile :, :])  # other batches, other bits


def test_shards_cover_every_tile_once() -> None:
    order = shard_tiles_order(5, 7, 4)
    assert [len(shard) for shard in order] == [16, 12, 4, 3]
    assert sorted(tile for shard in order for tile in shard) == [(i, j) for i in range(5) for j in range(7)]
