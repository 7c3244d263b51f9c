from __future__ import annotations

import torch
import torchvision

from convlens.layers import conv_layers, last_spatial_conv, layer_table
from convlens.models import BaselineCNN


def test_layer_table_shapes_and_parameters():
    model = torchvision.models.resnet18()
    rows = {row.name: row for row in layer_table(model, (64, 64))}
    assert rows["conv1"].output_shape == (64, 32, 32)
    assert rows["layer4.1.conv2"].output_shape == (512, 2, 2)
    assert rows["fc"].output_shape == (1000,)
    assert rows["layer1"].parameters == sum(p.numel() for p in model.layer1.parameters())
    assert rows["conv1"].type == "Conv2d" and rows["conv1"].parameters == 64 * 3 * 7 * 7


def test_baseline_layers_at_both_reference_sizes():
    for size, side in ((32, 4), (128, 16)):
        rows = {row.name: row for row in layer_table(BaselineCNN(3, size), (size, size))}
        assert rows["pool3"].output_shape == (32, side, side)
        assert rows["fc1"].parameters == 32 * side * side * 512 + 512
        assert rows["fc2"].output_shape == (3,)


def test_last_spatial_conv(default_model):
    assert last_spatial_conv(torchvision.models.vgg16(), (64, 64)) == "features.28"
    assert last_spatial_conv(default_model) == "conv_head"
    assert [row.name for row in conv_layers(BaselineCNN(3, 32))] == ["conv1", "conv2", "conv3"]


class _Counting(torch.nn.Module):
    """A small CNN that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 2))

    def forward(self, x):
        self.calls += 1
        return self.head(self.conv2(self.conv1(x)))


def test_the_table_is_probed_once_per_structure_and_size():
    net = _Counting().eval()
    assert last_spatial_conv(net, (16, 16)) == "conv2" and net.calls == 1
    assert last_spatial_conv(net, (16, 16)) == "conv2" and net.calls == 1  # the cached table
    shapes = {row.name: row.output_shape for row in layer_table(net, (16, 16))}
    assert shapes["conv2"] == (6, 8, 8) and net.calls == 1
    assert {row.name: row.output_shape for row in layer_table(net, (32, 32))}["conv2"] == (6, 16, 16)
    assert net.calls == 2  # another size: probed
    net.conv2 = torch.nn.Conv2d(4, 6, 3, stride=4, padding=1)  # a replaced layer: probed again
    assert {row.name: row.output_shape for row in layer_table(net, (16, 16))}["conv2"] == (6, 4, 4)
    assert net.calls == 3
    net.head[2] = torch.nn.Linear(6, 5)  # a new head of another shape
    assert {row.name: row.output_shape for row in layer_table(net, (16, 16))}["head.2"] == (5,)
