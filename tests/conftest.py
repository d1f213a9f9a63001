from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import settings

from pipeline.model import UNet

NARROW = {"base_channels": 4, "depth": 5}


@pytest.fixture(scope="session")
def narrow_model() -> UNet:
    """The paper's geometry (572 -> 388) with 4 base channels: cheap on a CPU."""
    torch.manual_seed(1234)
    return UNet(**NARROW).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261126)


# CI machines are shared and slow; hypothesis' per-example deadline only adds flakiness.
settings.register_profile("unet", deadline=None, print_blob=True)
settings.load_profile("unet")
