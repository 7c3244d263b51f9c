"""The methods of issue 16 against their peers on resnet18 (1e-4): pytorch-grad-cam's HiResCAM, element-wise
Grad-CAM, EigenGrad-CAM, KPCA-CAM, Shapley-CAM, Finer-CAM and FullGrad; torchcam's SS-CAM, IS-CAM and
SmoothGrad-CAM++ (seeded alike)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cam_helpers import make_resnet, peer_raw
from torch import nn

from convlens.cam import (
    ISCAM,
    KPCACAM,
    SSCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    HiResCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    min_max_per_image,
)
from convlens.cam.methods import orient

pg = pytest.importorskip("pytorch_grad_cam")
torchcam = pytest.importorskip("torchcam.methods")


@pytest.fixture(scope="module")
def resnet():
    return make_resnet()


def layer_output(model, layer, inputs) -> torch.Tensor:
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach()))
    with torch.inference_mode():
        model(inputs)
    handle.remove()
    return store["a"]


@pytest.mark.parametrize("method, peer", [(HiResCAM, "HiResCAM"), (GradCAMElementWise, "GradCAMElementWise"),
                                          (ShapleyCAM, "ShapleyCAM")], ids=["hirescam", "elementwise", "shapley"])
def test_gradient_methods_match_pytorch_grad_cam(resnet, method, peer):
    model, layer, inputs, targets = resnet
    result = method(model, layer)(inputs, targets)
    expected = peer_raw(getattr(pg, peer), model, layer, inputs, targets, result.cam_raw.shape[-2:])
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)
    assert result.targets == tuple(targets)


def test_hirescam_is_the_elementwise_product_by_hand(resnet):
    model, layer, inputs, targets = resnet
    features = layer_output(model, layer, inputs).clone().requires_grad_()
    rest = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), model.fc)
    logits = rest(features)
    (gradients,) = torch.autograd.grad(logits[0, targets[0]] + logits[1, targets[1]], features)
    by_hand = torch.relu((gradients * features).sum(1)).detach()
    torch.testing.assert_close(HiResCAM(model, layer)(inputs, targets).cam_raw, by_hand, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(GradCAM(model, layer)(inputs, targets).cam_raw, by_hand, atol=1e-3)


class SmoothHead(nn.Module):
    """A conv layer, then SiLU and a conv before the pooled linear head: the score's Hessian at ``features`` is
    not zero, so Shapley-CAM's second-order term matters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(15)
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.mix(nn.functional.silu(self.features(x)))
        return self.head(nn.functional.silu(x).mean((2, 3)))


def test_shapleycam_second_order_term_on_a_smooth_head():
    model = SmoothHead().eval()
    inputs = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(16))
    result = ShapleyCAM(model, "features")(inputs, [0, 2])
    expected = peer_raw(pg.ShapleyCAM, model, "features", inputs, [0, 2], (10, 10))
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)
    gradcam = min_max_per_image(GradCAM(model, "features")(inputs, [0, 2]).cam_raw).numpy()
    assert np.abs(gradcam - expected).max() > 1e-3  # the Hessian term changed the map


@pytest.mark.parametrize("method", [EigenGradCAM, KPCACAM], ids=["eigengradcam", "kpcacam"])
def test_projection_methods_match_pytorch_grad_cam_up_to_the_orientation(resnet, method):
    """The projection is the peer's; its arbitrary sign is chosen as Eigen-CAM's (towards the positive part)."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection, get_2d_projection_kernel

    model, layer, inputs, targets = resnet
    activations = layer_output(model, layer, inputs)
    if method is EigenGradCAM:
        features = activations.clone().requires_grad_()
        logits = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), model.fc)(features)
        (gradients,) = torch.autograd.grad(logits[0, targets[0]] + logits[1, targets[1]], features)
        values = (gradients * features).detach()
        projection = get_2d_projection(values.numpy())
    else:
        values = activations
        projection = get_2d_projection_kernel(values.numpy())
    oriented = orient(torch.from_numpy(projection).double().flatten(1), values).view(projection.shape)
    expected = min_max_per_image(torch.relu(oriented).float()).numpy()
    result = method(model, layer)(inputs, targets)
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)


def test_finercam_matches_pytorch_grad_cam(resnet):
    model, layer, inputs, _ = resnet
    result = FinerCAM(model, layer)(inputs)  # the predicted class against its three closest classes
    peer = pg.FinerCAM(model, [model.get_submodule(layer)])
    peer.base_cam.get_target_width_height = lambda _inputs: tuple(result.cam_raw.shape[-2:])[::-1]
    with peer:
        expected = peer(inputs)
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected, atol=1e-4)
    assert result.targets == result.predicted
    gradcam = min_max_per_image(GradCAM(model, layer)(inputs).cam_raw).numpy()
    assert np.abs(gradcam - expected).max() > 1e-2  # the contrast changes the map


def test_fullgrad_matches_pytorch_grad_cam(resnet):
    model, _, inputs, targets = resnet
    inputs = inputs[:, :, :64, :64].contiguous()
    result = FullGrad(model)(inputs, targets)
    assert result.layers == ("input",) and result.cam_raw.shape == (2, 64, 64)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with pg.FullGrad(model, []) as peer:
        expected = peer(inputs, [ClassifierOutputTarget(t) for t in targets])
    np.testing.assert_allclose(result.maps.numpy(), expected, atol=1e-4)


def torchcam_map(peer_class, model, layer, inputs, targets, seed, **options):
    torch.manual_seed(seed)
    with peer_class(model, layer, input_shape=tuple(inputs.shape[1:]), **options) as peer:
        if peer_class is torchcam.SmoothGradCAMpp:
            model(inputs)
        else:
            with torch.inference_mode():
                model(inputs)
        return peer(targets)[0].detach()


@pytest.mark.parametrize("method, peer, options", [
    (SSCAM, "SSCAM", {"num_samples": 2}), (ISCAM, "ISCAM", {"num_samples": 3}),
    (SmoothGradCAMPlusPlus, "SmoothGradCAMpp", {})], ids=["sscam", "iscam", "smoothgradcam++"])
def test_torchcam_methods_match_with_the_same_seed(resnet, method, peer, options):
    model, _, inputs, targets = resnet
    layer = "layer1" if method is not SmoothGradCAMPlusPlus else "layer3"  # layer1: 64 channels, 8 x 8
    count = 1 if method is not SmoothGradCAMPlusPlus else 2  # Score-CAM variants draw noise image by image
    inputs, targets = inputs[:count, :, :32, :32].contiguous(), targets[:count]
    result = method(model, layer, seed=7, batch_size=64, **options)(inputs, targets)
    expected = torchcam_map(getattr(torchcam, peer), model, layer, inputs, targets, 7, **options)
    np.testing.assert_allclose(min_max_per_image(result.cam_raw).numpy(), expected.numpy(), atol=1e-4)
    again = method(model, layer, seed=7, batch_size=5, **options)(inputs, targets)
    torch.testing.assert_close(again.cam_raw, result.cam_raw)  # seeded: batching changes nothing
    if method is not ISCAM:  # the noise matters: another seed, another map
        other = method(model, layer, seed=8, batch_size=64, **options)(inputs, targets)
        assert (min_max_per_image(other.cam_raw) - min_max_per_image(result.cam_raw)).abs().max() > 1e-3
