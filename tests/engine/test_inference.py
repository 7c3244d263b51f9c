"""The inference copy (batch norms folded into convolutions) against the model it copies."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from convlens.engine.inference import inference_model
from convlens.hooks import preserved_state


def test_folded_resnet18_reproduces_the_model_and_leaves_it_alone():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = torch.randn(3, 3, 64, 64)
    with preserved_state(model) as net, torch.inference_mode():
        runner = inference_model(net, inputs[:1])
        assert runner.reason == "" and runner.folded == 20 and runner.per_sample_bytes > 0
        assert not any(isinstance(m, nn.BatchNorm2d) for m in runner.forward.modules())
        output, expected = runner.forward(inputs), model(inputs)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nothing_to_fold_or_a_disagreeing_copy_gives_the_model_itself():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    inputs = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        plain(inputs)
        runner = inference_model(plain, inputs)
    assert runner.forward is plain and runner.folded == 0 and "no batch norm" in runner.reason
    normed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()).eval()
    with torch.inference_mode():
        runner = inference_model(normed, inputs, agrees=lambda output: False)
    assert runner.forward is normed and "does not reproduce" in runner.reason


def test_occlusion_engine_with_folded_batch_norms_is_exact():
    from convlens.engine import RegionalEngine, Regions, build_engine

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    inputs, fill = torch.randn(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
    regions = Regions.windows([0, 16, 48], [0, 32], 16, fill)
    rows, cols = regions.grid()
    with preserved_state(model) as net, torch.inference_mode():
        plain = build_engine(net, inputs, regions, "layer1.0.conv2", fold=False)
        folded = build_engine(net, inputs, regions, "layer1.0.conv2")  # folding is the default
        assert isinstance(folded, RegionalEngine) and folded.incremental_nodes < plain.incremental_nodes
        (out_a, layer_a), (out_b, layer_b) = plain.run(rows, cols), folded.run(rows, cols)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer_b, layer_a, rtol=1e-5, atol=1e-5)  # the layer's own conv is not folded
