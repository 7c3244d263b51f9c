"""Small models and maps for the faithfulness tests (tiny CNNs at 24-32 px keep the CPU suite fast)."""

from __future__ import annotations

import torch
from torch import nn


def gap_net(seed: int = 0, classes: int = 5) -> nn.Module:
    """A small CNN ending in global average pooling + linear (CAM applies)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes)).eval()


def flat_net(seed: int = 0, classes: int = 5, size: int = 24) -> nn.Module:
    """A CNN with flatten + dense (no GAP head: CAM does not apply)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * (size // 2) ** 2, classes)).eval()


def distinct_maps(maps: torch.Tensor) -> torch.Tensor:
    """Maps with the same order as ``maps`` but no ties: each pixel's rank / pixels (exact in float32, so
    ``1 - map`` keeps the order too)."""
    flat = maps.flatten(1)
    jitter = torch.arange(flat.shape[1], dtype=torch.float64) * 1e-9  # break ties by position
    ranks = torch.argsort(torch.argsort(flat.double() + jitter, dim=1), dim=1)
    return (ranks.float() / flat.shape[1]).view_as(maps)
