"""Fixtures of the faithfulness tests."""

from __future__ import annotations

import pytest
import torch
from faith_nets import gap_net
from torch import nn


@pytest.fixture
def net() -> nn.Module:
    return gap_net()


@pytest.fixture
def inputs() -> torch.Tensor:
    return torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(3))
