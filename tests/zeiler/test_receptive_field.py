"""Traced receptive fields against an independent window-by-window computation of the same layer chain."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.models import BaselineCNN
from convlens.zeiler.receptive_field import receptive_field


def chain_spans(chain: list[tuple[int, int, int | str]], size: int) -> list[tuple[int, int]]:
    """Exact input span of every output index of a chain of (kernel, stride, padding) windows on one axis, each
    window clipped to the map it reads (padding "same" = TensorFlow's, begin = total // 2)."""
    sizes, pads = [size], []
    for kernel, stride, padding in chain:
        n = sizes[-1]
        if padding == "same":
            total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
            pads.append(total // 2)
            sizes.append(math.ceil(n / stride))
        else:
            pads.append(padding)
            sizes.append((n + 2 * padding - kernel) // stride + 1)
    spans = [(i, i + 1) for i in range(size)]  # layer 0: the input itself
    for (kernel, stride, _), pad, n_in, n_out in zip(chain, pads, sizes[:-1], sizes[1:], strict=True):
        new = []
        for i in range(n_out):
            low, high = max(0, stride * i - pad), min(n_in - 1, stride * i - pad + kernel - 1)
            new.append((spans[low][0], spans[high][1]))
        spans = new
    return spans


BASELINE_CHAIN = {"conv1": [(5, 1, 2)], "pool1": [(5, 1, 2), (2, 2, 0)],
                  "conv2": [(5, 1, 2), (2, 2, 0), (3, 1, 1)],
                  "pool3": [(5, 1, 2), (2, 2, 0), (3, 1, 1), (2, 2, 0), (3, 1, 1), (2, 2, 0)]}


@pytest.mark.parametrize("size", [32, 44])
@pytest.mark.parametrize("layer", sorted(BASELINE_CHAIN))
def test_baseline_fields_match_window_chain(layer, size):
    torch.manual_seed(0)
    model = BaselineCNN(3, 32).eval()  # the layers before fc1 run at any size
    field = receptive_field(model, layer, (size, size))
    expected = chain_spans(BASELINE_CHAIN[layer], size)
    assert field.output_size == (len(expected), len(expected))
    assert [field.rows[i] for i in range(len(expected))] == expected
    assert [field.cols[i] for i in range(len(expected))] == expected
    assert field.box(1, 2) == (*[expected[1][0], expected[2][0]], expected[1][1], expected[2][1])


def test_baseline_pool3_nominal_size_and_stride():
    field = receptive_field(BaselineCNN(3, 64).eval(), "pool3", (64, 64))
    assert field.size == (24, 24) and field.stride == (8.0, 8.0)


def test_vgg11_and_resnet18_fields_match_window_chain():
    import torchvision

    torch.manual_seed(0)
    vgg = torchvision.models.vgg11().eval()
    conv, pool = (3, 1, 1), (2, 2, 0)
    field = receptive_field(vgg, "features.11", (64, 64), rows=[0, 3, 7], cols=[1, 7])  # conv4_1 after 3 pools
    expected = chain_spans([conv, pool, conv, pool, conv, conv, pool, conv], 64)
    assert all(field.rows[i] == expected[i] for i in (0, 3, 7)) and field.cols[1] == expected[1]
    assert field.size == (max(b - a for a, b in expected),) * 2

    resnet = torchvision.models.resnet18().eval()
    # the main path holds every other path (1x1 downsample, identity skips) of the blocks
    stem = [(7, 2, 3), (3, 2, 1)]
    layer1 = [(3, 1, 1)] * 4
    layer2 = [(3, 2, 1)] + [(3, 1, 1)] * 3
    # layer2.0.relu runs twice in its block; its last call (after the skip addition) is the block's output
    for name, chain in (("layer1", stem + layer1), ("layer2", stem + layer1 + layer2),
                        ("layer2.0.relu", stem + layer1 + layer2[:2])):
        field = receptive_field(resnet, name, (96, 96))
        expected = chain_spans(chain, 96)
        assert [field.rows[i] for i in range(len(expected))] == expected, name


def test_default_model_same_padding_and_relu6(default_model):
    """timm's Conv2dSame pads asymmetrically; ReLU6 saturates on the stand-in weights unless bypassed."""
    same = lambda k, s: (k, s, "same")  # noqa: E731
    chain = [same(3, 2), same(3, 1), same(3, 2), same(3, 1), same(5, 2), same(5, 1)]
    field = receptive_field(default_model, "blocks.2", rows=[0, 5, 27], cols=[14])
    expected = chain_spans(chain, 224)
    assert field.output_size == (28, 28)
    assert {i: field.rows[i] for i in (0, 5, 27)} == {i: expected[i] for i in (0, 5, 27)}
    assert field.cols[14] == expected[14]
    stem = receptive_field(default_model, "conv_stem", rows=[0, 111], cols=[0])
    assert stem.rows[0] == (0, 3) and stem.rows[111] == (222, 224)


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)

    def forward(self, x):
        x = F.relu6(self.conv(x))
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))  # a global gate
        return self.pool(x)


def test_global_gates_do_not_widen_the_field():
    field = receptive_field(SqueezeExcite().eval(), "pool", (20, 20), rows=[10], cols=[0])
    assert field.rows[10] == (8, 13) and field.cols[0] == (0, 3)  # 3x3 conv then 3x3 pool: 5 px


def test_model_untouched():
    model = BaselineCNN(3, 32).eval()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    receptive_field(model, "conv3", (32, 32))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
