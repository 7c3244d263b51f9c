"""The region engine against the plain computation: every variant as a full input through the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from convlens.engine import BatchedEngine, RegionalEngine, Regions, build_engine
from convlens.hooks import capture, preserved_state


def full_forward(net, inputs, regions, layer):
    rows, cols = regions.grid()
    batch = regions.variants(inputs, rows, cols)
    with torch.inference_mode(), capture(net, layer) as captured:
        output = net(batch)
    return output, captured[layer]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=7).eval()


def test_rectangles_of_any_size_match_the_full_forward(resnet):
    """Not occlusion windows: rectangles of different heights and widths, some at the border, a noise fill."""
    torch.manual_seed(1)
    inputs, fill = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    regions = Regions(np.array([0, 5, 40, 60]), np.array([3, 20, 63, 63]), np.array([10, 50]), np.array([17, 63]), fill)
    expected_output, expected_layer = full_forward(resnet, inputs, regions, "layer1.0.conv2")
    with preserved_state(resnet) as net, torch.inference_mode():
        engine = build_engine(net, inputs, regions, "layer1.0.conv2")
        assert isinstance(engine, RegionalEngine) and engine.incremental_nodes > 5 and engine.reason == ""
        rows, cols = regions.grid()
        parts = [engine.run(rows[s:s + 3], cols[s:s + 3], channel=None) for s in range(0, 8, 3)]
    output = torch.cat([p[0] for p in parts])
    layer = torch.cat([p[1] for p in parts])
    torch.testing.assert_close(output, expected_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer, expected_layer, atol=1e-5, rtol=1e-5)
    assert float((expected_output - expected_output[:1]).abs().max()) > 1e-3  # the variants differ


def test_one_channel_and_no_layer(resnet):
    torch.manual_seed(2)
    inputs = torch.randn(1, 3, 48, 48)
    regions = Regions.windows([0, 16, 40], [8, 36], 12, torch.zeros_like(inputs))
    assert regions.row_hi.tolist() == [11, 27, 47] and regions.col_hi.tolist() == [19, 47]  # cropped at 48
    expected_output, expected_layer = full_forward(resnet, inputs, regions, "layer2")
    rows, cols = regions.grid()
    with preserved_state(resnet) as net, torch.inference_mode():
        output, layer = build_engine(net, inputs, regions, "layer2").run(rows, cols, channel=5)
        plain, nothing = build_engine(net, inputs, regions).run(rows, cols)
    torch.testing.assert_close(layer, expected_layer[:, 5:6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output, expected_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain, expected_output, atol=1e-5, rtol=0)
    assert nothing is None


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        if x.mean() > 100:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.head(self.conv(x).mean(dim=(2, 3)))


class GlobalFirst(nn.Module):
    """A global op right at the input: nothing to recompute on regions."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3 * 16 * 16, 2)

    def forward(self, x):
        return self.head(x.flatten(1))


@pytest.mark.parametrize("net, layer, reason", [
    (Branching(), "conv", "torch.fx cannot trace the model"),
    (GlobalFirst(), "head", "no local operation"),
])
def test_fallback_records_why_and_matches_the_full_forward(net, layer, reason):
    torch.manual_seed(3)
    inputs = torch.randn(1, 3, 16, 16)
    regions = Regions.windows([0, 8], [4], 8, torch.zeros_like(inputs))
    expected_output, expected_layer = full_forward(net.eval(), inputs, regions, layer)
    with preserved_state(net) as module, torch.inference_mode():
        engine = build_engine(module, inputs, regions, layer)
        output, captured = engine.run(*regions.grid())
    assert isinstance(engine, BatchedEngine) and engine.reason.startswith(reason)
    torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=0)
    torch.testing.assert_close(captured, expected_layer, atol=1e-6, rtol=0)
    assert all(not m._forward_hooks for m in net.modules())


def test_coverage_counts_and_sums_per_pixel():
    regions = Regions.windows([0, 2], [0, 3], 3, torch.zeros(1, 1, 5, 6))
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    total, count = regions.coverage(values, 5, 6)
    expected_total, expected_count = torch.zeros(5, 6, dtype=torch.float64), torch.zeros(5, 6, dtype=torch.float64)
    for i, r in enumerate([0, 2]):
        for j, c in enumerate([0, 3]):
            expected_total[r:r + 3, c:c + 3] += values[i, j]
            expected_count[r:r + 3, c:c + 3] += 1
    assert torch.equal(total, expected_total) and torch.equal(count, expected_count)
