"""Helpers the tests import by name (``from testkit import make_image``). Kept out of ``conftest.py``: with several
conftest files in the tree, ``from testkit import ...`` would reach whichever was imported last."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# ``../shared/data`` beside the repository (CONVLENS_SHARED_DATA overrides it, e.g. from a git worktree).
SHARED_DATA = Path(os.environ.get("CONVLENS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def make_image(path: Path, size=(48, 40), seed: int = 0, mode: str = "RGB") -> Path:
    """A random-noise image file of ``size`` (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def run_cli(args, capsys):
    """``convlens ARGS`` in this process: (exit code, stdout, stderr)."""
    from convlens.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def small_resnet(block=None, seed: int = 0, num_classes: int = 6):
    """One block per stage (stride-2 convolution and 1x1 stride-2 downsample from stage 2 on): ResNet-50's
    bottlenecks (the addition after a 1x1 convolution; the default) or ResNet-18's basic blocks (after a 3x3
    one), with trained-like batch-norm statistics (with the default ones, folding would change nothing)."""
    import torch
    from torch import nn
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(seed)
    model = ResNet(block or Bottleneck, [1, 1, 1, 1], num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()
