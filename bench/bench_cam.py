"""CAM timings: Grad-CAM against the floor (a bare forward + backward of the same batch), Score-CAM against
pytorch-grad-cam's ScoreCAM at equal output.

- Grad-CAM: target <= 1.15x the floor. convlens freezes the parameters for the call and starts the graph at
  the hooked layer, so its backward pass is the part after that layer only (the floor computes every
  parameter's gradient).
- Score-CAM on the default model (real ImageNet weights) at the layer global average pooling reads (bn2, after
  ReLU6), on a real photo: target <= 0.5x pytorch-grad-cam. Most of the gain is that channels whose masks are
  equal once scaled (all the all-zero channels a trained network has after its activation, ~half here) share
  one forward pass; the rest is larger batches across images.
- Score-CAM on a random-init resnet18 (dense layer, nothing to share): no target, shown for honesty.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torchvision

from bench.harness import BenchCase
from convlens.cam import GradCAM, ScoreCAM

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "golden_retriever.jpeg"


def _gradcam_case(quick: bool) -> BenchCase:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    batch = 4 if quick else 16
    inputs = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    targets = [int(t) for t in torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2))]
    extractor = GradCAM(model, "layer4")
    index = torch.tensor(targets)[:, None]

    def floor() -> None:
        model.zero_grad(set_to_none=True)
        model(inputs).gather(1, index).sum().backward()
        model.zero_grad(set_to_none=True)

    return BenchCase(f"gradcam resnet50 224 b{batch}", lambda: extractor(inputs, targets), floor,
                     "floor: forward+backward", max_ratio=1.15,
                     note="random-init resnet50, layer4; floor = model(x) + target-logit backward()")


def _default_model_photo(size: int):
    import convlens

    model = convlens.load_model(device="cpu")
    preprocessing = dataclasses.replace(model.preprocessing, crop=(size, size), resize=round(size * 256 / 224))
    image = convlens.load_image(PHOTO) if PHOTO.is_file() else _skimage_coffee()
    return model, preprocessing.batch([image])


def _skimage_coffee():
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.coffee())


def _peer_scorecam(module, layer, inputs, targets):
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = PeerScoreCAM(module, [module.get_submodule(layer)])
    wanted = [ClassifierOutputTarget(t) for t in targets]

    def run():
        return peer(inputs, wanted)

    return run


def _same_maps(ours, theirs) -> None:
    difference = float(np.abs(ours.maps.numpy() - theirs).max())
    if difference > 1e-3:
        raise AssertionError(f"Score-CAM maps differ from pytorch-grad-cam's by {difference:.2e}")


def _scorecam_default_case(quick: bool) -> BenchCase:
    size = 112 if quick else 224
    model, inputs = _default_model_photo(size)
    layer = "bn2"
    with torch.inference_mode():
        targets = model.module(inputs).argmax(1).tolist()
    extractor = ScoreCAM(model, layer, batch_size=32)
    return BenchCase(f"scorecam efficientnet_lite0 {size} bn2 1 photo", lambda: extractor(inputs, targets),
                     _peer_scorecam(model.module, layer, inputs, targets), "pytorch-grad-cam ScoreCAM",
                     check=_same_maps, max_ratio=0.5,
                     note="real ImageNet weights; 1280 channels, equal masks share one pass")


def _scorecam_dense_case(quick: bool) -> BenchCase:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    size, layer, images = (64, "layer3", 1) if quick else (112, "layer4", 2)
    inputs = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(3))
    targets = list(range(images))
    extractor = ScoreCAM(model, layer, batch_size=32)
    return BenchCase(f"scorecam resnet18 {size} {layer} {images} img", lambda: extractor(inputs, targets),
                     _peer_scorecam(model, layer, inputs, targets), "pytorch-grad-cam ScoreCAM",
                     check=_same_maps,
                     note="random init: dense layer, almost no masks to share (no target)")


def cases(quick: bool) -> list[BenchCase]:
    return [_gradcam_case(quick), _scorecam_default_case(quick), _scorecam_dense_case(quick)]
