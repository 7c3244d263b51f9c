"""Suffix execution against the whole model with the layer's output replaced (a forward hook)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.engine import SuffixEngine, WholeModel, build_suffix
from convlens.hooks import capture, preserved_state, replace_output
from convlens.models.efficientnet_lite import build_efficientnet_lite0


def whole_model(net, inputs, layer, owners, replacement, calls=1):
    """The whole model on each copy's image, the layer's last call handing on ``replacement`` instead."""
    state = {"calls": 0}

    def swap(output):
        state["calls"] += 1
        return replacement if state["calls"] % calls == 0 else output

    with torch.inference_mode(), replace_output(net, layer, swap):
        return net(inputs[owners])


def edited_copies(clean_layer, owners, seed):
    """Copies of the clean layer output of each owner image: a channel zeroed, and noise on another."""
    generator = torch.Generator().manual_seed(seed)
    copies = clean_layer[owners].clone()
    channels = torch.randint(0, copies.shape[1], (len(owners), 2), generator=generator)
    for b, (zeroed, noisy) in enumerate(channels.tolist()):
        copies[b, zeroed] = 0
        copies[b, noisy] += torch.randn(copies.shape[2:], generator=generator)
    return copies


def check_suffix(model, layer, size, calls=1, min_cached=0):
    torch.manual_seed(0)
    model.eval()
    inputs = torch.randn(2, 3, size, size)
    owners = torch.tensor([0, 1, 1, 0, 1])
    with preserved_state(model) as net, torch.inference_mode():
        suffix = build_suffix(net, inputs, layer)
        assert isinstance(suffix, SuffixEngine), suffix.reason
        assert suffix.reason == "" and suffix.calls == calls and suffix.suffix_nodes > 0
        assert sum(isinstance(v, torch.Tensor) and per_image for per_image, v in suffix.cached.values()) >= min_cached
        copies = edited_copies(suffix.clean_layer, owners, seed=1)
        output = suffix.run(copies.clone(), owners)
    with capture(model, layer) as captured, torch.inference_mode():
        clean = model(inputs)
    # float32 sums in another order (the traced graph vs the module): compared at the tensors' own scale
    layer_scale, output_scale = captured[layer].abs().max(), clean.abs().max()
    torch.testing.assert_close(suffix.clean_layer / layer_scale, captured[layer] / layer_scale, rtol=0, atol=1e-5)
    torch.testing.assert_close(suffix.clean_output / output_scale, clean / output_scale, rtol=0, atol=1e-5)
    expected = whole_model(model, inputs, layer, owners, copies, calls)
    scale = expected.abs().max()  # random-init networks' logits can be tiny (mobilenet_v2: 1e-4)
    assert (expected - clean[owners]).abs().max() > 0.01 * scale  # the edits change the output: the check can fail
    torch.testing.assert_close(output / scale, expected / scale, rtol=0, atol=1e-5)
    # given the layer's clean output (as Ablation-CAM has it), only the cached tensors are computed
    with preserved_state(model) as net, torch.inference_mode():
        given = build_suffix(net, inputs, layer, clean_layer=captured[layer])
        assert isinstance(given, SuffixEngine), given.reason
        assert {n.name for n in given.cached} == {n.name for n in suffix.cached}
        torch.testing.assert_close(given.run(copies.clone(), owners) / scale, expected / scale, rtol=0, atol=1e-5)
    return suffix


def test_resnet18_layer4_and_a_block_with_a_skip_over_it():
    model = torchvision.models.resnet18(num_classes=10)
    suffix = check_suffix(model, "layer4", 64)
    assert suffix.prefix_nodes > suffix.suffix_nodes
    # layer4.0.conv1: the block's downsample path bypasses it, so its input comes from the cached clean pass
    check_suffix(model, "layer4.0.conv1", 64, min_cached=1)
    # the block's relu runs twice; the explained call is the last (after the skip addition), as hooks see it
    check_suffix(model, "layer3.1.relu", 64, calls=2)


def test_densenet121_with_functional_relu_after_the_layer():
    model = torchvision.models.densenet121(num_classes=10)
    # DenseNet's forward applies F.relu(inplace=True) to features.norm5's output: the given copies stay intact
    check_suffix(model, "features.norm5", 64)
    # inside a dense block: the concatenation reads every earlier layer's features from the cache
    check_suffix(model, "features.denseblock4.denselayer2", 64, min_cached=1)


def test_mobilenet_v2_inverted_residual():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    check_suffix(model, "features.14", 96)
    check_suffix(model, "features.15.conv.1", 96, min_cached=1)  # the residual addition reads the block's input


def test_default_model_last_block():
    model = build_efficientnet_lite0(pretrained=False)
    check_suffix(model, "blocks.6", 96)
    check_suffix(model, "blocks.5.1.conv_pwl", 96, min_cached=1)


class SizeFromInput(nn.Module):
    """Reads ``x.size(0)`` of the input after the layer: not a per-image tensor, so not taken from the cache."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        n = x.size(0)
        return self.head(self.conv(x).mean((2, 3)).view(n, -1))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.mean((2, 3)) if float(y.sum()) > 0 else -y.mean((2, 3))


@pytest.mark.parametrize("model, says", [(SizeFromInput(), "not a per-image tensor"),
                                         (DataDependent(), "torch.fx cannot trace")])
def test_falls_back_to_the_whole_model_and_says_why(model, says):
    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 16, 16)
    owners = torch.tensor([1, 0, 1])
    with preserved_state(model) as net, torch.inference_mode():
        suffix = build_suffix(net, inputs, "conv")
        assert isinstance(suffix, WholeModel) and says in suffix.reason
        copies = edited_copies(suffix.clean_layer, owners, seed=2)
        output = suffix.run(copies, owners)
    torch.testing.assert_close(output, whole_model(model, inputs, "conv", owners, copies), rtol=0, atol=0)


def test_suffix_false_asks_for_the_whole_model():
    model = torchvision.models.resnet18(num_classes=3).eval()
    with preserved_state(model) as net, torch.inference_mode():
        suffix = build_suffix(net, torch.randn(1, 3, 32, 32), "layer4", suffix=False)
    assert isinstance(suffix, WholeModel) and suffix.reason == "suffix=False"
