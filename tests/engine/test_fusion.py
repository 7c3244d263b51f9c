"""The regional engine's inference copy (batch norms folded, ReLUs and residual additions fused into the
convolutions) against the model itself, on a bottleneck ResNet with stride-2 downsampling and trained-like
batch-norm statistics (with the default random statistics, folding would change nothing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testkit import small_resnet
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from convlens.engine import RegionalEngine, Regions, build_engine
from convlens.engine.fusion import FusedConv
from convlens.hooks import capture, preserved_state


@pytest.fixture(scope="module")
def resnet():
    return small_resnet()


def one_at_a_time(net, inputs, regions, layer):
    """The definition: each variant through the model on its own, the layer read by a hook."""
    rows, cols = regions.grid()
    outputs, layers = [], []
    with torch.inference_mode(), capture(net, layer) as captured:
        for r, c in zip(rows, cols, strict=True):
            outputs.append(net(regions.variants(inputs, r[None], c[None])))
            layers.append(captured[layer])
    return torch.cat(outputs), torch.cat(layers)


@pytest.mark.parametrize("block, last", [(Bottleneck, "conv3"), (BasicBlock, "conv2")])
def test_fused_blocks_match_the_model_one_variant_at_a_time(block, last):
    resnet = small_resnet(block)
    torch.manual_seed(1)
    inputs, fill = torch.randn(1, 3, 96, 96), torch.zeros(1, 3, 96, 96)
    regions = Regions.windows([0, 24, 72], [8, 80], 16, fill)  # the last column cropped at the border
    layer = "layer3.0.conv2" if block is Bottleneck else "layer3.0.conv1"  # the stride-2 convolution of a
    # downsampling block: neither folded nor fused
    expected_output, expected_layer = one_at_a_time(resnet, inputs, regions, layer)
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    with preserved_state(resnet) as net, torch.inference_mode():
        engine = build_engine(net, inputs, regions, layer)
        assert isinstance(engine, RegionalEngine) and engine.reason == ""
        fused = {n.target: engine.modules[n.target] for n in engine.regional
                 if n.op == "call_module" and isinstance(engine.modules[n.target], FusedConv)}
        # conv1 + ReLU, and the residual additions (with a downsampled identity) computed on regions
        assert "conv1" in fused and not fused["conv1"].add
        assert {f"layer1.0.{last}", f"layer2.0.{last}"} <= {t for t, m in fused.items() if m.add}
        norms = [n.target for n in engine.nodes if isinstance(engine.modules.get(n.target), nn.BatchNorm2d)]
        assert norms == [layer.replace("conv", "bn")]  # the layer's own pair is kept
        assert not isinstance(engine.modules[layer], FusedConv)
        rows, cols = regions.grid()
        parts = [engine.run(rows[s:s + 4], cols[s:s + 4], channel=None) for s in range(0, len(rows), 4)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), expected_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), expected_layer, atol=1e-5, rtol=1e-5)
    assert float((expected_output - expected_output[:1]).abs().max()) > 1e-2  # the variants differ
    # The model keeps its own modules and weights: the copy's folded and fused convolutions are new.
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())
    assert not any(isinstance(m, FusedConv) for m in resnet.modules())


def test_the_plain_graph_gives_the_same_numbers(resnet):
    torch.manual_seed(2)
    inputs = torch.randn(1, 3, 64, 64)
    regions = Regions.windows([0, 32], [16, 48], 16, torch.zeros_like(inputs))
    rows, cols = regions.grid()
    with preserved_state(resnet) as net, torch.inference_mode():
        optimized = build_engine(net, inputs, regions, "layer2")
        plain = build_engine(net, inputs, regions, "layer2", fold=False)
        assert plain.net is net and optimized.net is not net
        (out_a, layer_a), (out_b, layer_b) = optimized.run(rows, cols, 3), plain.run(rows, cols, 3)
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer_a, layer_b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_convolution_equals_the_separate_ops(add, dtype):
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1).to(dtype)
    x = torch.randn(4, 8, 15, 15, dtype=dtype).contiguous(memory_format=torch.channels_last)
    other = torch.randn(4, 16, 8, 8, dtype=dtype) if add else None
    with torch.inference_mode():
        expected = F.relu(conv(x) + other if add else conv(x))
        output = FusedConv(conv, add)(x, other)
        cropped = FusedConv(conv, add).run(F.pad(x, (1, 1, 1, 1)), other, (0, 0))  # the regional engine's call
    assert float(expected.min()) == 0.0 and float(expected.max()) > 0.1
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cropped, expected, atol=1e-6, rtol=1e-6)
