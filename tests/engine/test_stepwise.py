"""The step engine against the plain computation: after each step, every sequence's current input through the
model in full."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.engine.ops import NotTraceable
from convlens.engine.stepwise import StepEngine
from convlens.hooks import preserved_state


def dilated_net() -> nn.Module:
    """Dilation, an even kernel with asymmetric padding, average pooling, a depthwise conv, a residual add."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=2, dilation=2)
            self.b = nn.Conv2d(8, 8, 4, stride=2, padding=1)
            self.pool = nn.AvgPool2d(2)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.a(x))
            x = self.pool(self.b(x))
            x = x + nn.functional.relu6(self.depthwise(x))
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    return Net().eval()


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=5),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=5),
    "dilated": dilated_net,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_steps_equal_full_passes(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    size = 40
    inputs = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    current = inputs.clone()
    generator = torch.Generator().manual_seed(2)
    with preserved_state(model) as net, torch.inference_mode():
        engine = StepEngine(net, inputs[:1])
        torch.testing.assert_close(engine.reset(inputs), net(inputs), rtol=1e-4, atol=1e-5)
        for count in (1, 5, 30, 0, 400):  # a few pixels, a cluster, most of the image, none
            n = torch.randint(0, 3, (count,), generator=generator)
            y, x = torch.randint(0, size, (count,), generator=generator), torch.randint(0, size, (count,),
                                                                                        generator=generator)
            if count == 30:  # a cluster next to the corner
                y, x = y % 6, x % 5
            pixels = torch.randn(count, 3, generator=generator)
            current[n, :, y, x] = pixels
            output = engine.advance(n, y, x, pixels)
            expected = net(current)
            scale = expected.abs().max()
            torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5 * scale)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_a_model_that_does_not_trace_is_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            x = self.conv(x)
            return x.mean((2, 3)) if x.sum() > 0 else -x.mean((2, 3))

    with torch.inference_mode(), pytest.raises(NotTraceable):
        StepEngine(Branchy().eval(), torch.randn(1, 3, 16, 16))


def test_a_model_that_views_a_convolution_runs_in_the_default_layout():
    class Viewing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            x = self.conv(x)
            return self.head(x.view(x.shape[0], -1))

    torch.manual_seed(0)
    net, inputs = Viewing().eval(), torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        engine = StepEngine(net, inputs[:1])
        assert engine.format == torch.contiguous_format
        engine.reset(inputs.clone())
        changed = inputs.clone()
        changed[1, :, 3, 4] = 0
        output = engine.advance(torch.tensor([1]), torch.tensor([3]), torch.tensor([4]), torch.zeros(1, 3))
        torch.testing.assert_close(output, net(changed))
