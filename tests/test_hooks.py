"""Hooks: captured values are right (also after in-place ReLU) and the model is restored, even on errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from convlens.errors import ConvlensError
from convlens.hooks import capture, preserved_state, resolve_layer


def snapshot(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [sum(len(d) for k, d in vars(m).items() if "hooks" in k and isinstance(d, dict))
                  for m in model.modules()],
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "hooks"):
        assert before[key] == after[key], key
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for name, value in before["weights"].items():
        assert torch.equal(value, after["weights"][name]), name


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.train()  # not eval: the hooks must restore whatever mode the user had
    model.layer1.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.register_forward_hook(lambda *args: None)  # a user's own hook must survive
    return model


def test_in_place_relu_does_not_corrupt_the_capture(resnet):
    x = torch.randn(2, 3, 64, 64)
    with capture(resnet, ["layer1.0.bn1", "layer1.0.conv2"]) as seen, torch.inference_mode():
        out = resnet(x)
    block = resnet.eval().layer1[0]
    with torch.inference_mode():
        stem = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        expected_bn1 = block.bn1(block.conv1(stem))
        expected_conv2 = block.conv2(F.relu(expected_bn1))
        reference = resnet(x)
    assert (seen["layer1.0.bn1"] < 0).any()  # pre-ReLU values survive the in-place ReLU after bn1
    assert torch.allclose(seen["layer1.0.bn1"], expected_bn1, atol=1e-6)
    assert torch.allclose(seen["layer1.0.conv2"], expected_conv2, atol=1e-5)
    assert torch.equal(out, reference)  # handing on a copy changes nothing downstream


def test_gradients_match_autograd_on_the_layer(resnet):
    x = torch.randn(1, 3, 64, 64)
    before = snapshot(resnet)
    with capture(resnet, "layer4", gradients=True, detach=False) as seen:
        out = resnet(x)
        grad_autograd, = torch.autograd.grad(out[0, 3], seen["layer4"], retain_graph=True)
        out[0, 3].backward(inputs=[seen["layer4"]])
    assert torch.allclose(seen.gradients["layer4"], grad_autograd)
    # d logit / d layer4 = fc weight row / (spatial size), spread uniformly over positions
    h, w = seen["layer4"].shape[-2:]
    expected = (resnet.fc.weight[3] / (h * w)).view(1, -1, 1, 1).expand_as(grad_autograd)
    assert torch.allclose(grad_autograd, expected, atol=1e-7)
    assert_same(before, snapshot(resnet))


def test_state_restored_when_the_body_raises(resnet):
    before = snapshot(resnet)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(resnet, ["layer2", "fc"], gradients=True, detach=False):
            resnet(torch.randn(1, 3, 32, 32)).sum().backward(inputs=[resnet.fc.weight])
            raise RuntimeError("boom")
    assert_same(before, snapshot(resnet))
    assert resnet.training


def test_preserved_state_removes_hooks_registered_inside(resnet):
    before = snapshot(resnet)
    with preserved_state(resnet) as module:
        assert not module.training
        module.layer3.register_forward_hook(lambda *args: None)
        module.layer3.register_full_backward_hook(lambda *args: None)
        module.requires_grad_(True)
    assert_same(before, snapshot(resnet))


def test_functional_relu_model():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = self.conv(x)
            x.relu_()  # in-place functional activation right after the hooked layer
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(1, 3, 8, 8)
    with capture(model, "conv") as seen, torch.inference_mode():
        model(x)
    assert torch.allclose(seen["conv"], model.conv(x).detach())
    assert (seen["conv"] < 0).any()


def test_unknown_layer_lists_candidates(resnet):
    with pytest.raises(ConvlensError, match=r"unknown layer 'layer4\.1\.conv9'; nearest: .*layer4\.1\.conv1") as info:
        resolve_layer(resnet, "layer4.1.conv9")
    assert "convlens layers" in str(info.value)
    before = snapshot(resnet)
    with pytest.raises(ConvlensError):
        with capture(resnet, ["layer1", "nope"]):
            pass
    assert_same(before, snapshot(resnet))


def test_a_module_called_twice_keeps_the_last_call(resnet):
    x = torch.randn(1, 3, 32, 32)
    with capture(resnet, "layer1.0.relu") as seen, torch.inference_mode():
        resnet(x)
    resnet.eval()
    block = resnet.layer1[0]
    with torch.inference_mode():
        stem = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        expected = F.relu(block.bn2(block.conv2(F.relu(block.bn1(block.conv1(stem))))) + stem)
    assert torch.allclose(seen["layer1.0.relu"], expected, atol=1e-6)
