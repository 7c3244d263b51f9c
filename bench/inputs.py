"""Models and inputs shared by the benchmark cases, built on ``DEVICE``: the real data beside the repository
(``../shared/data``, or wherever ``CONVLENS_SHARED_DATA`` points, e.g. from a git worktree) where it is there,
scikit-image's coffee photo where it is not; cases that need the leaf data are left out without it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision

from bench.harness import DEVICE

# as tests/testkit.py: ``../shared/data`` beside the repository unless CONVLENS_SHARED_DATA says where it is
SHARED_DATA = Path(os.environ.get("CONVLENS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
LEAF = SHARED_DATA / "leaf"
PHOTO = SHARED_DATA / "photos" / "golden_retriever.jpeg"


def skimage_coffee():
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.coffee())


def random_torchvision(name: str, size: int, batch: int, input_seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A random-init torchvision model (seed 0) in eval mode and a batch of noise inputs."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval().to(DEVICE)
    inputs = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(input_seed)).to(DEVICE)
    return model, inputs


def baseline_on_leaf(batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The random-init baseline CNN at 128 px (seed 0) and the first ``batch`` leaf validation images."""
    import convlens
    from convlens.data import list_images
    from convlens.models import BaselineCNN, baseline_preprocessing

    torch.manual_seed(0)
    model = BaselineCNN(3, 128).eval().to(DEVICE)
    paths = list_images(LEAF / "validation")[:batch] if LEAF.is_dir() else []
    images = [convlens.load_image(path) for path in paths] or [skimage_coffee()] * batch
    return model, baseline_preprocessing(128).batch(images).to(DEVICE)
