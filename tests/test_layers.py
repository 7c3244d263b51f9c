from __future__ import annotations

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
