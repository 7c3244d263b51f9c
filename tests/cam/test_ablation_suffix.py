"""Ablation-CAM on the suffix (only the graph after the layer runs per ablated copy) against Ablation-CAM with
every copy through the whole model (the layer's output replaced by a hook), which pytorch-grad-cam's
comparison in the CAM tests checks in turn."""

from __future__ import annotations

import pytest
import torch
import torchvision

from convlens.cam import AblationCAM
from convlens.models.efficientnet_lite import build_efficientnet_lite0


class WholeModelAblationCAM(AblationCAM):
    use_suffix = False


def compare(model, layer, size, targets):
    inputs = torch.randn(len(targets), 3, size, size, generator=torch.Generator().manual_seed(3))
    suffix = AblationCAM(model, layer, batch_size=40)
    result = suffix(inputs, targets)
    assert suffix.engine["engine"] == "suffix" and suffix.engine["reason"] == ""
    whole = WholeModelAblationCAM(model, layer, batch_size=40)
    expected = whole(inputs, targets)
    assert whole.engine == {"engine": "whole-model", "suffix_nodes": 0, "reason": "suffix=False"}
    scale = expected.cam_raw.abs().max()
    assert scale > 0 and expected.cam_raw.std() > 1e-3 * scale  # a map with structure: the check can fail
    torch.testing.assert_close(result.cam_raw / scale, expected.cam_raw / scale, rtol=0, atol=1e-5)
    torch.testing.assert_close(result.maps, expected.maps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layer", ["layer4", "layer3.1.relu"])
def test_resnet18(layer):
    torch.manual_seed(0)
    compare(torchvision.models.resnet18(num_classes=10).eval(), layer, 64, [3, 7])


def test_default_model_last_block():
    torch.manual_seed(0)
    compare(build_efficientnet_lite0(pretrained=False).eval(), "blocks.6", 96, [0, 0])


def test_untraceable_model_falls_back_and_says_why():
    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3)
            self.head = torch.nn.Linear(6, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.head(y.mean((2, 3)) if float(y.sum()) > 0 else -y.mean((2, 3)))

    torch.manual_seed(0)
    model = DataDependent().eval()
    cam = AblationCAM(model, "conv")
    result = cam(torch.randn(1, 3, 16, 16), [1])
    assert cam.engine["engine"] == "whole-model" and "torch.fx cannot trace" in cam.engine["reason"]
    assert any("torch.fx cannot trace" in note for note in result.summary()["notes"])
