"""Shared pieces of the CAM tests: small random models, pytorch-grad-cam's map at the layer's resolution, the
model-state snapshot, and the checkpoint / folder / CLI helpers. Test modules import the fixtures they use."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn


def make_resnet():
    """Random-init resnet18 (seed 0), 112 px: layer3 is 7x7 x 256, layer2 14x14 x 128 (post-ReLU blocks)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    inputs = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    return model, "layer3", inputs, [3, 7]


def make_vgg():
    """Random-init vgg16 (seed 0), 64 px: features.15 is the ReLU(inplace) after conv3_3 (16x16 x 256),
    features.8 the one after conv2_2 (32x32 x 128)."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(num_classes=10).eval()
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    return model, "features.15", inputs, [1, 8]


def peer_raw(peer_class, model, layer, inputs, targets, layer_size):
    """pytorch-grad-cam's map, scaled to 0..1 at the layer's resolution (its resize made the identity)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = peer_class(model, [model.get_submodule(layer)])
    peer.get_target_width_height = lambda _inputs: (layer_size[1], layer_size[0])
    with peer:
        return peer(inputs, [ClassifierOutputTarget(t) for t in targets])



class Branchy(nn.Module):
    """In-place ops right after the hooked layer (functional ``relu_``, ``ReLU(inplace=True)``), batch norm,
    and global average pooling + linear (so CAM applies)."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace))
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.conv(self.stem(x))
        x = x.relu_() if self.inplace else x.relu()
        x = self.act(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    }


def assert_same(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), key
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for old, new in zip(before["grad_values"], after["grad_values"], strict=True):
        assert (old is None and new is None) or torch.equal(old, new)
    assert before["hooks"] == after["hooks"]


def make_branchy():
    torch.manual_seed(5)
    model = Branchy()
    model.train()  # the methods must run in eval mode and restore this
    model.stem[0].weight.requires_grad_(False)
    model.head.weight.grad = torch.full_like(model.head.weight, 0.5)
    model.stem.register_forward_hook(lambda m, i, o: None)
    return model




def write_checkpoint(folder: Path, classes: list[str]) -> Path:
    """A convlens checkpoint of a resnet18 with a 3-class head at 64 px (random weights, seed 0)."""
    from convlens.models import Preprocessing, save_checkpoint
    from convlens.models.zoo import replace_head

    torch.manual_seed(0)
    module = replace_head(torchvision.models.resnet18(), len(classes))
    preprocessing = Preprocessing(crop=(64, 64), resize=None, squash=True)
    save_checkpoint(folder / "best", module, {"architecture": "torchvision:resnet18", "class_names": classes,
                                              "preprocessing": preprocessing.to_dict()})
    return folder


def labelled_folder(root: Path, classes: list[str], per_class: int) -> Path:
    from testkit import make_image

    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            make_image(root / name / f"{k}.png", size=(40, 36), seed=10 * index + k)
    return root


def run_cli(*args: str) -> None:
    from typer.testing import CliRunner

    from convlens.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
