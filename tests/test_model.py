from __future__ import annotations

import math

import pytest
import torch

from pipeline.geometry import UNetGeometry
from pipeline.model import (
    UNet,
    UNetConfig,
    build_model,
    center_crop,
    count_parameters,
    parameter_shapes,
    widen,
)


def test_paper_configuration_parameters_and_shape() -> None:
    with torch.device("meta"):
        paper = UNet(in_channels=1, n_classes=2, base_channels=64, depth=5)
        out = paper(torch.empty(1, 1, 572, 572))
    assert count_parameters(paper) == 31_030_658
    assert tuple(out.shape) == (1, 2, 388, 388)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_output_shape_follows_geometry(depth: int) -> None:
    geometry = UNetGeometry(depth)
    size = geometry.min_input_size + 2 * geometry.pool_factor
    with torch.device("meta"):
        net = UNet(in_channels=3, n_classes=4, base_channels=2, depth=depth)
        out = net(torch.empty(2, 3, size, size + geometry.pool_factor))
    assert tuple(out.shape) == (
        2,
        4,
        geometry.output_size(size),
        geometry.output_size(size + geometry.pool_factor),
    )


def test_narrow_model_runs_for_real(narrow_model: UNet) -> None:
    with torch.inference_mode():
        out = narrow_model(torch.rand(1, 1, 188, 572))
    assert tuple(out.shape) == (1, 2, 4, 388)
    assert torch.isfinite(out).all()


def test_invalid_input_size_names_nearest_valid_sizes(narrow_model: UNet) -> None:
    with pytest.raises(ValueError, match="nearest are 556 or 572"):
        narrow_model(torch.zeros(1, 1, 570, 572))


@pytest.mark.parametrize(
    "config", [UNetConfig(), UNetConfig(3, 4, 8, 3), UNetConfig(1, 2, 4, 1), UNetConfig(2, 2, 6, 2)]
)
def test_parameter_shapes_are_the_built_models(config: UNetConfig) -> None:
    built = {name: list(tensor.shape) for name, tensor in build_model(config).state_dict().items()}
    assert parameter_shapes(config) == built


def test_center_crop_is_centred() -> None:
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert center_crop(x, 2, 2).flatten().tolist() == [14.0, 15.0, 20.0, 21.0]


def test_he_normal_initialisation() -> None:
    torch.manual_seed(0)
    net = UNet(base_channels=32)
    conv = net.encoder[2][0]  # 64 -> 128 channels, 3x3: fan_in 576
    std = conv.weight.std().item()
    assert math.isclose(std, math.sqrt(2 / (64 * 9)), rel_tol=0.05)
    up = net.decoder[0].upconv
    assert math.isclose(up.weight.std().item(), math.sqrt(2 / up.in_channels), rel_tol=0.05)
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(
    "kwargs", [{"base_channels": 0}, {"depth": 0}, {"n_classes": 1}, {"in_channels": 2.5}]
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="UNetConfig"):
        UNetConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [2, 3])
def test_a_widened_model_computes_the_narrow_ones_function(depth: int) -> None:
    """Zero-padded to 3x the width: the same logits (up to summation order), 3x the channels."""
    torch.manual_seed(0)
    narrow = UNet(in_channels=1, n_classes=3, base_channels=4, depth=depth).eval()
    for parameter in narrow.parameters():  # non-zero biases too, so a misplaced channel shows
        torch.nn.init.normal_(parameter, std=0.3)
    wide = widen(narrow, 12).eval()
    assert wide.config.base_channels == 12
    assert count_parameters(wide) > 8 * count_parameters(narrow)
    window = narrow.geometry.input_size(20)
    x = torch.randn(2, 1, window, window)
    with torch.no_grad():
        expected, got = narrow(x), wide(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5), (got - expected).abs().max()
    with pytest.raises(ValueError, match="cannot widen 4 base channels to 2"):
        widen(narrow, 2)
